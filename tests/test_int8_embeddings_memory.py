"""`from_pretrained(..., int8_embeddings=True)` saves memory: the float embedding and LM head are converted tensor by
tensor at load, read from the checkpoint file in row blocks, and no float copy of either is kept or ever held whole
(issue 21.4). Memory accounting only, no timing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from spectra_hf import TriLMForCausalLM
from spectra_hf.modeling.int8_embeddings import Int8Embedding, Int8Linear
from spectra_hf.suite import config_for


def save_packed(directory, *, vocab_size: int, hidden: int | None = None, table_dtype: torch.dtype) -> None:
    """A random 2-layer TriLM saved packed, its float tensors (tables, norms) stored as `table_dtype`."""
    torch.manual_seed(0)
    overrides = {"vocab_size": vocab_size}
    if hidden is not None:
        overrides |= {"hidden_size": hidden, "intermediate_size": 2 * hidden}
    TriLMForCausalLM(config_for("TriLM_99M", tiny=True, **overrides)).save_pretrained(directory, weight_format="packed")
    weights = directory / "model.safetensors"
    state = load_file(weights)
    cast = {name: t.to(table_dtype) if t.is_floating_point() else t for name, t in state.items()}
    save_file(cast, weights, {"format": "pt"})


def resident_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, each storage counted once (a zero-stride placeholder counts 0)."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen or 0 in tensor.stride():
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def reachable_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Parameters, buffers and every tensor held as a plain attribute of any submodule."""
    tensors = [*model.parameters(), *model.buffers()]
    for module in model.modules():
        tensors += [value for value in vars(module).values() if isinstance(value, torch.Tensor)]
    return tensors


@pytest.mark.parametrize("table_dtype", [torch.float32, torch.bfloat16])
def test_int8_tables_hold_less_than_the_float_ones_and_no_float_copy(tmp_path, table_dtype) -> None:
    save_packed(tmp_path, vocab_size=2048, table_dtype=table_dtype)
    default = TriLMForCausalLM.from_pretrained(tmp_path, ternary_inference="2bit", dtype=torch.bfloat16)
    int8 = TriLMForCausalLM.from_pretrained(
        tmp_path, ternary_inference="2bit", dtype=torch.bfloat16, int8_embeddings=True
    )
    vocab, hidden = default.config.vocab_size, default.config.hidden_size
    assert isinstance(int8.get_input_embeddings(), Int8Embedding) and isinstance(int8.lm_head, Int8Linear)
    # the two bf16 tables (4 bytes a row element) become int8 codes (2) plus one float32 scale per row each
    assert resident_bytes(default) - resident_bytes(int8) == 2 * vocab * hidden - 2 * 4 * vocab
    shapes = {(vocab, hidden), (hidden, vocab)}
    float_tables = [t for t in reachable_tensors(int8) if t.is_floating_point() and tuple(t.shape) in shapes]
    assert float_tables == []
    ids = torch.randint(0, vocab, (1, 9))
    with torch.no_grad():
        reference, logits = default(ids).logits.float(), int8(ids).logits
    assert logits.dtype == torch.bfloat16  # the rows come out in the model's dtype, not the stored tables'
    torch.testing.assert_close(logits.float(), reference, rtol=0, atol=5e-2 * reference.abs().max().item())


LOAD_SCRIPT = """
import json, sys, threading, torch
from spectra_hf import TriLMForCausalLM

def anonymous() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("RssAnon:")).split()[1]) * 1024

# the load's peak of anonymous memory (a float copy of a table would be anonymous; file pages read through the
# memory map are not, and how many of those stay resident varies from run to run), sampled every 0.5 ms
peak, done = [anonymous()], threading.Event()

def sample() -> None:
    while not done.is_set():
        peak[0] = max(peak[0], anonymous())
        done.wait(0.0005)

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
model = TriLMForCausalLM.from_pretrained(
    sys.argv[1], ternary_inference="2bit", dtype=torch.bfloat16, int8_embeddings=sys.argv[2] == "int8"
)
done.set()
sampler.join()
with open("/proc/self/status") as status:  # VmHWM: the load's peak (ru_maxrss carries the parent's across exec)
    fields = dict(line.split(":", 1) for line in status)
memory = {key: int(fields[key].split()[0]) * 1024 for key in ("VmHWM", "VmRSS")}
print(json.dumps({**memory, "anonymous_peak": max(peak[0], anonymous())}))
"""


def load_memory(directory, option: str) -> dict[str, int]:
    """{"VmHWM": peak, "VmRSS": resident, "anonymous_peak": sampled peak of anonymous memory} bytes of a fresh
    process loading `directory` with `option`."""
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(directory), option], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_int8_load_peak_is_below_the_default_and_never_holds_a_float_copy(tmp_path) -> None:
    """Two 32768 x 256 tables (32 MiB each in fp32): a trained checkpoint's fp32 tables loaded as bf16 cost the
    default path a bf16 copy (plus the file pages it read); the int8 path reads rows in blocks and holds only its
    codes. From a bf16 checkpoint the default's tables stay unread memory-mapped pages: the int8 load then costs its
    codes (one bf16 table's bytes) and its conversion blocks (about 6 MiB measured) in anonymous memory over the
    default's, less than a float copy of one more table would."""
    vocab, hidden = 32768, 256
    for table_dtype in (torch.float32, torch.bfloat16):
        directory = tmp_path / str(table_dtype).split(".")[-1]
        save_packed(directory, vocab_size=vocab, hidden=hidden, table_dtype=table_dtype)
        default, int8 = load_memory(directory, "default"), load_memory(directory, "int8")
        if table_dtype == torch.float32:
            assert int8["VmHWM"] < default["VmHWM"] and int8["VmRSS"] < default["VmRSS"], (default, int8)
        else:
            codes = 2 * vocab * hidden  # int8 embedding and head
            bf16_table = 2 * vocab * hidden
            assert int8["anonymous_peak"] - default["anonymous_peak"] < codes + bf16_table, (default, int8)
