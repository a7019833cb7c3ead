"""`spectra-hf demo --quick`: the whole pipeline offline; trained models beat the untrained ones, stages run alone."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spectra_hf.cli import main
from spectra_hf.demo import STAGES, DemoConfig, DemoPaths, report_rows
from spectra_hf.demo.records import check_record, write_record


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
    """The publish stage alone (forced: it finished before) re-reads the suite directory and the stored local Hub:
    everything is already there."""
    capsys.readouterr()
    assert main(["demo", "--workdir", str(demo_run), "--stages", "publish", "--force"]) == 0
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


def _sha256s(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "hf_home" not in p.parts and p.name != ".loadback_spec.json"
    }


@pytest.mark.slow  # the whole demo runs once per module (minutes); this re-run reuses every stage
def test_demo_rerun_reuses_every_finished_stage_and_says_so(demo_run, capsys):
    before = _sha256s(demo_run)
    capsys.readouterr()
    assert main(["demo", "--workdir", str(demo_run), "--quick"]) == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert f"== {stage}: reused: finished earlier from the same inputs" in out, stage
    assert "training " not in out and "perplexity" in out  # nothing trained; the table is printed again
    assert _sha256s(demo_run) == before  # nothing was rewritten


@pytest.mark.slow  # the whole demo runs once per module (minutes); this re-run evaluates again
def test_demo_rerun_redoes_a_stage_whose_outputs_changed(demo_run, capsys):
    """Finished means checked: a changed output file re-runs its stage (which says why); the stages after it are
    reused when the re-run wrote the same bytes."""
    path = demo_run / "eval" / "untrained_TriLM_99M.json"
    original = path.read_bytes()
    path.write_bytes(original.replace(b"perplexity", b"perplexitY", 1))
    capsys.readouterr()
    assert main(["demo", "--workdir", str(demo_run), "--quick"]) == 0
    out = capsys.readouterr().out
    assert "== evaluate (its outputs changed since it finished (eval/untrained_TriLM_99M.json)) ==" in out
    assert path.read_bytes() == original
    for stage in ("prepare", "train", "quantize", "publish", "loadback"):
        assert f"== {stage}: reused" in out, stage


def test_demo_stage_records_are_checked_against_the_files(tmp_path):
    """A stage counts as finished only while its record, its inputs and its output files agree."""
    paths, config = DemoPaths(tmp_path), DemoConfig.quick()
    assert check_record(paths, config, "evaluate", upstream="u") == (None, "not finished before")
    paths.evals.mkdir()
    (paths.evals / "a.json").write_text("{}")
    write_record(paths, config, "evaluate", upstream="u")
    record, why = check_record(paths, config, "evaluate", upstream="u")
    assert record is not None and why == "" and list(record.files) == ["eval/a.json"]
    assert check_record(paths, config, "evaluate", upstream="other")[1].startswith("what it was made from changed")
    (paths.evals / "b.json").write_text("{}")  # a file it did not write
    assert check_record(paths, config, "evaluate", upstream="u")[1].endswith("(eval/b.json)")
    (paths.evals / "b.json").unlink()
    (paths.evals / "a.json").write_text("[]")
    assert check_record(paths, config, "evaluate", upstream="u")[1].endswith("(eval/a.json)")
    (paths.records / "evaluate.json").write_text("{")
    assert "unreadable" in check_record(paths, config, "evaluate", upstream="u")[1]


@pytest.mark.slow  # a demo interrupted with Ctrl-C during training, then run again (minutes)
def test_demo_interrupted_during_training_resumes_from_its_checkpoint(demo_run, tmp_path):
    """Ctrl-C after the first checkpoint, the same command again: training resumes there, and the losses and final
    weights equal the uninterrupted run's (the module's demo, same settings)."""
    workdir = tmp_path / "demo"
    argv = ["demo", "--workdir", str(workdir), "--quick", "--stages", "prepare,train"]
    process = subprocess.Popen([sys.executable, "-m", "spectra_hf.cli", *argv], stdout=subprocess.PIPE, text=True)
    checkpoint = workdir / "runs" / "TriLM_99M" / "checkpoint-60"
    while not (checkpoint / "trainer_state.json").is_file():
        assert process.poll() is None, "the demo ended before its first checkpoint"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 130, out
    assert not (workdir / "runs" / "TriLM_99M" / "checkpoint-120").exists()
    assert not (workdir / "stages" / "train.json").exists()  # an interrupted stage is not finished

    result = subprocess.run([sys.executable, "-m", "spectra_hf.cli", *argv], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "== prepare: reused" in result.stdout
    assert "training TriLM_99M (120 steps of 8 x 64 tokens): resuming from checkpoint-60" in result.stdout

    def losses(root: Path, name: str) -> dict[int, float]:
        state = json.loads((root / "runs" / name / "checkpoint-120" / "trainer_state.json").read_text())
        return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}

    for name in ("TriLM_99M", "FloatLM_99M"):
        resumed, whole = losses(workdir, name), losses(demo_run, name)
        assert sorted(resumed) == [20, 40, 60, 80, 100, 120] and resumed == pytest.approx(whole, rel=1e-6), name
        weights = [(root / "suite" / name / "model.safetensors").read_bytes() for root in (workdir, demo_run)]
        assert hashlib.sha256(weights[0]).digest() == hashlib.sha256(weights[1]).digest(), name
