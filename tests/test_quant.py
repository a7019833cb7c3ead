"""QuantLM export (GPTQ through optimum) and the bitsandbytes baselines, on a tiny FloatLM on CPU.

The tiny FloatLM has hidden 64 and intermediate 192, narrower than the paper's group size 128, which gptqmodel's
CPU int4 kernel cannot run (export refuses it, tested below): 3 and 4 bits use group size 32 (several groups per row),
6 and 8 bits the paper's per-channel. References come from outside the code under test: transformers' stock
LlamaForCausalLM on the FloatLM weights, the registry's effective bits, and a float64 unpacking of the GPTQ v1 tensors
written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import spectra_hf
from spectra_hf.checkpoints.exports import read_export_info
from spectra_hf.cli import main
from spectra_hf.errors import SpectraError
from spectra_hf.quantization.calibration import calibration_samples, load_calibration_texts
from spectra_hf.quantization.gptq import (
    GPTQSettings,
    export_quantlms,
    load_quantlm,
    plan_settings,
    quantize_model,
    quantlm_size_bits,
)
from spectra_hf.suite import QUANT_BITS, QUANT_EFFECTIVE_BITS, config_for

SAMPLES, LENGTH = 4, 64  # calibration kept small: the tests check plumbing and ordering, not GPTQ's quality
GROUP_SIZE = {3: 32, 4: 32}


@pytest.fixture(scope="module", autouse=True)
def _eager_gptq_kernels():
    """gptqmodel's TorchLinear torch.compiles its dequantization on first use (about 10 s per layer shape here);
    the eager path computes the same thing, so the tests run eagerly."""
    import torch._dynamo

    with torch._dynamo.config.patch(disable=True):
        yield


@pytest.fixture(scope="module")
def floatlm_dir(tmp_path_factory, tokenizer) -> Path:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("floatlm")
    spectra_hf.FloatLMForCausalLM(config_for("FloatLM_99M", tiny=True, vocab_size=512)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def probe(corpus_files, tokenizer) -> torch.Tensor:
    """64 held-out tokens [1, 64]."""
    return tokenizer(corpus_files[1].read_text(encoding="utf-8"), return_tensors="pt")["input_ids"][:, :64]


@pytest.fixture(scope="module")
def float_logits(floatlm_dir, probe) -> torch.Tensor:
    from transformers import LlamaForCausalLM

    with torch.no_grad():
        return LlamaForCausalLM.from_pretrained(floatlm_dir).eval()(probe).logits


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory, floatlm_dir, corpus_files) -> Path:
    """The four paper widths exported as packed GPTQ."""
    suite = tmp_path_factory.mktemp("suite")
    export_quantlms(
        floatlm_dir,
        suite,
        calibration=corpus_files[0],
        group_size=GROUP_SIZE,
        samples=SAMPLES,
        length=LENGTH,
        size="tiny",
    )
    return suite


@pytest.fixture(scope="module")
def in_memory_logits(floatlm_dir, corpus_files, tokenizer, probe) -> dict[int, torch.Tensor]:
    """Logits of each width's in-memory quantized model (a second, identical GPTQ run), before any save."""
    from transformers import LlamaForCausalLM

    documents = load_calibration_texts(corpus_files[0]).documents
    samples = calibration_samples(tokenizer, documents, samples=SAMPLES, length=LENGTH, seed=0)
    logits = {}
    for bits in QUANT_BITS:
        settings = GPTQSettings.paper(bits, group_size=GROUP_SIZE.get(bits))
        model, _ = quantize_model(LlamaForCausalLM.from_pretrained(floatlm_dir).eval(), samples, settings)
        with torch.no_grad():
            logits[bits] = model(probe).logits
    return logits


