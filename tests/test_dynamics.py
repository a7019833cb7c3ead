"""Checkpoint dynamics: statistics counted on packed bytes equal a float64 reference from the unpacked matrices.

The synthetic exports below hold ternary matrices T chosen by the test (numpy int8), packed with the documented
format; every expected value is computed from those T with numpy in float64, never by the code under test.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file, save_file

from spectra_hf.analysis.dynamics import checkpoint_dynamics, write_dynamics
from spectra_hf.analysis.packed_counts import digit_counts, flip_counts
from spectra_hf.checkpoints.exports import ExportInfo, write_export_info
from spectra_hf.cli import main
from spectra_hf.errors import CheckpointError, ConfigError
from spectra_hf.modeling.checkpoint_checks import linear_shapes
from spectra_hf.modeling.packing import pack_ternary
from spectra_hf.suite import config_for

NAME = "TriLM_1.1B"  # tiny: hidden 64, 2 layers, 2 scale shards
STEPS = (10, 20, 30)  # checkpoints/step10, step20; the export itself (main) is step 30
FLIPPED = 37  # step10 -> step20 changes exactly this many digits of layer 1's down_proj, and nothing else


def _packed(digits: np.ndarray) -> np.ndarray:
    return pack_ternary(torch.from_numpy(digits)).numpy()


# ---- the byte-level counting -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("numel", [1, 4, 5, 4096, 12287])
def test_counts_on_packed_bytes_equal_the_unpacked_reference(numel):
    rng = np.random.default_rng(numel)
    before = rng.integers(-1, 2, numel).astype(np.int8)
    after = np.where(rng.random(numel) < 0.3, rng.integers(-1, 2, numel), before).astype(np.int8)
    counts = digit_counts(_packed(before), numel=numel)
    assert (counts.minus, counts.zero, counts.plus) == tuple(int((before == v).sum()) for v in (-1, 0, 1))
    flips = flip_counts(_packed(before), _packed(after), numel=numel)
    assert flips.zero_sign == int(((before == 0) != (after == 0)).sum())
    assert flips.sign == int((before.astype(np.int16) * after == -1).sum())
    assert flips.flipped == int((before != after).sum()) and flips.total == numel


def test_exactly_k_flips_across_chunks():
    numel = 5 * 1000 + 3  # a padded last byte
    rng = np.random.default_rng(1)
    before = rng.integers(-1, 2, numel).astype(np.int8)
    after = before.copy()
    where = rng.choice(numel, size=FLIPPED, replace=False)
    after[where] = np.where(before[where] == 0, 1, -before[where])  # 0 -> +1, +-1 -> -+1
    flips = flip_counts(_packed(before), _packed(after), numel=numel, chunk_bytes=64)  # 16 chunks, a short last one
    assert flips.flipped == FLIPPED
    assert flips.zero_sign == int((before[where] == 0).sum()) and flips.sign == int((before[where] != 0).sum())


def test_corrupt_or_mismatched_bytes_are_refused():
    good = _packed(np.zeros(10, dtype=np.int8))
    with pytest.raises(CheckpointError, match="<= 242"):
        digit_counts(np.array([0, 243], dtype=np.uint8), numel=10)
    with pytest.raises(CheckpointError, match="<= 242"):
        flip_counts(good, np.array([0, 250], dtype=np.uint8), numel=10)
    with pytest.raises(CheckpointError, match=r"uint8 \[2\]"):
        digit_counts(good, numel=11)


# ---- synthetic suite exports ---------------------------------------------------------------------------------------


def _revision_digits(shapes: dict[str, tuple[int, int]], layers: int) -> dict[int, dict[str, np.ndarray]]:
    """step -> {tensor prefix: T}: step 20 differs from step 10 in exactly FLIPPED digits of one matrix, step 30 from
    step 20 in ~10% of every matrix."""
    rng = np.random.default_rng(0)
    first = {
        f"model.layers.{layer}.{path}": rng.choice([-1, 0, 1], size=shape, p=[0.3, 0.4, 0.3]).astype(np.int8)
        for layer in range(layers)
        for path, shape in shapes.items()
    }
    second = {name: digits.copy() for name, digits in first.items()}
    target = second["model.layers.1.mlp.down_proj"].reshape(-1)  # a view
    where = rng.choice(target.size, size=FLIPPED, replace=False)
    target[where] = np.where(target[where] == 0, -1, np.where(rng.random(FLIPPED) < 0.5, 0, -target[where]))
    third = {
        name: np.where(rng.random(digits.shape) < 0.1, rng.integers(-1, 2, digits.shape), digits).astype(np.int8)
        for name, digits in second.items()
    }
    return dict(zip(STEPS, (first, second, third), strict=True))


@pytest.fixture(scope="module")
def trilm_export(tmp_path_factory, tokenizer):
    """A TriLM suite export (packed, tokenizer included) with known digits and scales at three steps.

    Returns (export dir, {step: {prefix: T}}, {step: {prefix: scales float32}})."""
    from spectra_hf.modeling import TriLMForCausalLM

    root = tmp_path_factory.mktemp("suite")
    config = config_for(NAME, tiny=True)
    template = root / "template"
    TriLMForCausalLM(config).save_pretrained(template, weight_format="packed")
    tokenizer.save_pretrained(template)
    shapes = linear_shapes(config)
    digits = _revision_digits(shapes, config.num_hidden_layers)
    rng = np.random.default_rng(1)
    scales = {
        step: {name: rng.uniform(0.01, 0.05, config.pretraining_model_parallel).astype(np.float32) for name in t}
        for step, t in digits.items()
    }
    export = root / NAME
    for step in STEPS:
        target = export if step == STEPS[-1] else export / "checkpoints" / f"step{step}"
        target.mkdir(parents=True, exist_ok=True)
        for file in template.iterdir():
            if file.is_file():
                shutil.copy(file, target / file.name)
        tensors = load_file(template / "model.safetensors")
        for name, t in digits[step].items():
            tensors[f"{name}.weight_packed"] = torch.from_numpy(_packed(t))
            tensors[f"{name}.weight_scale"] = torch.from_numpy(scales[step][name])
        embedding = tensors["model.embed_tokens.weight"]
        tensors["model.embed_tokens.weight"] = embedding * (1 + step / 100)  # a distinct loss per revision
        save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
        write_export_info(target, ExportInfo(name=NAME, family="trilm", step=step, format="packed"))
    return export, digits, scales


def _index(frame) -> dict[tuple, float]:
    """(revision, layer, projection, statistic, shard or None) -> value; each key is on exactly one row."""
    index: dict[tuple, float] = {}
    for row in frame.itertuples(index=False):
        key = (row.revision, row.layer, row.projection, row.statistic, None if row.statistic != "scale" else row.shard)
        assert key not in index, key
        index[key] = float(row.value)
    return index


def _value(frame, revision: str, layer: int, projection: str, statistic: str, shard=None) -> float:
    """The value of one layer statistic; `frame` may be an `_index` already built (the reference loops ask
    thousands)."""
    index = frame if isinstance(frame, dict) else _index(frame)
    return index[(revision, layer, projection, statistic, shard)]


def _model_value(frame, revision: str, statistic: str) -> float:
    """A whole-model statistic (loss, perplexity): no layer, no projection."""
    rows = frame[(frame["revision"] == revision) & (frame["statistic"] == statistic)]
    assert len(rows) == 1 and rows["layer"].isna().all() and rows["projection"].isna().all(), rows
    return float(rows["value"].iloc[0])


def _assert_matches_reference(frame, digits, scales) -> None:
    frame = _index(frame)
    names = {1: "step10", 2: "step20", 3: "main"}
    for index, step in enumerate(STEPS, start=1):
        revision = names[index]
        for prefix, t in digits[step].items():
            layer, projection = int(prefix.split(".")[2]), ".".join(prefix.split(".")[3:])
            t64 = t.astype(np.float64)
            for statistic, value in (("minus_fraction", -1), ("zero_fraction", 0), ("plus_fraction", 1)):
                assert _value(frame, revision, layer, projection, statistic) == pytest.approx(
                    np.mean(t64 == value), abs=1e-15
                )
            for shard, scale in enumerate(scales[step][prefix].astype(np.float64)):
                assert _value(frame, revision, layer, projection, "scale", shard) == scale
            if index == 1:
                continue
            before = digits[STEPS[index - 2]][prefix].astype(np.float64)
            assert _value(frame, revision, layer, projection, "flip_fraction") == pytest.approx(
                np.mean(before != t64), abs=1e-15
            )
            assert _value(frame, revision, layer, projection, "flip_zero_fraction") == pytest.approx(
                np.mean((before == 0) != (t64 == 0)), abs=1e-15
            )
            assert _value(frame, revision, layer, projection, "flip_sign_fraction") == pytest.approx(
                np.mean(before * t64 == -1), abs=1e-15
            )


def test_trilm_export_dynamics_equal_the_float64_reference(trilm_export):
    export, digits, scales = trilm_export
    frame = checkpoint_dynamics(export, progress=False)
    assert list(dict.fromkeys(frame["revision"])) == ["step10", "step20", "main"]
    assert list(dict.fromkeys(frame["step"])) == list(STEPS)
    _assert_matches_reference(frame, digits, scales)
    # step10 -> step20: exactly FLIPPED weights of one matrix changed, nothing else
    flips = frame[(frame["revision"] == "step20") & (frame["statistic"] == "flip_fraction")]
    flipped = (flips["value"] * flips["numel"]).round().astype(int)
    assert flipped.sum() == FLIPPED
    changed = flips[flipped > 0]
    assert changed["projection"].tolist() == ["mlp.down_proj"] and changed["layer"].tolist() == [1]
    # 2 layers x 7 projections x (3 fractions + 2 shard scales) + 2 pairs x 2 layers x 7 x 3 flip statistics
    assert len(frame) == 3 * 2 * 7 * 5 + 2 * 2 * 7 * 3


def test_selected_revisions_and_bad_input(trilm_export, tmp_path):
    export, digits, _ = trilm_export
    frame = checkpoint_dynamics(export / "checkpoints", revisions=["main", "step10"], progress=False)
    assert list(dict.fromkeys(frame["revision"])) == ["step10", "main"]  # step order, whatever order was asked
    before, after = digits[10]["model.layers.0.self_attn.q_proj"], digits[30]["model.layers.0.self_attn.q_proj"]
    assert _value(frame, "main", 0, "self_attn.q_proj", "flip_fraction") == pytest.approx(np.mean(before != after))
    with pytest.raises(ConfigError, match=r"step15 do not exist.*available are step10, step20, main"):
        checkpoint_dynamics(export, revisions=["step15"], progress=False)
    with pytest.raises(ConfigError, match="neither a suite export directory nor a Hub repo id"):
        checkpoint_dynamics(tmp_path / "nothing" / "here", progress=False)


def test_main_is_left_out_when_a_checkpoint_holds_its_step(trilm_export, tmp_path):
    export = shutil.copytree(trilm_export[0], tmp_path / NAME)
    final = export / "checkpoints" / f"step{STEPS[-1]}"
    final.mkdir()
    for file in export.iterdir():
        if file.is_file():
            shutil.copy(file, final / file.name)
    frame = checkpoint_dynamics(export, progress=False)
    assert list(dict.fromkeys(frame["revision"])) == ["step10", "step20", "step30"]
    asked = checkpoint_dynamics(export, revisions=["step30", "main"], progress=False)
    assert set(asked[asked["revision"] == "main"]["statistic"]) >= {"flip_fraction"}
    assert _value(asked, "main", 0, "mlp.up_proj", "flip_fraction") == 0.0  # the same weights


@pytest.mark.slow  # five loads of a tiny model and their perplexity runs (~45 s on a loaded 2-core machine)
def test_cli_writes_the_table_and_figures(trilm_export, tmp_path, corpus_files, capsys):
    pytest.importorskip("matplotlib")
    from spectra_hf.analysis.figures import dynamics_figures
    from spectra_hf.evaluation.pretrained import load_pretrained
    from spectra_hf.evaluation.text_perplexity import load_texts, perplexity

    export, digits, scales = trilm_export
    out = tmp_path / "out"
    argv = ["dynamics", str(export), "--text", str(corpus_files[1]), "--max-documents", "4", "--out", str(out)]
    assert main(argv) == 0
    assert "3 revisions (step10, step20, main)" in capsys.readouterr().out
    written = sorted(p.name for p in out.iterdir())
    assert written == ["dynamics.csv", "dynamics.parquet", "flip_fraction_heatmap.png", "loss.png",
                       "sparsity_scales.png"]  # fmt: skip
    import pandas as pd

    frame = pd.read_parquet(out / "dynamics.parquet")
    assert len(pd.read_csv(out / "dynamics.csv")) == len(frame)
    _assert_matches_reference(frame, digits, scales)
    # the loss of each revision is what the evaluation code gives for that revision
    texts = load_texts(str(corpus_files[1]), max_documents=4)
    for revision in ("step10", "main"):
        model, tok = load_pretrained(export, revision=revision)
        expected = perplexity(model, tok, texts, show_progress=False)
        assert _model_value(frame, revision, "perplexity") == pytest.approx(expected["perplexity"])
    losses = frame[frame["statistic"] == "loss"]["value"]
    assert losses.nunique() == 3

    figures = dynamics_figures(frame)
    heatmap = figures["flip_fraction_heatmap.png"].axes[0]
    assert heatmap.get_xlabel() == "checkpoint (change since the previous one)"
    assert heatmap.get_ylabel() == "decoder layer"
    assert "TriLM_1.1B" in heatmap.get_title() and "step10 to main" in heatmap.get_title()
    cells = heatmap.get_images()[0].get_array()
    assert cells.shape == (2, 2)  # layers x (revisions - 1)
    for column, (older, newer) in enumerate([(10, 20), (20, 30)]):
        for layer in range(2):
            names = [p for p in digits[newer] if p.startswith(f"model.layers.{layer}.")]
            changed = sum(np.sum(digits[older][p] != digits[newer][p]) for p in names)
            total = sum(digits[newer][p].size for p in names)
            assert cells[layer, column] == pytest.approx(100.0 * changed / total)
    curves = figures["sparsity_scales.png"].axes
    assert curves[0].get_xlabel() == "training step (optimizer steps)"
    assert curves[0].get_ylabel() == "zero weights, share of the matrix (%)"
    q_line = next(line for line in curves[0].get_lines() if line.get_label() == "q_proj")
    assert list(q_line.get_xdata()) == [10.0, 20.0, 30.0]
    q_zero = [
        100 * np.mean(np.concatenate([digits[s][f"model.layers.{i}.self_attn.q_proj"].ravel() for i in range(2)]) == 0)
        for s in STEPS
    ]
    assert list(q_line.get_ydata()) == pytest.approx(q_zero)
    assert len(curves[0].get_lines()) == 7 and curves[1].get_legend() is not None
    loss_axes = figures["loss.png"].axes[0]
    assert loss_axes.get_ylabel() == "loss on the text (nats per token)"
    assert list(loss_axes.get_lines()[0].get_ydata()) == pytest.approx(
        [_model_value(frame, r, "loss") for r in ("step10", "step20", "main")]
    )
    # a second run does not overwrite silently
    assert main([*argv[:2], "--out", str(out), "--no-figures"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_floatlm_norms_and_relative_change(tmp_path):
    from spectra_hf.modeling import FloatLMForCausalLM

    export = tmp_path / "FloatLM_1.1B"
    model = FloatLMForCausalLM(config_for("FloatLM_1.1B", tiny=True))
    for step in (5, 15):
        target = export / "checkpoints" / f"step{step}"
        model.save_pretrained(target)
        write_export_info(target, ExportInfo(name="FloatLM_1.1B", family="floatlm", step=step, format="float"))
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.01)
    frame = checkpoint_dynamics(export, progress=False)
    first = load_numpy(export / "checkpoints" / "step5" / "model.safetensors")
    second = load_numpy(export / "checkpoints" / "step15" / "model.safetensors")
    for layer in range(2):
        for projection in ("self_attn.k_proj", "mlp.up_proj"):
            name = f"model.layers.{layer}.{projection}.weight"
            a, b = first[name].astype(np.float64), second[name].astype(np.float64)
            norm = _value(frame, "step5", layer, projection, "weight_norm")
            assert norm == pytest.approx(np.linalg.norm(a), rel=1e-12)
            assert _value(frame, "step15", layer, projection, "relative_change") == pytest.approx(
                np.linalg.norm(b - a) / np.linalg.norm(a), rel=1e-12
            )
    assert set(frame["statistic"]) == {"weight_norm", "relative_change"}
    # packed GPTQ weights are refused with the way out (the weights must be float)
    gptq = tmp_path / "QuantLM_1.1B_4bit"
    shutil.copytree(export / "checkpoints" / "step5", gptq)
    config = json.loads((gptq / "config.json").read_text())
    (gptq / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(CheckpointError, match="--format unpacked"):
        checkpoint_dynamics(gptq, progress=False)
    pytest.importorskip("matplotlib")
    written = write_dynamics(frame, tmp_path / "out")
    assert sorted(p.name for p in written) == ["dynamics.csv", "dynamics.parquet", "relative_change_heatmap.png",
                                               "weight_norms.png"]  # fmt: skip


def test_hub_repo_revision_by_revision_never_more_than_two_on_disk(trilm_export, local_hub, tmp_path):
    """The export's revisions as step branches of a repo on the local Hub; dynamics downloads them one at a time."""
    from huggingface_hub import HfApi

    export, digits, scales = trilm_export
    api = HfApi()
    repo = "dynamics-test/TriLM_1.1B"
    api.create_repo(repo)
    for step in STEPS[:-1]:
        api.create_branch(repo, branch=f"step{step}")
        api.upload_folder(repo_id=repo, folder_path=export / "checkpoints" / f"step{step}", revision=f"step{step}")
    api.upload_folder(repo_id=repo, folder_path=export, ignore_patterns=["checkpoints/*"])

    cache = tmp_path / "cache"
    seen: list[tuple[str, int, int]] = []

    def on_revision(done) -> None:
        snapshots = list((cache / "models--dynamics-test--TriLM_1.1B" / "snapshots").iterdir())
        blob_bytes = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file() and not p.is_symlink())
        seen.append((done.revision.name, len(snapshots), blob_bytes))

    frame = checkpoint_dynamics(repo, cache_dir=cache, on_revision=on_revision, progress=False)
    assert [name for name, _, _ in seen] == ["step10", "step20", "main"]
    assert [count for _, count, _ in seen] == [1, 2, 2]
    one_revision = sum(p.stat().st_size for p in (export / "checkpoints" / "step10").iterdir())
    assert max(size for _, _, size in seen) <= 2 * one_revision
    snapshots = cache / "models--dynamics-test--TriLM_1.1B" / "snapshots"
    assert not snapshots.exists() or not list(snapshots.iterdir())  # every revision released at the end
    assert set(frame["model"]) == {repo}
    _assert_matches_reference(frame, digits, scales)
    local = checkpoint_dynamics(export, progress=False).drop(columns="model")
    # main's step is not published with the repo, so it is unknown there
    assert frame.drop(columns=["model", "step"]).equals(local.drop(columns="step"))


