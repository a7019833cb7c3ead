"""GGUF export read back by transformers' own GGUF loader (which dequantizes TQ1_0 / TQ2_0) and gguf's reader, and its
tokenizer keys checked against llama.cpp's splitting rules."""

from __future__ import annotations

import gguf
import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast
from trilm_release import release_model

from spectra_hf.checkpoints.convert import convert_checkpoint
from spectra_hf.cli import main as cli_main
from spectra_hf.errors import CheckpointError, ConfigError, SpectraError

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


def test_narrow_shards_are_refused_in_one_line_unless_f16_fallback_is_accepted(tmp_path, tokenizer, capsys) -> None:
    release = release_model(2, head_dim=64, **WIDE)  # o/down shards of 128 input columns: half a TQ block
    release.save_pretrained(tmp_path / "release")
    tokenizer.save_pretrained(tmp_path / "release")
    command = ["convert", str(tmp_path / "release"), str(tmp_path / "m.gguf"), "--to", "gguf-tq1_0"]
    capsys.readouterr()  # save_pretrained's progress bars
    assert cli_main(command) != 0
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(error_lines) == 1, error_lines
    # o_proj's shards are 256 / 2 = 128 columns wide, down_proj's 512 / 2 = 256: 2 layers x o of 14 matrices.
    assert "2 of 14 ternary matrices" in error_lines[0] and "--allow-f16-fallback" in error_lines[0]
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".m.gguf*"))

    assert cli_main([*command, "--allow-f16-fallback"]) == 0
    out = tmp_path / "m.gguf"
    types = {tensor.name: tensor.tensor_type.name for tensor in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_output.weight"] == "F16" and types["blk.0.attn_q.weight"] == "TQ1_0"
    ids = torch.randint(0, 512, (1, 7))
    with torch.no_grad():
        reference = LlamaForCausalLM.from_pretrained(tmp_path / "release", dtype=torch.float32)(ids).logits
    torch.testing.assert_close(gguf_logits(out, ids), reference, rtol=0, atol=1e-4 * reference.abs().max().item())


def test_a_model_too_narrow_for_any_tq_block_says_no_ternary_tensor_would_be_written(tmp_path, tokenizer) -> None:
    release_model(1).save_pretrained(tmp_path / "narrow")  # the tiny suite shape: rows of 64 and 192 weights
    tokenizer.save_pretrained(tmp_path / "narrow")
    with pytest.raises(ConfigError, match=r"14 of 14 ternary matrices .* no ternary tensor at all"):
        convert_checkpoint(tmp_path / "narrow", tmp_path / "m.gguf", to="gguf-tq2_0", progress=False)
    assert not list(tmp_path.glob("*.gguf"))


def test_a_model_without_tokenizer_json_is_refused_unless_asked(tmp_path) -> None:
    release_model(1, head_dim=64, **WIDE).save_pretrained(tmp_path / "bare")  # config + weights, no tokenizer
    with pytest.raises(CheckpointError, match=r"no tokenizer\.json.*--no-tokenizer"):
        convert_checkpoint(tmp_path / "bare", tmp_path / "m.gguf", to="gguf-tq2_0", progress=False)
    assert not list(tmp_path.glob("*.gguf"))
    out = convert_checkpoint(
        tmp_path / "bare", tmp_path / "m.gguf", to="gguf-tq2_0", progress=False, allow_no_tokenizer=True
    )
    assert "tokenizer.ggml.model" not in gguf.GGUFReader(out).fields


# The reference the export's tokenizer keys are checked against: the splitting patterns llama.cpp applies for each
# `tokenizer.ggml.pre` value (listed in its src/llama-vocab.cpp, llm_tokenizer_bpe), restated here as data. The
# "gpt-2" one is GPT-2's own published pattern; "default" is what llama.cpp falls back to for an unknown name.
LLAMA_CPP_REGEXES = {
    "gpt-2": [r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"],
    "default": [
        r"[\p{P}\$\+<=>\^~\|]+",
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
        r"\p{N}+",
        r"[0-9][0-9][0-9]",
    ],
}


def llama_cpp_tokenizer(path, *, pre: str | None = None) -> Tokenizer:
    """A byte-level BPE built from a GGUF file's own tokenizer keys (read with gguf-py), splitting text the way
    llama.cpp does for the file's `tokenizer.ggml.pre` (or `pre`): each regex in turn, then bytes to symbols."""
    fields = gguf.GGUFReader(path).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(merge.split(" ")) for merge in fields["tokenizer.ggml.merges"].contents()]
    pre = pre or fields["tokenizer.ggml.pre"].contents()
    bpe = Tokenizer(models.BPE(vocab={token: index for index, token in enumerate(tokens)}, merges=merges))
    splits = [pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in LLAMA_CPP_REGEXES[pre]]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.pre_tokenizer = pre_tokenizers.Sequence([*splits, byte_level])
    return bpe


def test_llama_cpp_tokenizes_the_exported_file_like_transformers(
    release_dir, tokenizer, corpus_texts, tmp_path
) -> None:
    out = convert_checkpoint(release_dir, tmp_path / "model.gguf", to="gguf-tq2_0", progress=False)
    fields = gguf.GGUFReader(out).fields
    assert fields["tokenizer.ggml.model"].contents() == "gpt2" and fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False  # transformers adds none either
    assert fields["tokenizer.ggml.padding_token_id"].contents() == tokenizer.pad_token_id
    documents = [text for text in corpus_texts[-40:] if text.strip()][:20]
    documents += [
        "Numbers 1234567 and 3.14159; punctuation!? (nested [brackets]) $5+6=11 <tags> x^2 ~ a|b",
        "  two  spaces\n\nlines ",
    ]
    llama_cpp = llama_cpp_tokenizer(out)
    expected = [tokenizer(text).input_ids for text in documents]
    assert [llama_cpp.encode(text).ids for text in documents] == expected
    assert sum(map(len, expected)) > 1000
    # The reference can tell: llama.cpp's "default" splitting (what the export used to write) differs on the same text.
    default = llama_cpp_tokenizer(out, pre="default")
    assert [default.encode(text).ids for text in documents] != expected


def test_a_tokenizer_llama_cpp_cannot_reproduce_is_refused(tmp_path, corpus_texts) -> None:
    directory = tmp_path / "model"
    release_model(1, head_dim=64, **WIDE).save_pretrained(directory)
    metaspace = Tokenizer(models.BPE(unk_token="<unk>"))
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"], show_progress=False)
    metaspace.train_from_iterator(corpus_texts[:50], trainer)
    PreTrainedTokenizerFast(tokenizer_object=metaspace).save_pretrained(directory)
    with pytest.raises(ConfigError, match=r"pre-tokenizer Metaspace.*convert_hf_to_gguf\.py"):
        convert_checkpoint(directory, tmp_path / "m.gguf", to="gguf-f16", progress=False)
    assert not list(tmp_path.glob("*.gguf"))


def test_floatlm_refuses_ternary_types(tmp_path) -> None:
    release = release_model(1)
    del release.config.pretraining_model_parallel  # a plain Llama (FloatLM release) checkpoint
    release.save_pretrained(tmp_path / "llama")
    with pytest.raises(SpectraError, match="only ternary weights can be TQ1_0"):
        convert_checkpoint(tmp_path / "llama", tmp_path / "m.gguf", to="gguf-tq1_0", progress=False)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*"))
