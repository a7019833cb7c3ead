"""GGUF export read back by transformers' own GGUF loader (which dequantizes TQ1_0 / TQ2_0) and gguf's reader."""

from __future__ import annotations

import gguf
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from spectra_hf.checkpoints.convert import convert_checkpoint
from spectra_hf.errors import SpectraError
from trilm_release import release_model

# TQ blocks are 256 weights along a row: rows (and row-parallel shards) of 256 keep every shard's scale exact.
WIDE = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 4}


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory, tokenizer):
    directory = tmp_path_factory.mktemp("release")
    release_model(1, head_dim=64, **WIDE).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def gguf_logits(path, ids) -> torch.Tensor:
    model = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("qtype", ["tq1_0", "tq2_0", "f16"])
def test_gguf_reads_back_to_the_release_logits(release_dir, qtype, tmp_path) -> None:
    out = convert_checkpoint(release_dir, tmp_path / f"model-{qtype}.gguf", to=f"gguf-{qtype}", progress=False)
    reader = gguf.GGUFReader(out)
    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_down.weight"] == qtype.upper()
    assert types["token_embd.weight"] == types["output.weight"] == "F16" and types["output_norm.weight"] == "F32"
    ids = torch.randint(0, 512, (2, 11))
    with torch.no_grad():
        reference = LlamaForCausalLM.from_pretrained(release_dir, dtype=torch.float32)(ids).logits
    torch.testing.assert_close(gguf_logits(out, ids), reference, rtol=0, atol=1e-4 * reference.abs().max().item())


def test_gguf_carries_the_tokenizer(release_dir, tokenizer, tmp_path) -> None:
    out = convert_checkpoint(release_dir, tmp_path / "model.gguf", to="gguf-tq2_0", progress=False)
    restored = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    text = "Ternary weights take 1.58 bits."
    assert restored(text).input_ids == tokenizer(text).input_ids


def test_shards_narrower_than_a_block_fall_back_to_f16(tmp_path, caplog) -> None:
    release = release_model(2, head_dim=64, **WIDE)  # o/down shards of 128 input columns: half a TQ block
    release.save_pretrained(tmp_path / "release")
    with caplog.at_level("WARNING"):
        out = convert_checkpoint(tmp_path / "release", tmp_path / "m.gguf", to="gguf-tq1_0", progress=False)
    assert "model.layers.0.self_attn.o_proj.weight" in caplog.text
    types = {tensor.name: tensor.tensor_type.name for tensor in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_output.weight"] == "F16" and types["blk.0.attn_q.weight"] == "TQ1_0"
    ids = torch.randint(0, 512, (1, 7))
    with torch.no_grad():
        reference = LlamaForCausalLM.from_pretrained(tmp_path / "release", dtype=torch.float32)(ids).logits
    torch.testing.assert_close(gguf_logits(out, ids), reference, rtol=0, atol=1e-4 * reference.abs().max().item())


def test_floatlm_refuses_ternary_types(tmp_path) -> None:
    release = release_model(1)
    del release.config.pretraining_model_parallel  # a plain Llama (FloatLM release) checkpoint
    release.save_pretrained(tmp_path / "llama")
    with pytest.raises(SpectraError, match="only ternary weights can be TQ1_0"):
        convert_checkpoint(tmp_path / "llama", tmp_path / "m.gguf", to="gguf-tq1_0", progress=False)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*"))
