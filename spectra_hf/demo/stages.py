"""The demo's stages: each reads the previous stages' output from the work directory and writes its own.

    prepare    corpus from local text (spectra_hf.testing.corpus), a BPE tokenizer, untrained TriLM / FloatLM
               (the baseline)
    train      SpectraTrainer on both with the paper's recipes (scaled down), checkpoints as suite exports;
               resumes from the newest complete checkpoint of an interrupted run of the same settings
    quantize   GPTQ QuantLMs of the trained FloatLM (spectra_hf.quantization.gptq)
    evaluate   perplexity of every local export and of the untrained models (spectra-hf eval results files)
    publish    a local Hub server on 127.0.0.1, every repo / branch / card published to it (spectra_hf.hub.publish)
    loadback   a fresh process loads each repo back with `from_pretrained(repo, revision=...)` from the local Hub,
               generates a sample and scores perplexity (`loadback.py`); the table (`report.py`)

Whether a stage needs to run at all is decided by the driver (`run.py`) from the stage records (`records.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from typing import Any

from spectra_hf.errors import CheckpointError
from spectra_hf.suite import get_model

from .config import DemoConfig, DemoPaths, require, untrained_name
from .records import digest_of, fingerprint, stage_outputs
from .report import print_report

# Keys of the bundled paper recipes that name the full-scale data; the demo trains on its local corpus instead.
_FULL_SCALE_DATA_KEYS = ("dataset_name", "dataset_config", "streaming", "tokenizer")
# In runs/: the digest of the prepare stage's outputs the training runs there started from; a run resumes only
# from the same inputs.
RUNS_INPUTS_FILE = "inputs.json"


def _logger():
    """transformers' logger for this module (imported on use: `spectra-hf --help` imports this package)."""
    from transformers.utils import logging as transformers_logging

    return transformers_logging.get_logger(__name__)


def stage_prepare(paths: DemoPaths, config: DemoConfig) -> None:
    """Corpus, tokenizer and the untrained TriLM / FloatLM."""
    import torch
    from transformers import AutoModelForCausalLM

    from spectra_hf.checkpoints.exports import atomic_directory
    from spectra_hf.evaluation.text_perplexity import load_texts
    from spectra_hf.suite import config_for
    from spectra_hf.testing.corpus import local_corpus, train_tokenizer, write_corpus

    paths.workdir.mkdir(parents=True, exist_ok=True)
    write_corpus(local_corpus(), paths.data)
    tokenizer = train_tokenizer(load_texts(str(paths.train_text)), vocab_size=config.vocab_size)  # held-out text unseen
    with atomic_directory(paths.tokenizer) as staging:
        tokenizer.save_pretrained(staging)
    for family in ("trilm", "floatlm"):
        name = config.name(family)
        torch.manual_seed(config.seed)
        model = AutoModelForCausalLM.from_config(config_for(name, tiny=True, **config.architecture(len(tokenizer))))
        with atomic_directory(paths.init(name)) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    paths.config.write_text(json.dumps(asdict(config), indent=2) + "\n", encoding="utf-8")


def _resumable_runs(paths: DemoPaths, config: DemoConfig) -> bool:
    """Whether runs/ holds training runs started from the prepare outputs now on disk (else it is cleared and its
    inputs recorded, so that an interrupted run can be resumed by the next one)."""
    inputs = digest_of(fingerprint(stage_outputs("prepare", paths, config), root=paths.workdir))
    marker = paths.runs / RUNS_INPUTS_FILE
    try:
        if json.loads(marker.read_text(encoding="utf-8"))["inputs"] == inputs:
            return True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    shutil.rmtree(paths.runs, ignore_errors=True)
    for family in ("trilm", "floatlm"):  # no stale checkpoint branches from an earlier run
        shutil.rmtree(paths.suite / config.name(family), ignore_errors=True)
    paths.runs.mkdir(parents=True)
    marker.write_text(json.dumps({"inputs": inputs}) + "\n", encoding="utf-8")
    return False


