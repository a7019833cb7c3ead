"""PNG figures of checkpoint dynamics and of the suite's headline comparisons (matplotlib, the `plot` extra).

Figures are built on `matplotlib.figure.Figure` with the Agg canvas directly, never through pyplot: no global state,
no GUI backend, whatever backend the caller's session uses. Every function returns the Figure, so tests can read
its axes, lines and labels; `save_figure` writes one as PNG atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spectra_hf.analysis.output import write_atomic
from spectra_hf.errors import DataError, MissingDependencyError

# One colour per family in every figure; QuantLM bit widths are shades of its colour (darker = more bits).
FAMILY_COLORS = {"trilm": "#d62728", "floatlm": "#1f77b4", "quantlm": "#2ca02c"}
QUANTLM_BIT_COLORS = {3: "#98df8a", 4: "#5cb85c", 6: "#2ca02c", 8: "#1a6b1a"}
FAMILY_LABELS = {"trilm": "TriLM", "floatlm": "FloatLM", "quantlm": "QuantLM"}
STATISTIC_AXES = {
    "flip_fraction": "weights whose ternary state changed\nsince the previous checkpoint (%)",
    "relative_change": "relative change of the weights since\nthe previous checkpoint, ||ΔW|| / ||W|| (%)",
}


def require_matplotlib() -> None:
    """Raise MissingDependencyError naming the extra when matplotlib is not installed (call before long work)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise MissingDependencyError(
            'figures need matplotlib, which is not installed: pip install "spectra-hf[plot]"'
        ) from error


