"""The demo's table: sizes and perplexities of the untrained baselines and of every model loaded back."""

from __future__ import annotations

import json
from typing import Any

from spectra_hf.suite import FLOAT_BITS, TERNARY_BITS, get_model

from .config import LOADBACK_FILE, DemoConfig, DemoPaths, require, untrained_name


def report_rows(paths: DemoPaths, config: DemoConfig) -> list[dict[str, Any]]:
    """The table: untrained baselines (local), then every model loaded back from the Hub, with its size in bits as
    the paper counts it (`spectra_hf.suite.size_bits`; a QuantLM at the effective bits its export records, which
    include a group size lowered to fit the demo's narrow layers)."""
    from spectra_hf.checkpoints.exports import read_export_info
    from spectra_hf.checkpoints.io import read_config
    from spectra_hf.suite import size_bits

    trilm, floatlm = read_config(paths.init(config.name("trilm"))), read_config(paths.init(config.name("floatlm")))
    sizes = {
        config.name("trilm"): size_bits(trilm, bits_per_linear_weight=TERNARY_BITS),
        get_model(config.name("trilm")).unpacked_name: size_bits(trilm, bits_per_linear_weight=TERNARY_BITS),
        config.name("floatlm"): size_bits(floatlm, bits_per_linear_weight=FLOAT_BITS),
    }
    for name in config.quantlm_names:
        effective = read_export_info(require(paths.suite / name, "quantize")).extra["effective_bits_per_weight"]
        sizes[name] = size_bits(floatlm, bits_per_linear_weight=effective)
    rows = []
    for family in ("trilm", "floatlm"):
        name = config.name(family)
        scores = json.loads(require(paths.eval(untrained_name(name)), "evaluate").read_text())["perplexity"]
        rows.append(
            {"name": untrained_name(name), "revision": "-", "where": "local", **scores, "size_bits": sizes[name]}
        )
    for row in json.loads(require(paths.loadback, "loadback").read_text(encoding="utf-8"))["models"]:
        rows.append({**row, "where": "local Hub", "size_bits": sizes[row["name"]]})
    return rows


def print_report(paths: DemoPaths, config: DemoConfig) -> None:
    rows = report_rows(paths, config)
    header = f"{'model':<28} {'revision':<9} {'size (Mbit)':>11} {'perplexity':>10} {'bits/byte':>9}  from"
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        print(
            f"{row['name']:<28} {row['revision']:<9} {row['size_bits'] / 1e6:>11.3f} {row['perplexity']:>10.2f} "
            f"{row['bits_per_byte']:>9.3f}  {row['where']}"
        )
    for row in rows:
        if "sample" in row:
            print(f"\nsample from {row['repo_id']} (top-k 40, temperature 0.8): {row['sample']!r}")
    print(
        f"\nwritten under {paths.workdir}:\n"
        f"  data/, tokenizer/     corpus ({paths.train_text.name}, {paths.eval_text.name}) and BPE tokenizer\n"
        f"  runs/                 resumable Trainer checkpoints (an interrupted demo resumes from them)\n"
        f"  suite/                release exports and checkpoints/step<N> (spectra_hf.checkpoints.exports layout)\n"
        f"  eval/                 perplexity results (spectra-hf eval format, in the cards' model-index)\n"
        f"  hub/                  the local Hub: serve it with `spectra-hf hub serve --root {paths.hub}`\n"
        f"  stages/               what each finished stage wrote (sha256), so a re-run reuses it\n"
        f"  {LOADBACK_FILE:<21} what the load-back process measured"
    )
