"""The demo's settings (`DemoConfig`) and where each stage reads and writes (`DemoPaths`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from spectra_hf.errors import CheckpointError, ConfigError
from spectra_hf.suite import QUANT_BITS, Family, SuiteModel

STAGES: tuple[str, ...] = ("prepare", "train", "quantize", "evaluate", "publish", "loadback")
CONFIG_FILE = "demo_config.json"
LOADBACK_FILE = "loadback.json"


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
    """Where each stage reads and writes (the layout in the package docstring)."""

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

    @property
    def runs(self) -> Path:
        return self.workdir / "runs"

    def run(self, name: str) -> Path:
        return self.runs / name

    @property
    def suite(self) -> Path:
        return self.workdir / "suite"

    @property
    def evals(self) -> Path:
        return self.workdir / "eval"

    def eval(self, name: str) -> Path:
        return self.evals / f"{name}.json"

    @property
    def hub(self) -> Path:
        return self.workdir / "hub"

    @property
    def hf_home(self) -> Path:
        return self.workdir / "hf_home"

    @property
    def loadback(self) -> Path:
        return self.workdir / LOADBACK_FILE

    @property
    def records(self) -> Path:
        return self.workdir / "stages"


def require(path: Path, stage: str) -> Path:
    """`path`, which stage `stage` writes; CheckpointError naming that stage when it is missing."""
    if not path.exists():
        raise CheckpointError(f"{path} is missing: run the {stage!r} stage first (spectra-hf demo --stages {stage})")
    return path


def read_config(paths: DemoPaths) -> DemoConfig:
    """The settings the prepare stage wrote."""
    try:
        values = json.loads(require(paths.config, "prepare").read_text(encoding="utf-8"))
        return DemoConfig(**{**values, "quant_bits": tuple(values["quant_bits"])})
    except (json.JSONDecodeError, TypeError, KeyError) as error:
        raise ConfigError(
            f"{paths.config} is not a demo config of this version ({error}): re-run the prepare stage"
        ) from error


def untrained_name(name: str) -> str:
    return f"untrained_{name}"