@pytest.mark.parametrize("bits", QUANT_BITS)
def test_packed_export_reloads_to_the_in_memory_model(bits, suite_dir, in_memory_logits, probe):
    from transformers import AutoModelForCausalLM, GPTQConfig

    from spectra_hf.quantization.hf_quantizer import spectra_gptq_config

    directory = suite_dir / f"QuantLM_tiny_{bits}bit"
    quant_method = json.loads((directory / "config.json").read_text())["quantization_config"]["quant_method"]
    # GPTQConfig refuses 6 bits: that width carries the method `import spectra_hf` registers
    assert quant_method == ("spectra_gptq" if bits == 6 else "gptq")
    loading = spectra_gptq_config(bits, backend="torch") if bits == 6 else GPTQConfig(bits=bits, backend="torch")
    model = AutoModelForCausalLM.from_pretrained(directory, quantization_config=loading)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "TorchLinear"
    with torch.no_grad():
        reloaded = model.eval()(probe).logits
        torch.testing.assert_close(reloaded, in_memory_logits[bits], rtol=0, atol=1e-5)
        assert torch.equal(load_quantlm(directory, backend="torch")(probe).logits, reloaded)


def test_6bit_loads_with_a_plain_from_pretrained_from_a_dir_and_the_hub(suite_dir, probe, local_hub):
    """No quantization_config argument, no spectra-hf loader: the Auto class alone, as a user calls it."""
    from huggingface_hub import HfApi
    from transformers import AutoModelForCausalLM

    directory = suite_dir / "QuantLM_tiny_6bit"
    with torch.no_grad():
        expected = load_quantlm(directory)(probe).logits
        assert torch.equal(AutoModelForCausalLM.from_pretrained(directory)(probe).logits, expected)
        api = HfApi()
        repo = api.create_repo("quant-tests/QuantLM_tiny_6bit_gptq", exist_ok=True).repo_id
        api.upload_folder(repo_id=repo, folder_path=str(directory))
        assert torch.equal(AutoModelForCausalLM.from_pretrained(repo)(probe).logits, expected)
        # with spectra_hf imported too, trust_remote_code=True runs the shipped module (its registration is a no-op)
        remote = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)
        assert type(remote).__name__ == "QuantLMForCausalLM" and torch.equal(remote(probe).logits, expected)


@pytest.mark.parametrize("bits", range(2, 9))
def test_only_the_widths_gptqconfig_refuses_carry_the_remote_code(bits, tmp_path):
    """The config.json `save_quantized` writes, at every width: 5/6/7 bits get quantlm_gptq.py and an auto_map."""
    from spectra_hf.quantization.gptq import gptq_quant_method
    from spectra_hf.quantization.hf_quantizer import ship_remote_code

    written = {"model_type": "llama", "quantization_config": {"quant_method": gptq_quant_method(bits), "bits": bits}}
    (tmp_path / "config.json").write_text(json.dumps(written))
    ship_remote_code(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    if bits in (5, 6, 7):
        assert config == {**written, "auto_map": {"AutoModelForCausalLM": "quantlm_gptq.QuantLMForCausalLM"}}
        assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "quantlm_gptq.py"]
    else:
        assert config == written and [p.name for p in tmp_path.iterdir()] == ["config.json"]


