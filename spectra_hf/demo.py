"""The end-to-end demo: the whole suite pipeline, scaled down, on one machine, offline, in minutes.

Stages (each reads the previous stages' output from the work directory, so any of them can run alone):

    prepare    corpus from local text (spectra_hf.testing.corpus), a BPE tokenizer, untrained TriLM / FloatLM
               (the baseline)
    train      SpectraTrainer on both with the paper's recipes (scaled down), checkpoints as suite exports
    quantize   GPTQ QuantLMs of the trained FloatLM (spectra_hf.quantization.gptq)
    evaluate   perplexity of every local export and of the untrained models (spectra-hf eval results files)
    publish    a local Hub server on 127.0.0.1, every repo / branch / card published to it (spectra_hf.hub.publish)
    loadback   a fresh process loads each repo back with `from_pretrained(repo, revision=...)` from the local Hub,
               generates a sample and scores perplexity; the table of models, sizes and perplexities

Work directory layout:

    WORKDIR/demo_config.json     the settings of this demo (written by prepare, read by the other stages)
    WORKDIR/data/                train.txt, eval.txt (one document per line)
    WORKDIR/tokenizer/
    WORKDIR/init/<name>/         the untrained models training starts from
    WORKDIR/runs/<name>/         Trainer checkpoints (resumable)
    WORKDIR/suite/               the suite directory (spectra_hf.checkpoints.exports layout) that publishing reads
    WORKDIR/eval/<name>.json     perplexity results (spectra_hf.evaluation.results), fed into the cards' model-index
    WORKDIR/hub/                 the local Hub's storage (`spectra-hf hub serve --root WORKDIR/hub` serves it again)
    WORKDIR/loadback.json        what the load-back process measured
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spectra_hf.errors import ConfigError, HubError
from spectra_hf.suite import FLOAT_BITS, QUANT_BITS, TERNARY_BITS, Family, SuiteModel, get_model

STAGES: tuple[str, ...] = ("prepare", "train", "quantize", "evaluate", "publish", "loadback")
CONFIG_FILE = "demo_config.json"
LOADBACK_FILE = "loadback.json"
PROMPT = "The function returns"
# Keys of the bundled paper recipes that name the full-scale data; the demo trains on its local corpus instead.
_FULL_SCALE_DATA_KEYS = ("dataset_name", "dataset_config", "streaming", "tokenizer")


@dataclass(frozen=True)
class DemoConfig:
    """Settings of a demo run: a scaled-down architecture that borrows the names and recipes of suite size `size`.

    Widths are multiples of 32 (GPTQ packs 32 output rows at a time). `quick()` is the reduced run for tests.
    TriLM trains at the paper's learning rates of `size`; the FloatLM recipe's peak (4e-4 for 99M) is tuned for
    2M-token batches, so the demo's tiny batches train the FloatLM at `floatlm_learning_rate` instead (None: the
    paper's). `eval_documents` limits the held-out documents scored (None: all).
    """

    size: str = "99M"
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    vocab_size: int = 1024
    block_size: int = 128
    batch_size: int = 8
    max_steps: int = 300
    save_steps: int = 100
    quant_bits: tuple[int, ...] = QUANT_BITS
    calibration_samples: int = 32
    floatlm_learning_rate: float | None = 2e-3
    eval_documents: int | None = None
    eval_batch_size: int = 8
    org: str = "spectra-demo"
    seed: int = 0

    @classmethod
    def quick(cls) -> DemoConfig:
        """A reduced run (tests, smoke checks): smaller model, fewer steps, one QuantLM width, fewer eval documents."""
        return cls(
            hidden_size=64,
            num_hidden_layers=2,
            vocab_size=512,
            block_size=64,
            max_steps=120,
            save_steps=60,
            quant_bits=(4,),
            calibration_samples=16,
            eval_documents=24,
        )

    def name(self, family: Family, bits: int | None = None) -> str:
        return SuiteModel(family, self.size, bits).name

    @property
    def quantlm_names(self) -> list[str]:
        return [self.name("quantlm", bits) for bits in self.quant_bits]

    @property
    def release_names(self) -> list[str]:
        """The suite models this demo exports and publishes."""
        return [self.name("trilm"), self.name("floatlm"), *self.quantlm_names]

    def architecture(self, vocab_size: int) -> dict[str, int]:
        """Config overrides of the scaled-down TriLM / FloatLM."""
        return {
            "hidden_size": self.hidden_size,
            "intermediate_size": 3 * self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_attention_heads,
            "vocab_size": vocab_size,
            "max_position_embeddings": self.block_size,
        }


@dataclass(frozen=True)
class DemoPaths:
    """Where each stage reads and writes (module docstring)."""

    workdir: Path

    @property
    def config(self) -> Path:
        return self.workdir / CONFIG_FILE

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def train_text(self) -> Path:
        return self.data / "train.txt"

    @property
    def eval_text(self) -> Path:
        return self.data / "eval.txt"

    @property
    def tokenizer(self) -> Path:
        return self.workdir / "tokenizer"

    def init(self, name: str) -> Path:
        return self.workdir / "init" / name

    def run(self, name: str) -> Path:
        return self.workdir / "runs" / name

    @property
    def suite(self) -> Path:
        return self.workdir / "suite"

    def eval(self, name: str) -> Path:
        return self.workdir / "eval" / f"{name}.json"

    @property
    def hub(self) -> Path:
        return self.workdir / "hub"

    @property
    def hf_home(self) -> Path:
        return self.workdir / "hf_home"

    @property
    def loadback(self) -> Path:
        return self.workdir / LOADBACK_FILE


def _require(path: Path, stage: str) -> Path:
    if not path.exists():
        raise ConfigError(f"{path} is missing: run the {stage!r} stage first (spectra-hf demo --stages {stage})")
    return path


def _read_config(paths: DemoPaths) -> DemoConfig:
    try:
        values = json.loads(_require(paths.config, "prepare").read_text(encoding="utf-8"))
        return DemoConfig(**{**values, "quant_bits": tuple(values["quant_bits"])})
    except (json.JSONDecodeError, TypeError, KeyError) as error:
        raise ConfigError(
            f"{paths.config} is not a demo config of this version ({error}): re-run the prepare stage"
        ) from error


def _logger():
    """transformers' logger for this module (imported on use: `spectra-hf --help` imports this module)."""
    from transformers.utils import logging as transformers_logging

    return transformers_logging.get_logger(__name__)


