"""lm-evaluation-harness on a model object, with the paper's zero-shot tasks as a preset and local task files.

Needs the optional extra `eval` (`pip install "spectra-hf[eval]"`, which installs lm-eval). Built-in tasks read
their datasets from the Hub (or the datasets cache); a task file (YAML or JSON, lm-eval's task config format)
whose `dataset_path` is "json" / "csv" / "parquet" with local `dataset_kwargs.data_files` runs offline. Relative
data files are resolved against the task file's folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spectra_hf.errors import ConfigError, DataError, MissingDependencyError

# The paper's zero-shot evaluation (arXiv 2407.12327; lm-evaluation-harness 0.4.x).
PAPER_TASKS: tuple[str, ...] = (
    "arc_easy",
    "arc_challenge",
    "hellaswag",
    "boolq",
    "piqa",
    "winogrande",
    "lambada_openai",
    "sciq",
    "logiqa",
    "mmlu_continuation",
    "triviaqa",
    "crows_pairs_english",
    "truthfulqa_mc1",
)
PRESETS: dict[str, tuple[str, ...]] = {"spectra": PAPER_TASKS}
TASK_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def _require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError as error:
        raise MissingDependencyError(
            'lm-evaluation-harness is not installed: pip install "spectra-hf[eval]"'
        ) from error


def _absolute_data_files(data_files: Any, base: Path) -> Any:
    if isinstance(data_files, str):
        path = Path(data_files).expanduser()
        return str(path if path.is_absolute() else (base / path).resolve())
    if isinstance(data_files, list):
        return [_absolute_data_files(item, base) for item in data_files]
    if isinstance(data_files, dict):
        return {split: _absolute_data_files(files, base) for split, files in data_files.items()}
    return data_files


def load_task_file(path: str | Path) -> dict[str, Any]:
    """An lm-eval task config from a YAML or JSON file, its local data files made absolute."""
    path = Path(path).expanduser().resolve()
    if path.suffix == ".json":
        config = json.loads(path.read_text(encoding="utf-8"))
    else:
        from lm_eval.tasks._yaml_loader import load_yaml

        config = load_yaml(path)
    if not isinstance(config, dict) or "task" not in config:
        raise ConfigError(f"task file {path} must hold one lm-eval task config with a 'task' name")
    dataset_kwargs = config.get("dataset_kwargs") or {}
    if "data_files" in dataset_kwargs:
        config["dataset_kwargs"] = {
            **dataset_kwargs,
            "data_files": _absolute_data_files(dataset_kwargs["data_files"], path.parent),
        }
    return config


def resolve_tasks(specs: Sequence[str | dict[str, Any]], *, task_manager: Any = None) -> list[str | dict[str, Any]]:
    """Expand presets, read task files and check task names, before any model work starts.

    Each spec is a preset name (`spectra`: the paper's 13 tasks), an lm-eval task / group / tag name, a path to
    a task file, or a task config dict.
    """
    _require_lm_eval()
    from lm_eval.tasks import TaskManager

    resolved: list[str | dict[str, Any]] = []
    known: set[str] | None = None
    for spec in specs:
        if isinstance(spec, dict):
            resolved.append(spec)
        elif spec in PRESETS:
            resolved.extend(PRESETS[spec])
        elif spec.endswith(TASK_FILE_SUFFIXES):
            if not Path(spec).expanduser().is_file():
                raise ConfigError(f"task file {spec} does not exist")
            resolved.append(load_task_file(spec))
        else:
            if known is None:
                known = set((task_manager or TaskManager()).all_tasks)
            if spec not in known:
                raise ConfigError(
                    f"unknown task {spec!r}: use a preset ({', '.join(PRESETS)}), an lm-eval task name "
                    "(`lm-eval ls tasks`), or a task file (.yaml/.json)"
                )
            resolved.append(spec)
    if not resolved:
        raise ConfigError("no tasks given")
    return resolved


def _metric_name(key: str) -> str:
    metric, _, filter_name = key.partition(",")
    return metric if filter_name in ("", "none") else f"{metric} ({filter_name})"


def flatten_results(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """lm-eval's `results` section -> {task: {metric: value}}, numbers only, without standard errors."""
    flat: dict[str, dict[str, float]] = {}
    for task, values in results.items():
        metrics = {
            _metric_name(key): float(value)
            for key, value in values.items()
            if "_stderr" not in key
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and key not in ("sample_len", "samples")
            and not (isinstance(value, float) and math.isnan(value))
        }
        if metrics:
            flat[task] = metrics
    return flat


def run_harness(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str | dict[str, Any]],
    *,
    batch_size: int = 1,
    num_fewshot: int = 0,
    limit: int | float | None = None,
) -> dict[str, Any]:
    """Run lm-eval tasks on a model object; zero-shot by default, as the paper evaluated.

    Returns lm-eval's output with `metrics` ({task: {metric: value}}, see `flatten_results`) added.
    """
    _require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager()
    resolved = resolve_tasks(tasks, task_manager=task_manager)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    try:
        output = simple_evaluate(
            model=lm,
            tasks=resolved,
            num_fewshot=num_fewshot,
            limit=limit,
            bootstrap_iters=0,
            log_samples=False,
            task_manager=task_manager,
        )
    except (ConnectionError, FileNotFoundError) as error:
        raise DataError(
            f"an lm-eval task could not load its dataset ({error}); built-in tasks need the Hub or the datasets "
            "cache: offline, use a task file with local data_files"
        ) from error
    output["metrics"] = flatten_results(output["results"])
    return output