@pytest.mark.slow  # a GPTQ run, a publish and a fresh interpreter importing transformers, optimum and gptqmodel
def test_6bit_loads_with_trust_remote_code_without_spectra_hf_from_a_dir_and_the_published_repo(
    tmp_path, floatlm_dir, corpus_files, probe, local_hub
):
    """What a user without spectra-hf gets: `publish` carries quantlm_gptq.py, and trust_remote_code=True loads the
    6-bit QuantLM (the shipped module registers spectra_gptq) to load_quantlm's logits, from a dir and the Hub;
    without trust_remote_code, transformers' Llama class loads without the quantized weights."""
    from spectra_hf.hub.pacing import HubLimits
    from spectra_hf.hub.plan import build_plan
    from spectra_hf.hub.publish import publish
    from spectra_hf.testing.remote_code import load_without_spectra_hf

    suite = tmp_path / "suite"
    (directory,) = export_quantlms(
        floatlm_dir, suite, calibration=corpus_files[0], bits=(6,), samples=SAMPLES, length=LENGTH, size="99M"
    )
    plan = build_plan(suite, org="remote-code", models=["QuantLM_99M_6bit"])
    (repo,) = plan.repos
    assert "quantlm_gptq.py" in {f.path_in_repo for f in repo.branches[0].files}
    publish(plan, endpoint=local_hub.url, limits=HubLimits.unlimited(), progress=False)
    with torch.no_grad():
        expected = load_quantlm(directory)(probe).logits
    env = {
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HUB_CACHE": str(tmp_path / "hub-cache"),
        "TORCHDYNAMO_DISABLE": "1",  # gptqmodel's TorchLinear would torch.compile its dequantization first
        # the warnings asserted below are transformers' own: pin their level (the interpreter inherits this
        # process's environment, where whoever runs the tests may have quieted transformers)
        "TRANSFORMERS_VERBOSITY": "warning",
    }
    # the untrusted load first: after a trusted one, the interpreter has spectra_gptq registered
    run = load_without_spectra_hf(
        [directory, directory, repo.repo_id], probe, trust_remote_code=[False, True, True], work_dir=tmp_path, env=env
    )
    untrusted, *trusted = run.loads
    for loaded in trusted:
        assert loaded.module.startswith("transformers_modules") and loaded.class_name == "QuantLMForCausalLM"
        assert torch.equal(loaded.logits, expected)
    # without trust_remote_code: transformers' own Llama class, which does not know spectra_gptq (as the README says)
    assert untrusted.module.startswith("transformers.") and untrusted.class_name == "LlamaForCausalLM"
    assert "Unknown quantization type, got spectra_gptq" in run.stderr and "MISSING" in run.stderr
    assert not torch.allclose(untrusted.logits, expected, atol=1e-2)


def test_default_kernel_loads_and_agrees(suite_dir, in_memory_logits, probe):
    """The kernel gptqmodel picks on CPU (an int4 kernel with bfloat16 activations at 4 bits) agrees to bf16
    precision."""
    model = load_quantlm(suite_dir / "QuantLM_tiny_4bit")
    with torch.no_grad():
        logits = model(probe).logits
    torch.testing.assert_close(logits, in_memory_logits[4], rtol=0, atol=2e-2)


def test_error_shrinks_as_bits_grow_and_size_shrinks_as_bits_shrink(suite_dir, in_memory_logits, float_logits):
    errors = [((in_memory_logits[b] - float_logits).norm() / float_logits.norm()).item() for b in QUANT_BITS]
    assert errors == sorted(errors, reverse=True) and len(set(errors)) == len(errors), errors
    assert errors[-1] < 0.01 < errors[0], errors
    disk = [(suite_dir / f"QuantLM_tiny_{b}bit" / "model.safetensors").stat().st_size for b in QUANT_BITS]
    assert disk == sorted(disk) and len(set(disk)) == len(disk), disk
    recorded = [read_export_info(suite_dir / f"QuantLM_tiny_{b}bit").extra["size_bits"] for b in QUANT_BITS]
    assert recorded == sorted(recorded), recorded


