"""QuantLM recovery from a dequantized fp16 release: bit for bit by default, inexact only when asked and then said,
widths the data does not fill named, and the recovered 6-bit QuantLM loads through AutoModelForCausalLM.

The releases are built here from integer codes and fp16 scales the test draws (W = fl16(s * k)), saved as a stock
fp16 LlamaForCausalLM: no GPTQ run, so every test is fast. References: the drawn codes, stock Llama logits.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from spectra_hf.errors import CheckpointError
from spectra_hf.modeling.checkpoint_checks import linear_shapes
from spectra_hf.quantization.recover import recover_quantlm
from spectra_hf.suite import TERNARY_LINEARS

PROBE = torch.tensor([[0, 17, 250, 3, 99, 480, 12, 7, 311, 64, 5, 200]])  # [1, 12] token ids < 512


@pytest.fixture(scope="module", autouse=True)
def _eager_gptq_kernels():
    """gptqmodel's TorchLinear torch.compiles its dequantization on first use; the eager path computes the same."""
    import torch._dynamo

    with torch._dynamo.config.patch(disable=True):
        yield


def _release(directory: Path, *, bits: int, group_size: int, seed: int = 0, fp32_scales: bool = False) -> Path:
    """A tiny fp16 Llama (hidden 128, 2 layers) whose decoder linears are fl16(s * k) with codes k of `bits` bits.

    fp32_scales: dequantize with fp32 scales that are not fp16 numbers (then cast to fp16), as some tools do:
    about half the values then lie one ulp off every fp16-scale lattice.
    """
    generator = torch.Generator().manual_seed(seed)
    config = LlamaConfig(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=128, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype=torch.float16).eval()  # type: ignore[call-arg]
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] not in TERNARY_LINEARS:
            continue
        out_features, in_features = module.weight.shape
        size = in_features if group_size < 0 else group_size
        codes = torch.randint(low, high + 1, (out_features, in_features), generator=generator)  # [out, in]
        codes[:, ::size] = low  # every group reaches the lattice's end, as GPTQ's usually do
        scales = torch.rand(out_features, in_features // size, generator=generator) * 0.01 + 1e-3  # [out, groups]
        if not fp32_scales:
            scales = scales.half().float()
        module.weight.data = (scales.repeat_interleave(size, dim=1) * codes).half()
    model.save_pretrained(directory)
    return directory


def test_off_by_one_ulp_is_refused_by_default_and_recorded_as_inexact_when_allowed(tmp_path, caplog):
    release = _release(tmp_path / "release", bits=4, group_size=128, fp32_scales=True)
    refused = r"release: model\.layers\.0\.\S+\.weight is not a 4-bit .* off by 1 ulps"
    with pytest.raises(CheckpointError, match=refused):
        recover_quantlm(release, tmp_path / "out", bits=4)
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["release"]

    with caplog.at_level(logging.WARNING, logger="spectra_hf"):
        report = recover_quantlm(release, tmp_path / "out", bits=4, max_ulps=1)
    assert not report.exact and report.max_ulps == 1
    assert report.fit.max_ulps == 1 and report.fit.differing > 0
    assert sorted(report.inexact) == sorted(
        f"model.layers.{layer}.{path}.weight"
        for layer in range(2)
        for path in linear_shapes(LlamaConfig(hidden_size=128, intermediate_size=256, num_attention_heads=4))
    )
    assert "recorded as inexact" in caplog.text
    recorded = json.loads((tmp_path / "out" / "spectra_export.json").read_text())["extra"]["recovered_from_dequantized"]
    assert recorded["exact"] is False and recorded["max_ulps"] == 1
    assert recorded["inexact"]["model.layers.1.mlp.down_proj.weight"]["max_ulps"] == 1


@pytest.mark.parametrize(
    "data_bits, group_size, named_bits",
    [
        (3, 128, 4),
        pytest.param(4, -1, 8, marks=pytest.mark.slow),  # ~30 s each on a loaded 2-core machine
        pytest.param(4, 128, 4, marks=pytest.mark.slow),
        pytest.param(6, -1, 6, marks=pytest.mark.slow),
    ],
    ids=["3bit-named-4", "4bit-per-channel-named-8", "4bit", "6bit"],
)
def test_data_narrower_than_its_name_is_said(tmp_path, caplog, data_bits, group_size, named_bits):
    release = _release(tmp_path / "release", bits=data_bits, group_size=group_size)
    with caplog.at_level(logging.WARNING, logger="spectra_hf"):
        report = recover_quantlm(release, tmp_path / "out", bits=named_bits, group_size=group_size)
    assert report.exact and report.reloaded.bit_exact  # a narrower lattice is also a wider one: bit for bit
    assert report.code_bits == data_bits and report.levels == 1 << data_bits
    assert report.narrower_than_named == (data_bits < named_bits)
    said = f"use {1 << data_bits} of the {1 << named_bits} levels of {named_bits} bits"
    assert (said in caplog.text) == (data_bits < named_bits)
    recorded = json.loads((tmp_path / "out" / "spectra_export.json").read_text())["extra"]["recovered_from_dequantized"]
    assert recorded["code_bits"] == data_bits and recorded["narrower_than_named"] == (data_bits < named_bits)


@pytest.mark.slow  # a recovery and four loads (~40 s on a loaded machine)
def test_recovered_6bit_loads_through_auto_classes_from_a_dir_and_the_hub(tmp_path, local_hub):
    from huggingface_hub import HfApi
    from transformers import AutoModelForCausalLM

    import spectra_hf  # noqa: F401 - registers the spectra_gptq quantization method
    from spectra_hf.quantization import load_quantlm

    release = _release(tmp_path / "release", bits=6, group_size=-1)
    out = tmp_path / "QuantLM_tiny_6bit"
    report = recover_quantlm(release, out, bits=6)
    assert report.exact
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "spectra_gptq"
    # the remote code `save_quantized` ships too: trust_remote_code=True loads it without spectra-hf
    assert config["auto_map"] == {"AutoModelForCausalLM": "quantlm_gptq.QuantLMForCausalLM"}
    assert (out / "quantlm_gptq.py").is_file()
    with torch.no_grad():
        reference = load_quantlm(out, backend="torch")(PROBE).logits
        release_logits = LlamaForCausalLM.from_pretrained(release).eval()(PROBE).logits
        torch.testing.assert_close(reference, release_logits, rtol=0, atol=2e-2)  # same weights, fp16 matmuls

        local = AutoModelForCausalLM.from_pretrained(out)
        assert type(local.model.layers[0].mlp.down_proj).__name__ == "TorchLinear"
        assert torch.equal(local(PROBE).logits, reference)

        api = HfApi()
        repo = api.create_repo("quant-tests/QuantLM_tiny_6bit", exist_ok=True).repo_id
        api.upload_folder(repo_id=repo, folder_path=str(out))
        hub = AutoModelForCausalLM.from_pretrained(repo)
        assert torch.equal(hub(PROBE).logits, reference)


@pytest.mark.slow  # two fresh interpreters importing transformers (~15-30 s each)
@pytest.mark.parametrize("prelude", ["import spectra_hf", "import transformers.quantizers.auto\nimport spectra_hf"])
def test_import_spectra_hf_registers_the_spectra_gptq_method(prelude):
    import subprocess
    import sys

    check = (
        "from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING\n"
        "method = 'spectra_gptq'\n"
        "print(AUTO_QUANTIZATION_CONFIG_MAPPING[method].__name__, AUTO_QUANTIZER_MAPPING[method].__name__)"
    )
    done = subprocess.run([sys.executable, "-c", f"{prelude}\n{check}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "SpectraGPTQConfig SpectraGPTQHfQuantizer"


def test_release_conversion_warns_in_manifest_and_card_when_the_data_is_narrower(tmp_path):
    """The release pipeline's conversion carries the finding into its warnings (the manifest's and the card's)."""
    from spectra_hf.release.conversion import convert_revision
    from spectra_hf.release.discovery import ReleaseRevision
    from spectra_hf.suite import get_model

    release = _release(tmp_path / "release", bits=3, group_size=128)
    revision = ReleaseRevision(
        model=get_model("QuantLM_99M_4bit"),
        source_repo="SpectraSuite/QuantLM_99M_4bit_Unpacked",
        source_revision="main",
        source_commit="0" * 40,
        step=None,
        files=[],
    )
    result = convert_revision(revision, release, tmp_path / "out")
    narrower = [w for w in result.warnings if "narrower than its name says" in w]
    assert narrower == [
        "SpectraSuite/QuantLM_99M_4bit_Unpacked@main: the recovered codes use 8 of the 16 levels of 4 bits, as a "
        "3-bit QuantLM's do: narrower than its name says"
    ]
    info = json.loads((tmp_path / "out" / "spectra_export.json").read_text())
    assert info["extra"]["recovered_from_dequantized"]["narrower_than_named"] is True