def _quiet_http_logs() -> None:
    # gptqmodel turns INFO logging on at import; one line per HTTP request would drown the demo's output
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _untrained_name(name: str) -> str:
    return f"untrained_{name}"


# ---- stages --------------------------------------------------------------------------------------------------


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
        model = AutoModelForCausalLM.from_config(
            config_for(name, tiny=True, **config.architecture(len(tokenizer)))
        )
        with atomic_directory(paths.init(name)) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    paths.config.write_text(json.dumps(asdict(config), indent=2) + "\n", encoding="utf-8")


def stage_train(paths: DemoPaths, config: DemoConfig) -> None:
    """SpectraTrainer on TriLM and FloatLM: the paper's recipe of `config.size`, on the local corpus, scaled down."""
    from spectra_hf.training import train
    from spectra_hf.training.arguments import read_recipe

    for family in ("trilm", "floatlm"):
        name = config.name(family)
        recipe = {k: v for k, v in read_recipe(name).items() if k not in _FULL_SCALE_DATA_KEYS}
        recipe.update(
            model=name,
            model_path=str(_require(paths.init(name), "prepare")),
            tokenizer=str(_require(paths.tokenizer, "prepare")),
            data_files=[str(_require(paths.train_text, "prepare"))],
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
        )
        if family == "floatlm" and config.floatlm_learning_rate is not None:
            recipe["learning_rate"] = config.floatlm_learning_rate
        # a re-run starts over: no stale checkpoint branches from an earlier run
        shutil.rmtree(paths.run(name), ignore_errors=True)
        shutil.rmtree(paths.suite / name, ignore_errors=True)
        print(f"training {name} ({config.max_steps} steps of {config.batch_size} x {config.block_size} tokens)")
        train(recipe)