@pytest.mark.parametrize("bits", QUANT_BITS)
def test_export_records_what_it_is_and_dodges_optimum_traps(bits, suite_dir, floatlm_dir):
    directory = suite_dir / f"QuantLM_tiny_{bits}bit"
    config = json.loads((directory / "config.json").read_text())
    quant = config["quantization_config"]
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert quant["format"] == "gptq" and quant["dataset"] is None and quant["bits"] == bits and quant["sym"] is True
    assert json.loads((directory / "quantize_config.json").read_text())["format"] == "gptq"
    assert quant["group_size"] == {3: 32, 4: 32, 6: -1, 8: -1}[bits]
    # only the width stock transformers refuses ships the spectra_gptq module, named for trust_remote_code=True
    shipped = sorted(p.name for p in directory.glob("*.py"))
    if bits == 6:
        from spectra_hf.modeling import quantlm_gptq

        assert config["auto_map"] == {"AutoModelForCausalLM": "quantlm_gptq.QuantLMForCausalLM"}
        assert shipped == ["quantlm_gptq.py"]
        assert (directory / "quantlm_gptq.py").read_bytes() == Path(quantlm_gptq.__file__).read_bytes()
    else:
        assert "auto_map" not in config and shipped == []

    info = read_export_info(directory)
    assert (info.name, info.family, info.format) == (f"QuantLM_tiny_{bits}bit", "quantlm", "gptq")
    assert info.extra["base_model"] == "FloatLM_tiny" and info.extra["bits"] == bits
    assert info.extra["calibration"]["samples"] == SAMPLES and info.extra["calibration"]["length"] == LENGTH
    assert info.extra["calibration"]["source"].startswith("files:")
    floatlm = load_file(floatlm_dir / "model.safetensors")
    linear = sum(t.numel() for name, t in floatlm.items() if name.startswith("model.layers.") and t.dim() == 2)
    other = sum(t.numel() for t in floatlm.values()) - linear
    effective = bits + (32 / 32 if bits in GROUP_SIZE else 0)  # an fp16 scale and zero per group of 32
    assert info.extra["size_bits"] == round(linear * effective + other * 16)
    assert info.extra["effective_bits_per_weight"] == effective

    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(directory).eos_token_id == 0
    assert not [p.name for p in suite_dir.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_size_bits_are_the_papers_at_99m():
    # 48,234,496 linear weights at the effective bits + 51,528,192 float weights at 16 bits (worked out from the
    # paper's 99M row in tests/test_suite.py's PAPER_99M_SIZE_BITS)
    expected = {3: 981_213_184, 4: 1_029_447_680, 6: 1_113_858_048, 8: 1_210_327_040}
    config = config_for("FloatLM_99M")
    for bits in QUANT_BITS:
        assert GPTQSettings.paper(bits).effective_bits == QUANT_EFFECTIVE_BITS[bits]
        assert quantlm_size_bits(config, GPTQSettings.paper(bits)) == expected[bits]


def test_paper_group_size_is_lowered_to_fit_narrow_models():
    tiny = config_for("FloatLM_99M", tiny=True, vocab_size=512).to_dict()  # input widths 64 and 192
    assert [s.group_size for s in plan_settings(tiny, QUANT_BITS)] == [64, 64, -1, -1]
    assert [s.group_size for s in plan_settings(tiny, [3, 4], group_size=32)] == [32, 32]
    assert [s.group_size for s in plan_settings(config_for("FloatLM_99M").to_dict(), QUANT_BITS)] == [128, 128, -1, -1]


def _dequantize_gptq_v1_4bit(state: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """W [out, in] = scale[g] * (q - (stored_zero + 1)), unpacked from GPTQ v1 int32 words in float64."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    qweight, qzeros = state[f"{prefix}.qweight"], state[f"{prefix}.qzeros"]
    q = ((qweight.unsqueeze(1) >> shifts.view(1, -1, 1)) & 0xF).reshape(-1, qweight.shape[1])  # [in, out]
    zeros = ((qzeros.unsqueeze(2) >> shifts.view(1, 1, -1)) & 0xF).reshape(qzeros.shape[0], -1) + 1  # [G, out]
    g_idx = state[f"{prefix}.g_idx"].long()
    scales = state[f"{prefix}.scales"].double()
    return (scales[g_idx] * (q.double() - zeros[g_idx].double())).T


def test_unpacked_cli_export_is_a_stock_llama_with_the_dequantized_weights(
    tmp_path, floatlm_dir, corpus_files, suite_dir, capsys
):
    from transformers import LlamaForCausalLM

    argv = ["quantize", str(floatlm_dir), str(tmp_path), "--bits", "4", "--format", "unpacked", "--size", "tiny"]
    argv += ["--group-size", "32", "--calibration", str(corpus_files[0])]
    argv += ["--calibration-samples", str(SAMPLES), "--calibration-length", str(LENGTH)]
    assert main(argv) == 0
    directory = tmp_path / "QuantLM_tiny_4bit"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(directory)  # gptqmodel logs to stdout too
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert read_export_info(directory).format == "unpacked"

    unpacked = LlamaForCausalLM.from_pretrained(directory)
    assert unpacked.dtype == torch.float16
    packed = load_file(suite_dir / "QuantLM_tiny_4bit" / "model.safetensors")  # same inputs, same seed: same GPTQ
    for layer in range(unpacked.config.num_hidden_layers):
        for name in ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj"):
            prefix = f"model.layers.{layer}.{name}"
            expected = _dequantize_gptq_v1_4bit(packed, prefix).to(torch.float16)
            assert torch.equal(unpacked.get_submodule(prefix).weight, expected), prefix
    assert torch.equal(unpacked.lm_head.weight, packed["lm_head.weight"].to(torch.float16))


def test_calibration_is_deterministic_and_reads_saved_datasets(tmp_path, tokenizer, corpus_files):
    import datasets

    documents = load_calibration_texts(corpus_files[0]).documents
    first = calibration_samples(tokenizer, documents, samples=3, length=32, seed=1)
    again = calibration_samples(tokenizer, documents, samples=3, length=32, seed=1)
    other = calibration_samples(tokenizer, documents, samples=3, length=32, seed=2)
    assert [s["input_ids"].shape for s in first] == [torch.Size([1, 32])] * 3
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, other, strict=True))

    datasets.Dataset.from_dict({"content": documents}).save_to_disk(str(tmp_path / "saved"))
    saved = load_calibration_texts(tmp_path / "saved", text_column="content")
    assert saved.documents == documents and saved.source.startswith("datasets:")
    with pytest.raises(SpectraError, match="no column 'text'"):
        load_calibration_texts(tmp_path / "saved")


def _config_dir(tmp_path: Path, name: str, config) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "config.json").write_text(config.to_json_string())
    return directory


@pytest.mark.parametrize(
    "case, match",
    [
        ("bits9", "bits=9 is not supported"),
        ("bits1", "bits=1 is not supported"),
        ("format", "format 'packed' is not one of"),
        ("group", "group_size=100 is not supported"),
        ("group_too_wide", "group_size=128 at 4 bits does not divide every layer's input width"),
        ("trilm", "is a TriLM"),
        ("trilm_unpacked", "is a TriLM"),
        ("narrow", "multiples of 32"),
        ("little_text", "calibration text has"),
    ],
)
def test_bad_input_fails_before_any_work(case, match, tmp_path, floatlm_dir, corpus_files):
    from transformers import LlamaConfig

    floatlm = floatlm_dir
    kwargs = {
        "calibration": corpus_files[0],
        "group_size": GROUP_SIZE,
        "samples": SAMPLES,
        "length": LENGTH,
        "size": "tiny",
    }
    if case == "bits9":
        kwargs["bits"] = [4, 9]
    elif case == "bits1":
        kwargs["bits"] = [1]
    elif case == "format":
        kwargs["format"] = "packed"
    elif case == "group":
        kwargs["group_size"] = 100
    elif case == "group_too_wide":
        kwargs["group_size"] = {4: 128}
    elif case == "trilm":
        floatlm = _config_dir(tmp_path, "trilm", config_for("TriLM_99M", tiny=True, vocab_size=512))
    elif case == "trilm_unpacked":  # the original release: a plain llama config carrying the shard count
        floatlm = _config_dir(tmp_path, "trilm_unpacked", LlamaConfig(hidden_size=64, pretraining_model_parallel=1))
    elif case == "narrow":
        narrow = config_for("FloatLM_99M", tiny=True, vocab_size=512, hidden_size=48, num_attention_heads=3)
        floatlm = _config_dir(tmp_path, "narrow", narrow)
    elif case == "little_text":
        kwargs["calibration"] = ["a few words of text"]
    out = tmp_path / "out"
    with pytest.raises(SpectraError, match=match):
        export_quantlms(floatlm, out, **kwargs)
    assert not out.exists() or not any(out.iterdir())


def test_cli_reports_bad_bits_in_one_line(tmp_path, floatlm_dir, corpus_files, capsys):
    argv = ["quantize", str(floatlm_dir), str(tmp_path), "--bits", "12", "--calibration", str(corpus_files[0])]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("spectra-hf quantize: error: bits=12 is not supported")


def test_cli_refuses_a_width_outside_the_suite_unless_asked(tmp_path, floatlm_dir, corpus_files, capsys, caplog):
    import logging

    argv = ["quantize", str(floatlm_dir), str(tmp_path / "out"), "--bits", "4", "5", "--size", "tiny"]
    assert main([*argv, "--calibration", str(corpus_files[0])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("spectra-hf quantize: error: --bits 5: not a suite width")
    assert "--non-suite-bits" in err[-1] and not (tmp_path / "out").exists()
    # with the flag the width passes this check (and the run goes on: here it stops at the too-short calibration)
    short = tmp_path / "short.txt"
    short.write_text("a few words\n")
    with caplog.at_level(logging.WARNING, logger="spectra_hf"):
        assert main([*argv, "--non-suite-bits", "--calibration", str(short)]) == 2
    assert "5 bits is not a suite width" in caplog.text
    assert "calibration text has" in capsys.readouterr().err


def test_bitsandbytes_baselines_load_on_cpu(floatlm_dir, probe, float_logits):
    import bitsandbytes as bnb

    from spectra_hf.quantization.bnb import bnb_stored_bits, load_floatlm_bnb

    errors, sizes = {}, {}
    for bits, layer_type in ((8, bnb.nn.Linear8bitLt), (4, bnb.nn.Linear4bit)):
        model = load_floatlm_bnb(floatlm_dir, bits=bits)
        assert isinstance(model.model.layers[1].mlp.down_proj, layer_type)
        assert type(model.lm_head) is torch.nn.Linear  # head and embeddings stay in floating point
        with torch.no_grad():
            logits = model(probe).logits
        errors[bits] = ((logits - float_logits).norm() / float_logits.norm()).item()
        sizes[bits] = bnb_stored_bits(model)
    assert errors[8] < errors[4] < 0.5, errors
    floatlm = load_file(floatlm_dir / "model.safetensors")
    fp16_bits = 16 * sum(t.numel() for t in floatlm.values())
    assert sizes[4] < sizes[8] < fp16_bits, (sizes, fp16_bits)
    with pytest.raises(SpectraError, match="bitsandbytes loads weights at"):
        load_floatlm_bnb(floatlm_dir, bits=3)


@pytest.mark.slow  # a GPTQ run through the CLI (~1-3 min here)
def test_cli_quantizes_a_users_own_floatlm_and_scales_calibration_down(tmp_path, tokenizer, corpus_files, caplog):
    import logging

    own = tmp_path / "my_floatlm"  # a user's FloatLM: not a suite size, no spectra_export.json
    config = spectra_hf.FloatLMConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=128, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    spectra_hf.FloatLMForCausalLM(config).save_pretrained(own)
    tokenizer.save_pretrained(own)
    small = tmp_path / "train.txt"  # far less than 512 x 2048 tokens
    small.write_text("\n".join(corpus_files[0].read_text(encoding="utf-8").splitlines()[:40]) + "\n")
    tokens = len(tokenizer(small.read_text(), add_special_tokens=False)["input_ids"])
    argv = ["quantize", str(own), str(tmp_path / "out"), "--bits", "8", "--calibration", str(small)]
    with caplog.at_level(logging.WARNING, logger="spectra_hf"):
        assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["QuantLM_my_floatlm_8bit"]
    info = read_export_info(tmp_path / "out" / "QuantLM_my_floatlm_8bit")
    assert info.extra["base_model"] == "my_floatlm"
    calibration = info.extra["calibration"]
    assert calibration["length"] == 128  # the model's context, not 2048
    assert 0 < calibration["samples"] < 512 and calibration["samples"] <= tokens // 128
    assert "--calibration-samples" in caplog.text and "exceeds" in caplog.text