def test_hub_main_holding_the_last_step_branch_is_left_out(trilm_export, local_hub):
    """A repo as `spectra-hf publish` lays it out when the run's last step is also a checkpoint (the demo's
    step100/200/300 + main): main's revisions.json names its step, so main is left out like a local export's, and
    kept with that step when asked for."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from spectra_hf.cards import Revision as BranchRevision
    from spectra_hf.hub.repo_files import revisions_json

    export, digits, _ = trilm_export
    api = HfApi()
    repo = "dynamics-test/TriLM_1.1B_published"
    api.create_repo(repo)
    for step in STEPS:
        folder = export if step == STEPS[-1] else export / "checkpoints" / f"step{step}"
        api.create_branch(repo, branch=f"step{step}")
        api.upload_folder(repo_id=repo, folder_path=folder, revision=f"step{step}", ignore_patterns=["checkpoints/*"])
    api.upload_folder(repo_id=repo, folder_path=export, ignore_patterns=["checkpoints/*"])
    listing = revisions_json(repo, main_step=STEPS[-1], main_tokens_seen=None,
                             revisions=[BranchRevision(f"step{s}", s, s * 1000) for s in STEPS])  # fmt: skip
    api.create_commit(repo, operations=[CommitOperationAdd(listing.path_in_repo, listing.content)], commit_message="r")

    frame = checkpoint_dynamics(repo, progress=False)
    assert list(dict.fromkeys(frame["revision"])) == ["step10", "step20", "step30"]
    assert list(frame["step"].drop_duplicates()) == list(STEPS)
    asked = checkpoint_dynamics(repo, revisions=["step30", "main"], progress=False)
    assert list(asked[asked["revision"] == "main"]["step"].drop_duplicates()) == [STEPS[-1]]
    assert _value(asked, "main", 0, "mlp.up_proj", "flip_fraction") == 0.0  # the same weights as step30
    before, after = digits[20]["model.layers.0.mlp.up_proj"], digits[30]["model.layers.0.mlp.up_proj"]
    assert _value(frame, "step30", 0, "mlp.up_proj", "flip_fraction") == pytest.approx(np.mean(before != after))


def test_main_step_of_reads_what_revisions_json_writes():
    from spectra_hf.hub.repo_files import main_step_of, revisions_json

    written = revisions_json("org/TriLM_99M", main_step=300, main_tokens_seen=None, revisions=[]).content
    assert main_step_of(written.decode()) == 300
    assert main_step_of(json.dumps({"main": {"step": None}})) is None
    assert main_step_of("not json") is None
    assert main_step_of(json.dumps({"main": {"step": True}})) is None


def test_plot_extra_missing_is_named(trilm_export, tmp_path):
    import subprocess
    import sys

    export = trilm_export[0]
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"  # as if the extra were not installed
        "from spectra_hf.cli import main\n"
        f"sys.exit(main(['dynamics', {str(export)!r}, '--out', {str(tmp_path / 'out')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2
    assert 'pip install "spectra-hf[plot]"' in done.stderr
    assert not (tmp_path / "out").exists()  # refused before any work

