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
from spectra_hf.modeling.ternary import TernaryLinear
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
    assert default.get_memory_footprint() - int8.get_memory_footprint() == 2 * vocab * hidden - 2 * 4 * vocab
    shapes = {(vocab, hidden), (hidden, vocab)}
    float_tables = [t for t in reachable_tensors(int8) if t.is_floating_point() and tuple(t.shape) in shapes]
    assert float_tables == []
    ids = torch.randint(0, vocab, (1, 9))
    with torch.no_grad():
        reference, logits = default(ids).logits.float(), int8(ids).logits
    assert logits.dtype == torch.bfloat16  # the rows come out in the model's dtype, not the stored tables'
    torch.testing.assert_close(logits.float(), reference, rtol=0, atol=5e-2 * reference.abs().max().item())


def test_memory_footprint_of_a_packed_trilm_counts_the_bytes_it_holds(tmp_path) -> None:
    """`get_memory_footprint()` on a packed TriLM on the 2-bit path: the 2-bit codes (4 weights a byte, rows padded
    to 128-column blocks) and the float tensors, not the placeholder weights transformers' count takes for dense
    [out, in] matrices, and the fused q/k/v and gate/up codes once."""
    save_packed(tmp_path, vocab_size=2048, table_dtype=torch.bfloat16)
    model = TriLMForCausalLM.from_pretrained(tmp_path, ternary_inference="2bit", dtype=torch.bfloat16)
    ternary = [m for m in model.modules() if isinstance(m, TernaryLinear)]
    assert ternary and all(m.inference_path == "2bit" for m in ternary)
    codes = sum(m.out_features * -(-m.in_features // 128) * 128 // 4 for m in ternary)
    ternary_tensors = {id(t) for m in ternary for t in (*m.parameters(), *m.buffers())}
    # every other tensor, and a layer's scales (the fused groups' scales are views: each its own rows), as stored
    others = [t for t in (*model.parameters(), *model.buffers()) if id(t) not in ternary_tensors]
    scales = [t for m in ternary for name, t in m.named_buffers() if name not in ("weight_kernel",)]
    placeholders = [m.weight for m in ternary]  # zero-stride [out, in] views of one element each
    assert all(0 in p.stride() for p in placeholders)
    expected = (
        codes
        + sum(t.numel() * t.element_size() for t in others + scales)
        + sum(p.element_size() for p in placeholders)
    )
    assert model.get_memory_footprint() == expected
    dense_count = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    assert model.get_memory_footprint() < dense_count  # (transformers' count of the same model)
    assert model.get_memory_footprint(return_buffers=False) == expected - sum(
        t.numel() * t.element_size() for t in model.buffers() if id(t) not in {id(p) for p in model.parameters()}
    )


def test_int8_tables_leave_the_model_in_the_float_dtype_it_was_loaded_in(tmp_path) -> None:
    """The int8 tables are no float dtype and the float tables are read in their stored one (float32 here): neither
    may set the model's. Loaded with dtype=bfloat16, the model and its ternary layers stay bfloat16, also when they
    are later made dense (float32 dense weights would take twice the bytes asked for)."""
    save_packed(tmp_path, vocab_size=2048, table_dtype=torch.float32)
    model = TriLMForCausalLM.from_pretrained(
        tmp_path, ternary_inference="2bit", dtype=torch.bfloat16, int8_embeddings=True
    )
    ternary = [m for m in model.modules() if isinstance(m, TernaryLinear)]
    assert model.dtype == torch.bfloat16
    assert {m.weight.dtype for m in ternary} == {torch.bfloat16}
    model.prepare_ternary_inference("dense")
    assert {m.weight_kernel.dtype for m in ternary} == {torch.bfloat16}  # (the dense path's resident weights)
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.dtype == torch.bfloat16


def mapped_rss(path) -> int:
    """Resident bytes of this process's memory maps of the file `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header line
                inside = fields[-1] == str(path)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_packed_bytes_read_for_the_2bit_form_do_not_stay_resident(tmp_path) -> None:
    """A packed checkpoint loads as views of its memory-mapped file; the map stays open for the embedding and head,
    and the 1.6-bit bytes the 2-bit form was made from must not stay in the process's resident memory with it."""
    torch.manual_seed(0)
    config = config_for("TriLM_99M", tiny=True, vocab_size=256, hidden_size=512, intermediate_size=1024)
    TriLMForCausalLM(config).save_pretrained(tmp_path, weight_format="packed")
    weights = (tmp_path / "model.safetensors").resolve()
    packed_bytes = sum(t.numel() for name, t in load_file(weights).items() if name.endswith("weight_packed"))
    assert packed_bytes > 1 << 20  # (many pages: page-aligned interiors are what can be released)
    model = TriLMForCausalLM.from_pretrained(tmp_path, ternary_inference="2bit", dtype=torch.float32)
    resident = mapped_rss(weights)
    float_bytes = sum(t.numel() * 4 for name, t in model.named_parameters() if "layernorm" in name or "norm" in name)
    tables = 2 * config.vocab_size * config.hidden_size * 4
    assert resident < tables + float_bytes + packed_bytes // 8, (resident, packed_bytes)
    reference = TriLMForCausalLM.from_pretrained(tmp_path, ternary_inference="dense", dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():  # (released pages keep their contents: the model computes as before)
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-4)


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
