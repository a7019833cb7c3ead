"""`spectra-hf demo --quick`: the whole pipeline offline; trained models beat the untrained ones, stages run alone."""

from __future__ import annotations

import json

import pytest

from spectra_hf.cli import main
from spectra_hf.demo import DemoConfig, DemoPaths, report_rows


@pytest.fixture(scope="module")
def demo_run(demo_quick):
    return demo_quick.workdir  # the session's one demo run (tests/conftest.py; test_quiet.py checks its stderr)


def _rows(workdir) -> dict[tuple[str, str], dict]:
    return {(row["name"], row["revision"]): row for row in report_rows(DemoPaths(workdir), DemoConfig.quick())}


@pytest.mark.slow  # the whole demo runs once per module (minutes)
def test_demo_trained_models_beat_untrained(demo_run):
    rows = _rows(demo_run)
    for family in ("TriLM", "FloatLM"):
        untrained = rows[(f"untrained_{family}_99M", "-")]["perplexity"]
        checkpoint = rows[(f"{family}_99M", "step60")]["perplexity"]
        final = rows[(f"{family}_99M", "main")]["perplexity"]
        assert final < checkpoint < untrained  # training helped, and kept helping after the step-60 checkpoint
        assert final < 0.5 * untrained
    # GPTQ 4-bit stays close to the FloatLM it quantizes; the unpacked release format is the packed TriLM
    floatlm = rows[("FloatLM_99M", "main")]["perplexity"]
    assert rows[("QuantLM_99M_4bit", "main")]["perplexity"] == pytest.approx(floatlm, rel=0.05)
    trilm = rows[("TriLM_99M", "main")]["perplexity"]
    assert rows[("TriLM_99M_Unpacked", "main")]["perplexity"] == pytest.approx(trilm, rel=1e-4)
    # TriLM stores its decoder weights in 1.58 bits: smaller than the 4-bit QuantLM, which is smaller than FloatLM
    sizes = {name: row["size_bits"] for (name, _), row in rows.items()}
    assert sizes["TriLM_99M"] < sizes["QuantLM_99M_4bit"] < sizes["FloatLM_99M"]


@pytest.mark.slow  # the whole demo runs once per module (minutes)
def test_demo_loaded_back_models_equal_the_local_exports(demo_run):
    """What from_pretrained(repo, revision) gave back from the local Hub scores exactly like the local export."""
    rows = _rows(demo_run)
    for name in ("TriLM_99M", "FloatLM_99M", "QuantLM_99M_4bit"):
        local = json.loads((demo_run / "eval" / f"{name}.json").read_text())
        assert rows[(name, "main")]["perplexity"] == pytest.approx(local["perplexity"]["perplexity"], rel=1e-4)
        assert any(row["metric_type"] == "perplexity" for row in local["model_index"])
    samples = [row["sample"] for row in rows.values() if "sample" in row]
    assert len(samples) == 2 and all(s.startswith("The function returns") for s in samples)


@pytest.mark.slow  # the whole demo runs once per module (minutes)
def test_demo_stage_runs_alone_on_earlier_output(demo_run, capsys):
    """The publish stage alone re-reads the suite directory and the stored local Hub: everything is already there."""
    capsys.readouterr()
    assert main(["demo", "--workdir", str(demo_run), "--stages", "publish"]) == 0
    out = capsys.readouterr().out
    assert "published to the local Hub" in out and " 0 commits " in out


@pytest.mark.slow  # the whole demo runs once per module (minutes)
def test_demo_sizes_in_bits_count_the_models_parameters(demo_run):
    """The table's sizes, against the parameters of the demo's own models counted by hand: decoder projections at
    1.58 bits (TriLM), 16 (FloatLM) or the QuantLM's recorded effective bits, every other parameter at 16."""
    from transformers import AutoModelForCausalLM

    import spectra_hf  # noqa: F401

    rows = _rows(demo_run)
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    model = AutoModelForCausalLM.from_pretrained(demo_run / "init" / "FloatLM_99M")
    linear = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[-2] in projections)
    rest = sum(p.numel() for p in model.parameters()) - linear
    effective = json.loads((demo_run / "suite" / "QuantLM_99M_4bit" / "spectra_export.json").read_text())["extra"]
    expected = {"FloatLM_99M": 16, "TriLM_99M": 1.58, "QuantLM_99M_4bit": effective["effective_bits_per_weight"]}
    for name, bits in expected.items():
        assert rows[(name, "main")]["size_bits"] == round(linear * bits + rest * 16), name
    assert effective["effective_bits_per_weight"] == 4.5  # group size 64 on the quick demo's 64-wide layers


def test_demo_stage_without_its_inputs_says_which_stage_to_run(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path / "empty"), "--stages", "publish"]) == 2
    error = capsys.readouterr().err.strip()
    assert "run the 'prepare' stage first" in error and len(error.splitlines()) == 1
