"""`spectra-hf plot suite`: evaluation results of several sizes and families -> one figure and one CSV per metric."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from spectra_hf.analysis.suite_results import collect_results, plotted_rows
from spectra_hf.cli import main
from spectra_hf.errors import DataError
from spectra_hf.evaluation.results import build_results, write_results
from spectra_hf.suite import get_model

SIZES = ("99M", "190M", "390M")
NAMES = [f"{family}_{size}" for family in ("TriLM", "FloatLM") for size in SIZES] + [
    f"QuantLM_{size}_4bit" for size in SIZES
]


def _perplexity(name: str) -> float:
    """A distinct, made-up value per model: larger models lower, TriLM highest."""
    model = get_model(name)
    return round(40.0 - SIZES.index(model.size) * 5 + {"trilm": 3, "floatlm": 0, "quantlm": 1}[model.family], 4)


@pytest.fixture
def results_dir(tmp_path):
    """`spectra-hf eval`-shaped results files for 9 models (3 families x 3 sizes), and one of an intermediate
    revision."""
    directory = tmp_path / "results"
    for name in NAMES:
        ppl = _perplexity(name)
        scores = {"perplexity": ppl, "bits_per_byte": ppl / 20, "nll_per_token": 1.0}
        results = build_results(model=f"suite/{name}", revision=None, perplexity=scores, perplexity_dataset="eval.txt")
        write_results(directory / name / "results.json", results)
    early = build_results(
        model="suite/TriLM_99M", revision="step100", perplexity={"perplexity": 99.0, "bits_per_byte": 9.0},
        perplexity_dataset="eval.txt",
    )  # fmt: skip
    write_results(directory / "TriLM_99M_step100.results.json", early)
    return directory


def _card(path, name: str, value: float) -> None:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    data = ModelCardData(
        model_name=name,
        eval_results=[
            EvalResult(task_type="text-generation", dataset_type="eval.txt", dataset_name="eval.txt",
                       metric_type="perplexity", metric_value=value)
        ],
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    ModelCard.from_template(data).save(path)


def test_plot_suite_draws_one_figure_per_metric_with_one_line_per_family(results_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from spectra_hf.analysis.figures import FAMILY_COLORS, suite_figure

    _card(tmp_path / "cards" / "QuantLM_99M_3bit" / "README.md", "QuantLM_99M_3bit", 41.5)
    out = tmp_path / "figures"
    assert main(["plot", "suite", str(results_dir), str(tmp_path / "cards"), "--out", str(out)]) == 0
    assert "10 models, 2 metrics" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "eval_txt_bits_per_byte.csv", "eval_txt_bits_per_byte.png", "eval_txt_perplexity.csv",
        "eval_txt_perplexity.png", "results.csv",
    ]  # fmt: skip
    everything = pd.read_csv(out / "results.csv")
    assert len(everything) == 2 * 9 + 2 + 1  # the step100 results are kept in the table, not in the figures
    shown = pd.read_csv(out / "eval_txt_perplexity.csv")
    assert len(shown) == 10 and set(shown["revision"]) == {"main"}
    for row in shown.itertuples():
        model = get_model(row.model)
        assert (row.params, row.size_bits) == (model.params, model.size_bits)  # from the registry
        expected = 41.5 if row.model == "QuantLM_99M_3bit" else _perplexity(row.model)
        assert row.value == pytest.approx(expected)

    table = collect_results([results_dir, tmp_path / "cards"])
    figure = suite_figure(plotted_rows(table).query("metric == 'eval.txt perplexity'"), "eval.txt perplexity")
    bits_axes, params_axes = figure.axes
    assert bits_axes.get_xlabel() == "model size (Gbit, as the paper counts: log scale)"
    assert params_axes.get_xlabel() == "parameters (millions, log scale)"
    assert bits_axes.get_ylabel() == params_axes.get_ylabel() == "eval.txt perplexity"
    assert bits_axes.get_xscale() == params_axes.get_xscale() == "log"
    lines = {line.get_label(): line for line in bits_axes.get_lines()}
    assert sorted(lines) == ["FloatLM", "QuantLM 3-bit", "QuantLM 4-bit", "TriLM"]
    assert [t.get_text() for t in bits_axes.get_legend().get_texts()] == [line.get_label() for line in lines.values()]
    for family, prefix in (("trilm", "TriLM"), ("floatlm", "FloatLM")):
        models = [get_model(f"{prefix}_{size}") for size in SIZES]
        assert list(lines[prefix].get_xdata()) == pytest.approx([m.size_bits / 1e9 for m in models])
        assert list(lines[prefix].get_ydata()) == pytest.approx([_perplexity(m.name) for m in models])
        assert lines[prefix].get_color() == FAMILY_COLORS[family]
    quant = [get_model(f"QuantLM_{size}_4bit") for size in SIZES]
    params_lines = {line.get_label(): line for line in params_axes.get_lines()}
    assert list(params_lines["QuantLM 4-bit"].get_xdata()) == pytest.approx([m.params / 1e6 for m in quant])
    assert list(params_lines["QuantLM 3-bit"].get_ydata()) == [41.5]
    assert "eval.txt perplexity" in figure._suptitle.get_text()


def test_plot_suite_reads_the_cards_of_a_hub_org(local_hub, tmp_path):
    pytest.importorskip("matplotlib")
    from huggingface_hub import HfApi

    api = HfApi()
    for name, value in (("TriLM_830M", 20.0), ("FloatLM_830M", 18.0), ("TriLM_830M_Unpacked", 99.0)):
        repo = f"plots-org/{name}"
        api.create_repo(repo)
        _card(tmp_path / name / "README.md", name, value)
        api.upload_file(path_or_fileobj=tmp_path / name / "README.md", path_in_repo="README.md", repo_id=repo)
    table = collect_results(org="plots-org")
    assert sorted(zip(table["model"], table["value"], strict=True)) == [("FloatLM_830M", 18.0), ("TriLM_830M", 20.0)]
    assert main(["plot", "suite", "--org", "plots-org", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "eval_txt_perplexity.png").stat().st_size > 0


def test_bad_sources_are_named(tmp_path, capsys):
    with pytest.raises(DataError, match="does not exist"):
        collect_results([tmp_path / "absent.json"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no results\.json files and no model cards"):
        collect_results([tmp_path / "empty"])
    results = build_results(model="my-model", revision=None, perplexity={"perplexity": 1.0, "bits_per_byte": 1.0},
                            perplexity_dataset="eval.txt")  # fmt: skip
    write_results(tmp_path / "results.json", results)
    with pytest.raises(DataError, match="unknown suite model 'my-model'"):
        collect_results([tmp_path / "results.json"])
    assert main(["plot", "suite"]) == 2
    assert "nothing to plot" in capsys.readouterr().err


def test_help_and_import_do_not_import_matplotlib():
    script = (
        "import sys, contextlib, io\n"
        "import spectra_hf\n"
        "from spectra_hf.cli import main\n"
        "for argv in (['--help'], ['plot', 'suite', '--help'], ['dynamics', '--help']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        main(argv)\n"
        "print(sorted(m for m in ('matplotlib', 'pandas') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_change_heatmap_title_fits_a_narrow_figure():
    """Two checkpoints make the narrowest heatmap; a Hub repo id makes a long title: it must stay on the canvas."""
    pytest.importorskip("matplotlib")
    from spectra_hf.analysis.dynamics import COLUMNS
    from spectra_hf.analysis.figures import change_heatmap

    records = [
        ("spectra-demo/TriLM_99M", f"step{step}", step, layer, "mlp.up_proj", None, "flip_fraction", 0.1, 100)
        for step in (200, 300)
        for layer in range(4)
    ]
    figure = change_heatmap(pd.DataFrame.from_records(records, columns=list(COLUMNS)))
    title = figure.axes[0].title
    figure.canvas.draw()
    box = title.get_window_extent(figure.canvas.get_renderer())
    assert "spectra-demo/TriLM_99M" in title.get_text() and "step200 to step300" in title.get_text()
    assert box.x0 >= 0 and box.x1 <= figure.bbox.width, (box, figure.bbox.width)