def new_figure(*, width: float = 7.0, height: float = 4.5) -> Any:
    """An empty Figure on the Agg canvas; MissingDependencyError naming the extra when matplotlib is absent."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Any, path: str | Path, *, dpi: int = 120) -> Path:
    """Write `figure` as PNG to `path` (a temporary name in the same folder, then renamed)."""
    return write_atomic(Path(path), lambda staging: figure.savefig(staging, format="png", dpi=dpi))


# ---- checkpoint dynamics -------------------------------------------------------------------------------------------


def _revision_order(frame: Any) -> list[tuple[str, Any]]:
    """(revision, step) pairs of `frame` in the order they were analysed."""
    pairs = frame[["revision", "step"]].drop_duplicates()
    return [(row.revision, row.step) for row in pairs.itertuples(index=False)]


def _span(frame: Any) -> str:
    order = _revision_order(frame)
    return order[0][0] if len(order) == 1 else f"{order[0][0]} to {order[-1][0]}"


def _x_axis(order: list[tuple[str, Any]]) -> tuple[list[float], list[str] | None, str]:
    """x positions for revisions: their steps when every revision has one, else 0, 1, 2, ... with names."""
    import pandas as pd

    if all(not pd.isna(step) for _, step in order):
        return [float(step) for _, step in order], None, "training step (optimizer steps)"
    return [float(i) for i in range(len(order))], [name for name, _ in order], "revision (in step order)"


def _weighted(frame: Any, statistic: str, by: list[str]) -> Any:
    """Mean of `statistic` over the rows sharing `by`, weighted by each matrix's weight count (a share of all the
    weights of a layer, not a mean of per-matrix shares)."""
    rows = frame[frame["statistic"] == statistic].copy()
    rows["weighted"] = rows["value"] * rows["numel"].astype(float)
    grouped = rows.groupby(by, sort=False)[["weighted", "numel"]].sum()
    return grouped["weighted"] / grouped["numel"].astype(float)


def change_heatmap(frame: Any, *, statistic: str = "flip_fraction") -> Any:
    """Layer x step heatmap of `statistic` (flip_fraction for TriLM, relative_change for FloatLM), in percent.

    Each cell is the change from the previous checkpoint to the column's checkpoint, over all seven projections of
    the layer (weighted by their sizes)."""
    import numpy as np

    values = _weighted(frame, statistic, ["layer", "revision"]) * 100.0
    if values.empty:
        raise DataError(f"no {statistic} rows: a heatmap of changes needs at least two revisions")
    table = values.unstack("revision")
    columns = [name for name, _ in _revision_order(frame) if name in table.columns]
    table = table[columns].sort_index()
    figure = new_figure(width=max(6.0, 1.0 + 0.6 * len(columns)), height=max(3.5, 1.5 + 0.25 * len(table)))
    axes = figure.add_subplot()
    image = axes.imshow(np.asarray(table, dtype=float), aspect="auto", origin="lower", cmap="viridis")
    axes.set_xticks(range(len(columns)), columns, rotation=45 if len(columns) > 6 else 0)
    axes.set_yticks(range(len(table)), [str(layer) for layer in table.index])
    axes.set_xlabel("checkpoint (change since the previous one)")
    axes.set_ylabel("decoder layer")
    figure.colorbar(image, ax=axes, label=STATISTIC_AXES.get(statistic, f"{statistic} (%)"))
    what = "ternary flips" if statistic.startswith("flip") else "weight change"
    # two lines: with few checkpoints the figure is narrow, and a one-line title ran past both edges
    axes.set_title(f"{frame['model'].iloc[0]}\n{what} per layer, {_span(frame)}")
    return figure


def weight_curves(frame: Any) -> Any:
    """TriLM: zero fraction and mean scale per projection over steps; FloatLM: weight norm per projection."""
    order = _revision_order(frame)
    xs, labels, xlabel = _x_axis(order)
    ternary = (frame["statistic"] == "zero_fraction").any()
    panels = (
        [("zero_fraction", "zero weights, share of the matrix (%)", 100.0, True),
         ("scale", "scale g, mean over layers and shards (weight units)", 1.0, False)]
        if ternary
        else [("weight_norm", "Frobenius norm ||W||, mean over layers", 1.0, False)]
    )  # fmt: skip
    figure = new_figure(width=6.0 * len(panels), height=4.5)
    for column, (statistic, ylabel, factor, weighted) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), column + 1)
        rows = frame[frame["statistic"] == statistic]
        if weighted:
            values = _weighted(frame, statistic, ["projection", "revision"])
        else:
            values = rows.groupby(["projection", "revision"], sort=False)["value"].mean()
        for projection in rows["projection"].drop_duplicates():
            series = values.loc[projection]
            ys = [float(series.get(name, float("nan"))) * factor for name, _ in order]
            axes.plot(xs, ys, marker="o", label=projection.split(".")[-1])
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        if labels is not None:
            axes.set_xticks(xs, labels)
        axes.grid(alpha=0.3)
        axes.legend(title="projection", fontsize="small")
    title = "sparsity and scales" if ternary else "weight norms"
    figure.suptitle(f"{frame['model'].iloc[0]}: {title}, {_span(frame)}")
    return figure


def loss_curve(frame: Any) -> Any:
    """Loss (nats per token) on the --text over steps, each point labelled with its perplexity."""
    order = _revision_order(frame)
    xs, labels, xlabel = _x_axis(order)
    loss = frame[frame["statistic"] == "loss"].set_index("revision")["value"]
    ppl = frame[frame["statistic"] == "perplexity"].set_index("revision")["value"]
    if loss.empty:
        raise DataError("no loss rows: run dynamics with --text FILE to get a loss curve")
    kept = [(x, name) for x, (name, _) in zip(xs, order, strict=True) if name in loss.index]
    figure = new_figure()
    axes = figure.add_subplot()
    axes.plot([x for x, _ in kept], [float(loss[name]) for _, name in kept], marker="o", color="black", label="loss")
    for x, name in kept:
        axes.annotate(f"ppl {float(ppl[name]):.1f}", (x, float(loss[name])), textcoords="offset points",
                      xytext=(4, 6), fontsize="small")  # fmt: skip
    axes.set_xlabel(xlabel)
    axes.set_ylabel("loss on the text (nats per token)")
    axes.margins(x=0.1)  # room for the last point's label
    if labels is not None:
        axes.set_xticks(xs, labels)
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title(f"{frame['model'].iloc[0]}: loss, {_span(frame)}")
    return figure


def dynamics_figures(frame: Any) -> dict[str, Any]:
    """File name -> Figure for every figure `frame` has data for."""
    figures: dict[str, Any] = {}
    statistic = "flip_fraction" if (frame["statistic"] == "flip_fraction").any() else "relative_change"
    if (frame["statistic"] == statistic).any():
        figures[f"{statistic}_heatmap.png"] = change_heatmap(frame, statistic=statistic)
    if frame["statistic"].isin(["zero_fraction", "weight_norm"]).any():
        figures["sparsity_scales.png" if statistic == "flip_fraction" else "weight_norms.png"] = weight_curves(frame)
    if (frame["statistic"] == "loss").any():
        figures["loss.png"] = loss_curve(frame)
    return figures


# ---- the suite's headline comparisons ------------------------------------------------------------------------------


def series_label(family: str, bits: Any) -> str:
    import pandas as pd

    return FAMILY_LABELS[family] + ("" if pd.isna(bits) else f" {int(bits)}-bit")


def series_color(family: str, bits: Any) -> str:
    import pandas as pd

    return FAMILY_COLORS[family] if pd.isna(bits) else QUANTLM_BIT_COLORS.get(int(bits), FAMILY_COLORS[family])


def suite_figure(table: Any, metric: str) -> Any:
    """`metric` against size in bits (left) and parameter count (right), log x, one line per family (QuantLM: one
    per bit width), from a `spectra_hf.analysis.suite_results.collect_results` table."""
    rows = table[table["metric"] == metric]
    rank = rows["family"].map({family: i for i, family in enumerate(FAMILY_COLORS)})
    rows = rows.assign(_rank=rank).sort_values(["_rank", "bits", "params"])  # legend: TriLM, FloatLM, QuantLM 3..8
    if rows.empty:
        raise DataError(f"no results for metric {metric!r}")
    figure = new_figure(width=12.0, height=4.5)
    x_axes = [
        ("size_gbit", "model size (Gbit, as the paper counts: log scale)"),
        ("params_m", "parameters (millions, log scale)"),
    ]
    for column, (x, xlabel) in enumerate(x_axes):
        axes = figure.add_subplot(1, 2, column + 1)
        for (family, bits), series in rows.groupby(["family", "bits"], dropna=False, sort=False):
            axes.plot(series[x], series["value"], marker="o", color=series_color(family, bits),
                      label=series_label(family, bits))  # fmt: skip
        axes.set_xscale("log")
        axes.set_xlim(rows[x].min() / 1.6, rows[x].max() * 1.6)  # a single size still shows as a point mid-axis
        axes.set_xlabel(xlabel)
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3, which="both")
        axes.legend(title="family")
    figure.suptitle(f"{metric} across the suite ({rows['model'].nunique()} models)")
    return figure

