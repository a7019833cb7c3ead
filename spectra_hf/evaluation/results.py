"""The results file of `spectra-hf eval`, shaped so model cards can put it into their `model-index`.

    {
      "model": "SpectraSuite/TriLM_99M_Unpacked",      what was evaluated (directory or repo id)
      "revision": "main",
      "perplexity": {"dataset": ..., "perplexity": ..., "bits_per_byte": ..., ...},   when perplexity was run
      "tasks": {"arc_easy": {"acc": 0.41, "acc_norm": 0.38}, ...},                     when lm-eval tasks were run
      "model_index": [ {task_type, task_name, dataset_type, dataset_name, dataset_config, dataset_split,
                        metric_type, metric_name, metric_value}, ... ],
      "versions": {"spectra_hf": ..., "lm_eval": ...}
    }

Each `model_index` row holds exactly keyword arguments of `huggingface_hub.EvalResult`:
`[EvalResult(**row) for row in read_results(path)["model_index"]]`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from spectra_hf.errors import ConfigError, DataError

PERPLEXITY_METRICS = ("perplexity", "bits_per_byte")


def perplexity_rows(scores: dict[str, Any], *, dataset: str, split: str | None = None) -> list[dict[str, Any]]:
    """model-index rows of a `spectra_hf.evaluation.text_perplexity.perplexity` result on `dataset` (a local file or a
    dataset id).

    A local file is named by its file name only: its path means nothing on the Hub.
    """
    name = Path(dataset).name if Path(dataset).expanduser().exists() else dataset
    return [
        {
            "task_type": "text-generation",
            "task_name": "Language modeling",
            "dataset_type": name,
            "dataset_name": name,
            "dataset_config": None,
            "dataset_split": split,
            "metric_type": metric,
            "metric_name": metric.replace("_", " ").capitalize(),
            "metric_value": round(float(scores[metric]), 4),
        }
        for metric in PERPLEXITY_METRICS
    ]


def harness_rows(output: dict[str, Any]) -> list[dict[str, Any]]:
    """model-index rows of a `spectra_hf.evaluation.harness.run_harness` output (zero-shot unless n-shot says
    otherwise)."""
    rows = []
    for task, metrics in output["metrics"].items():
        config = output.get("configs", {}).get(task, {})
        shots = output.get("n-shot", {}).get(task, 0)
        for metric, value in metrics.items():
            rows.append(
                {
                    "task_type": "text-generation",
                    "task_name": task,
                    "dataset_type": config.get("dataset_path") or task,
                    "dataset_name": task,
                    "dataset_config": config.get("dataset_name"),
                    "dataset_split": config.get("test_split") or config.get("validation_split"),
                    "metric_type": metric,
                    "metric_name": f"{metric} ({shots}-shot)",
                    "metric_value": round(value, 4),
                }
            )
    return rows


def build_results(
    *,
    model: str,
    revision: str | None,
    perplexity: dict[str, Any] | None = None,
    perplexity_dataset: str | None = None,
    perplexity_split: str | None = None,
    harness: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The results document (module docstring) of a perplexity run and / or an lm-eval run."""
    from spectra_hf import __version__

    results: dict[str, Any] = {"model": model, "revision": revision or "main", "model_index": []}
    versions: dict[str, str | None] = {"spectra_hf": __version__}
    if perplexity is not None:
        if perplexity_dataset is None:
            raise ConfigError(
                "build_results: perplexity_dataset (a local file or a dataset id) is required with perplexity"
            )
        results["perplexity"] = {"dataset": perplexity_dataset, "split": perplexity_split, **perplexity}
        results["model_index"] += perplexity_rows(perplexity, dataset=perplexity_dataset, split=perplexity_split)
    if harness is not None:
        results["tasks"] = harness["metrics"]
        results["model_index"] += harness_rows(harness)
        versions["lm_eval"] = harness.get("lm_eval_version")
    results["versions"] = versions
    return results


def write_results(path: str | Path, results: dict[str, Any]) -> Path:
    """Write `results` as JSON, atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    """A results file written by `spectra-hf eval`, checked to have its `model_index` rows."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"eval results file {path} does not exist: run `spectra-hf eval ... --output {path}`")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"eval results file {path} is not valid JSON ({error}); re-run spectra-hf eval") from error
    if not isinstance(results, dict) or not isinstance(results.get("model_index"), list):
        raise DataError(f"{path} is not a spectra-hf eval results file: it has no model_index list")
    return results
