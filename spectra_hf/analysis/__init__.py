"""Analysis of the suite: checkpoint dynamics across revisions and the paper's headline comparisons as figures.

- `dynamics`: `checkpoint_dynamics(model)` -> a tidy pandas table of per-layer statistics at every revision (flips,
  digit fractions, scales counted on packed bytes; weight norms; loss), `write_dynamics` -> CSV, Parquet and PNGs;
- `packed_counts`: digit and flip counts straight from packed 1.6-bit bytes (numpy);
- `suite_results`: evaluation results and model cards gathered into one table, `plot_suite` -> a figure per metric;
- `figures`: the matplotlib figures (the optional `plot` extra), on the Agg canvas.

Nothing here is imported by `import spectra_hf` or by `spectra-hf --help`.
"""
