"""The end-to-end demo: the whole suite pipeline, scaled down, on one machine, offline, in minutes.

    config.py    DemoConfig (the settings) and DemoPaths (the layout below)
    stages.py    the six stages: prepare, train, quantize, evaluate, publish, loadback
    loadback.py  the fresh process that loads every published repo back from the local Hub
    report.py    the table of sizes and perplexities
    records.py   stage records: when a stage counts as finished (the sha256 of what it wrote), checked on reuse
    run.py       run_demo: the requested stages in order, under the work directory's lock, reusing finished ones

Work directory layout:

    WORKDIR/demo_config.json     the settings of this demo (written by prepare, read by the other stages)
    WORKDIR/data/                train.txt, eval.txt (one document per line)
    WORKDIR/tokenizer/
    WORKDIR/init/<name>/         the untrained models training starts from
    WORKDIR/runs/<name>/         Trainer checkpoints: an interrupted demo resumes from the newest complete one
    WORKDIR/suite/               the suite directory (spectra_hf.checkpoints.exports layout) that publishing reads
    WORKDIR/eval/<name>.json     perplexity results (spectra_hf.evaluation.results), fed into the cards' model-index
    WORKDIR/hub/                 the local Hub's storage (`spectra-hf hub serve --root WORKDIR/hub` serves it again)
    WORKDIR/loadback.json        what the load-back process measured
    WORKDIR/stages/<stage>.json  what each finished stage wrote (records.py)

This package imports only light modules: `spectra-hf --help` imports it, the stages import the heavy ones inside.
"""

from __future__ import annotations

from .config import CONFIG_FILE, LOADBACK_FILE, STAGES, DemoConfig, DemoPaths
from .report import print_report, report_rows
from .run import DemoResult, run_demo

__all__ = [
    "CONFIG_FILE",
    "LOADBACK_FILE",
    "STAGES",
    "DemoConfig",
    "DemoPaths",
    "DemoResult",
    "print_report",
    "report_rows",
    "run_demo",
]
