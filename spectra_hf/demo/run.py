"""The demo's driver: runs the requested stages in pipeline order in one work directory, reusing finished ones."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spectra_hf.errors import ConfigError
from spectra_hf.verbosity import quiet_http_logs
from spectra_hf.workdir_lock import workdir_lock

from .config import STAGES, DemoConfig, DemoPaths, read_config
from .records import check_record, digest_of, discard_record, write_record
from .report import print_report, report_rows
from .stages import (
    stage_evaluate,
    stage_loadback,
    stage_prepare,
    stage_publish,
    stage_quantize,
    stage_train,
)

STAGE_FUNCTIONS: dict[str, Callable[[DemoPaths, DemoConfig], None]] = {
    "prepare": stage_prepare,
    "train": stage_train,
    "quantize": stage_quantize,
    "evaluate": stage_evaluate,
    "publish": stage_publish,
    "loadback": stage_loadback,
}


@dataclass
class DemoResult:
    """Seconds per stage run, the stages reused from an earlier run, and the table's rows (once loadback is done)."""

    seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


def run_demo(
    workdir: str | Path,
    *,
    stages: Sequence[str] = STAGES,
    config: DemoConfig | None = None,
    force: bool = False,
) -> DemoResult:
    """Run `stages` (in pipeline order) in `workdir`, holding its lock (one demo per work directory).

    `config` applies when `prepare` runs (default `DemoConfig()`); the other stages read the config `prepare`
    wrote, so that a stage run alone works on an earlier run's output. A stage whose record shows it finished from
    the same inputs, with its outputs unchanged (`records.py`), is reused and says so, unless `force`; with `force`
    every requested stage runs again and training starts over.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown demo stage(s) {', '.join(unknown)}: stages are {', '.join(STAGES)}")
    paths = DemoPaths(Path(workdir).expanduser().resolve())
    with workdir_lock(paths.workdir, command="spectra-hf demo"), quiet_http_logs():
        return _run_stages(paths, [s for s in STAGES if s in stages], config=config, force=force)


def _run_stages(paths: DemoPaths, selected: list[str], *, config: DemoConfig | None, force: bool) -> DemoResult:
    result = DemoResult()
    upstream: str | None = None  # what the next stage starts from: the previous stage's record digest
    for stage in STAGES[: STAGES.index(selected[-1]) + 1] if selected else ():
        if stage == "prepare":
            active = (config or DemoConfig()) if stage in selected else read_config(paths)
            upstream = digest_of(asdict(active))  # prepare starts from its settings
        else:
            active = read_config(paths)
            if stage in selected and config is not None and config != active:
                raise ConfigError(
                    f"{paths.config} holds other settings than requested: re-run the prepare stage, or drop --quick"
                )
        if stage not in selected:  # not run now: the stages after it start from its record, if that still holds
            record, _ = check_record(paths, active, stage, upstream=upstream)
            upstream = record.digest if record is not None else None
            continue
        if force:
            print(f"== {stage} (--force) ==", flush=True)
            if stage == "train":
                shutil.rmtree(paths.runs, ignore_errors=True)  # --force: training starts over
        else:
            record, why = check_record(paths, active, stage, upstream=upstream)
            if record is not None:
                print(
                    f"== {stage}: reused: finished earlier from the same inputs, its {len(record.files)} output files "
                    "unchanged (sha256); --force runs it again ==",
                    flush=True,
                )
                result.reused.append(stage)
                upstream = record.digest
                if stage == "loadback":
                    print_report(paths, active)
                continue
            print(f"== {stage} ({why}) ==", flush=True)
        discard_record(paths, stage)  # an interrupted stage is never taken as finished
        started = time.perf_counter()
        STAGE_FUNCTIONS[stage](paths, active)
        result.seconds[stage] = time.perf_counter() - started
        upstream = write_record(paths, active, stage, upstream=upstream or "").digest
        print(f"== {stage}: {result.seconds[stage]:.1f} s ==", flush=True)
    if "loadback" in selected:
        result.rows = report_rows(paths, read_config(paths))
    return result


def describe_seconds(result: DemoResult) -> str:
    """One line: the time of each stage run, and the stages reused."""
    parts = [f"{stage} {seconds:.0f} s" for stage, seconds in result.seconds.items()]
    parts += [f"{stage} reused" for stage in result.reused]
    return "stage times: " + ", ".join(parts)