def stage_quantize(paths: DemoPaths, config: DemoConfig) -> None:
    """GPTQ QuantLMs of the trained FloatLM at `config.quant_bits`, calibrated on the training text."""
    from spectra_hf.quantization.gptq import export_quantlms

    floatlm = _require(paths.suite / config.name("floatlm"), "train")
    export_quantlms(
        floatlm,
        paths.suite,
        calibration=_require(paths.train_text, "prepare"),
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

    texts = load_texts(str(_require(paths.eval_text, "prepare")), max_documents=config.eval_documents)
    targets = {_untrained_name(config.name(f)): paths.init(config.name(f)) for f in ("trilm", "floatlm")}
    producer = {name: "quantize" if name in config.quantlm_names else "train" for name in config.release_names}
    targets |= {name: _require(paths.suite / name, producer[name]) for name in config.release_names}
    for name, directory in tqdm(targets.items(), desc="evaluate", unit="model"):
        model, tokenizer = load_pretrained(directory)
        scores = perplexity(
            model, tokenizer, texts, max_length=config.block_size, batch_size=config.eval_batch_size,
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
    plan = build_plan(_require(paths.suite, "train"), org=config.org, evals=evals, models=config.release_names)
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

    _require(paths.hub, "publish")
    spec = paths.workdir / ".loadback_spec.json"
    spec.write_text(
        json.dumps({
            "targets": loadback_targets(paths, config),
            "eval_text": str(_require(paths.eval_text, "prepare")),
            "eval_documents": config.eval_documents,
            "max_length": config.block_size,
            "batch_size": config.eval_batch_size,
            "out": str(paths.loadback),
        }),
        encoding="utf-8",
    )
    with LocalHub(paths.hub) as hub:
        _logger().info(f"demo: serving its local Hub store {paths.hub} at {hub.url} for the load-back process")
        # huggingface_hub reads HF_ENDPOINT at import: a new process is how a user would point at this Hub
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env |= {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(paths.hf_home)}
        completed = subprocess.run([sys.executable, "-m", "spectra_hf.demo", str(spec)], env=env)
    if completed.returncode != 0:
        raise HubError(f"loading the published models back failed (exit code {completed.returncode}); see above")
    print_report(paths, config)


# ---- the load-back process -----------------------------------------------------------------------------------


def _load_back(spec_path: Path) -> None:
    """Runs in a fresh process whose HF_ENDPOINT is the local Hub: from_pretrained(repo, revision=...) per target."""
    import torch
    from huggingface_hub import snapshot_download
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import spectra_hf  # noqa: F401  (registers trilm / floatlm)
    from spectra_hf.evaluation.results import write_results
    from spectra_hf.evaluation.text_perplexity import load_texts, perplexity
    from spectra_hf.quantization.gptq import FROM_PRETRAINED_BITS, load_quantlm

    _quiet_http_logs()
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    texts = load_texts(spec["eval_text"], max_documents=spec["eval_documents"])
    rows = []
    for target in tqdm(spec["targets"], desc="load back from the local Hub", unit="model"):
        repo_id, revision = target["repo_id"], target["revision"]
        tokenizer = AutoTokenizer.from_pretrained(repo_id, revision=revision)
        bits = get_model(target["name"]).bits
        if bits is not None and bits not in FROM_PRETRAINED_BITS:
            # transformers' GPTQConfig refuses this width: download the revision, load with spectra_hf.quantization.gptq
            _logger().info(f"{repo_id}: {bits}-bit GPTQ is not loadable by from_pretrained, loading with load_quantlm")
            model = load_quantlm(snapshot_download(repo_id, revision=revision), dtype=torch.float32)
        else:
            model = AutoModelForCausalLM.from_pretrained(repo_id, revision=revision, dtype=torch.float32).eval()
        scores = perplexity(
            model, tokenizer, texts, max_length=spec["max_length"], batch_size=spec["batch_size"], show_progress=False
        )
        row = {**target, "perplexity": scores["perplexity"], "bits_per_byte": scores["bits_per_byte"]}
        if target.get("generate"):
            prompt = tokenizer(PROMPT, return_tensors="pt")
            torch.manual_seed(0)
            output = model.generate(
                **prompt, max_new_tokens=24, do_sample=True, top_k=40, temperature=0.8,
                pad_token_id=tokenizer.pad_token_id,
            )
            row["sample"] = tokenizer.decode(output[0], skip_special_tokens=True)
        rows.append(row)
    write_results(spec["out"], {"models": rows})


# ---- the report ----------------------------------------------------------------------------------------------


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
        effective = read_export_info(_require(paths.suite / name, "quantize")).extra["effective_bits_per_weight"]
        sizes[name] = size_bits(floatlm, bits_per_linear_weight=effective)
    rows = []
    for family in ("trilm", "floatlm"):
        name = config.name(family)
        scores = json.loads(_require(paths.eval(_untrained_name(name)), "evaluate").read_text())["perplexity"]
        rows.append(
            {"name": _untrained_name(name), "revision": "-", "where": "local", **scores, "size_bits": sizes[name]}
        )
    for row in json.loads(_require(paths.loadback, "loadback").read_text(encoding="utf-8"))["models"]:
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
        f"  runs/                 resumable Trainer checkpoints\n"
        f"  suite/                release exports and checkpoints/step<N> (spectra_hf.checkpoints.exports layout)\n"
        f"  eval/                 perplexity results (spectra-hf eval format, in the cards' model-index)\n"
        f"  hub/                  the local Hub: serve it with `spectra-hf hub serve --root {paths.hub}`\n"
        f"  {LOADBACK_FILE:<21} what the load-back process measured"
    )


# ---- driver --------------------------------------------------------------------------------------------------

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
    """Seconds per stage run, and the table's rows (once the loadback stage has run)."""

    seconds: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)


def run_demo(
    workdir: str | Path, *, stages: Sequence[str] = STAGES, config: DemoConfig | None = None
) -> DemoResult:
    """Run `stages` (in pipeline order) in `workdir`.

    `config` applies when `prepare` runs (default `DemoConfig()`); the other stages read the config `prepare`
    wrote, so that a stage run alone works on an earlier run's output.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown demo stage(s) {', '.join(unknown)}: stages are {', '.join(STAGES)}")
    paths = DemoPaths(Path(workdir).expanduser().resolve())
    _quiet_http_logs()
    result = DemoResult()
    for stage in (s for s in STAGES if s in stages):
        if stage == "prepare":
            active = config or DemoConfig()
        else:
            active = _read_config(paths)
            if config is not None and config != active:
                raise ConfigError(
                    f"{paths.config} holds other settings than requested: re-run the prepare stage, or drop --quick"
                )
        print(f"== {stage} ==", flush=True)
        started = time.perf_counter()
        STAGE_FUNCTIONS[stage](paths, active)
        result.seconds[stage] = time.perf_counter() - started
        print(f"== {stage}: {result.seconds[stage]:.1f} s ==", flush=True)
    if "loadback" in stages:
        result.rows = report_rows(paths, _read_config(paths))
    return result


if __name__ == "__main__":
    _load_back(Path(sys.argv[1]))