def stage_train(paths: DemoPaths, config: DemoConfig) -> None:
    """SpectraTrainer on TriLM and FloatLM: the paper's recipe of `config.size`, on the local corpus, scaled down.

    Runs in runs/ started from the same prepare outputs are resumed from their newest complete checkpoint (a run
    already at max_steps trains nothing); otherwise training starts over.
    """
    from spectra_hf.training import train
    from spectra_hf.training.arguments import read_recipe
    from spectra_hf.training.resume import complete_checkpoints

    resumable = _resumable_runs(paths, config)
    for family in ("trilm", "floatlm"):
        name = config.name(family)
        recipe = {k: v for k, v in read_recipe(name).items() if k not in _FULL_SCALE_DATA_KEYS}
        recipe.update(
            model=name,
            model_path=str(require(paths.init(name), "prepare")),
            tokenizer=str(require(paths.tokenizer, "prepare")),
            data_files=[str(require(paths.train_text, "prepare"))],
            block_size=config.block_size,
            global_batch_size=config.batch_size,
            per_device_train_batch_size=config.batch_size,
            max_steps=config.max_steps,
            save_steps=config.save_steps,
            checkpoint_spacing="steps",
            logging_steps=max(1, config.max_steps // 6),
            ternary_stats=False,  # keeps the demo's console readable; `spectra-hf train` logs them
            output_dir=str(paths.run(name)),
            suite_dir=str(paths.suite),
            export_name=name,
            seed=config.seed,
            report_to="none",
            save_total_limit=1,
            resume_from_checkpoint=resumable,
        )
        if family == "floatlm" and config.floatlm_learning_rate is not None:
            recipe["learning_rate"] = config.floatlm_learning_rate
        done = complete_checkpoints(paths.run(name)) if resumable else []
        what = f"{config.max_steps} steps of {config.batch_size} x {config.block_size} tokens"
        if done:
            print(f"training {name} ({what}): resuming from {done[-1].name}, an interrupted run's newest checkpoint")
        else:
            print(f"training {name} ({what})")
        train(recipe)


def stage_quantize(paths: DemoPaths, config: DemoConfig) -> None:
    """GPTQ QuantLMs of the trained FloatLM at `config.quant_bits`, calibrated on the training text."""
    from spectra_hf.quantization.gptq import export_quantlms

    floatlm = require(paths.suite / config.name("floatlm"), "train")
    export_quantlms(
        floatlm,
        paths.suite,
        calibration=require(paths.train_text, "prepare"),
        bits=config.quant_bits,
        samples=config.calibration_samples,
        length=config.block_size,
        seed=config.seed,
        size=config.size,
    )


def stage_evaluate(paths: DemoPaths, config: DemoConfig) -> None:
    """Perplexity of the untrained and the exported models on the held-out text; one results file each."""
    from tqdm.auto import tqdm

    from spectra_hf.evaluation.pretrained import load_pretrained
    from spectra_hf.evaluation.results import build_results, write_results
    from spectra_hf.evaluation.text_perplexity import load_texts, perplexity

    texts = load_texts(str(require(paths.eval_text, "prepare")), max_documents=config.eval_documents)
    targets = {untrained_name(config.name(f)): paths.init(config.name(f)) for f in ("trilm", "floatlm")}
    producer = {name: "quantize" if name in config.quantlm_names else "train" for name in config.release_names}
    targets |= {name: require(paths.suite / name, producer[name]) for name in config.release_names}
    for name, directory in tqdm(targets.items(), desc="evaluate", unit="model"):
        model, tokenizer = load_pretrained(directory)
        scores = perplexity(
            model,
            tokenizer,
            texts,
            max_length=config.block_size,
            batch_size=config.eval_batch_size,
            show_progress=False,
        )
        results = build_results(
            model=str(directory), revision=None, perplexity=scores, perplexity_dataset=str(paths.eval_text)
        )
        write_results(paths.eval(name), results)


def stage_publish(paths: DemoPaths, config: DemoConfig) -> None:
    """Start a local Hub on a free port and publish every export, its checkpoint branches and cards to it."""
    from spectra_hf.evaluation.results import read_results
    from spectra_hf.hub.localhub import LocalHub
    from spectra_hf.hub.plan import build_plan
    from spectra_hf.hub.publish import publish

    evals = {name: read_results(paths.eval(name)) for name in config.release_names if paths.eval(name).is_file()}
    plan = build_plan(require(paths.suite, "train"), org=config.org, evals=evals, models=config.release_names)
    with LocalHub(paths.hub) as hub:
        _logger().info(
            f"demo: publishing to its own local Hub at {hub.url} (store {paths.hub}), not to a configured Hub"
        )
        report = publish(plan, endpoint=hub.url)
    print(f"published to the local Hub in {paths.hub}: {report.summary()}")


def loadback_targets(paths: DemoPaths, config: DemoConfig) -> list[dict[str, Any]]:
    """Repo / revision pairs to load back: every branch of TriLM and FloatLM, the unpacked TriLM, the QuantLMs."""
    from spectra_hf.checkpoints.exports import checkpoint_steps

    targets: list[dict[str, Any]] = []
    for family in ("trilm", "floatlm"):
        name = config.name(family)
        steps = checkpoint_steps(paths.suite, name)
        targets += [{"name": name, "revision": f"step{step}"} for step in steps if step < config.max_steps]
        targets.append({"name": name, "revision": "main", "generate": True})
    targets.append({"name": get_model(config.name("trilm")).unpacked_name, "revision": "main"})
    targets += [{"name": name, "revision": "main"} for name in config.quantlm_names]
    for target in targets:
        target["repo_id"] = f"{config.org}/{target['name']}"
    return targets


def stage_loadback(paths: DemoPaths, config: DemoConfig) -> None:
    """Serve the published Hub again and load every repo back in a fresh process, as a user would; print the table."""
    from spectra_hf.hub.localhub import LocalHub

    require(paths.hub, "publish")
    spec = paths.workdir / ".loadback_spec.json"
    spec.write_text(
        json.dumps(
            {
                "targets": loadback_targets(paths, config),
                "eval_text": str(require(paths.eval_text, "prepare")),
                "eval_documents": config.eval_documents,
                "max_length": config.block_size,
                "batch_size": config.eval_batch_size,
                "out": str(paths.loadback),
            }
        ),
        encoding="utf-8",
    )
    with LocalHub(paths.hub) as hub:
        _logger().info(f"demo: serving its local Hub store {paths.hub} at {hub.url} for the load-back process")
        # huggingface_hub reads HF_ENDPOINT at import: a new process is how a user would point at this Hub
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env |= {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(paths.hf_home)}
        completed = subprocess.run([sys.executable, "-m", "spectra_hf.demo.loadback", str(spec)], env=env)
    if completed.returncode != 0:
        raise CheckpointError(f"loading the published models back failed (exit code {completed.returncode}); see above")
    print_report(paths, config)
