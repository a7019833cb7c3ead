"""Start-up: the command line imports no torch, and `import spectra_hf` still registers the model types.

Each check runs in a fresh interpreter (a subprocess), since this test process imported torch long ago.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "transformers", "datasets")


def _imported_modules(argv: list[str]) -> set[str]:
    """Top-level modules `python -X importtime ARGV` imported (importtime lists every module on stderr)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, timeout=120, check=False
    )
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize(
    "command",
    [["--help"], ["hub", "serve", "--help"], ["train", "--help"], ["quantize", "--help"], ["suite", "--json"]],
)
def test_cli_commands_that_need_no_model_import_no_torch(command):
    imported = _imported_modules(["-m", "spectra_hf.cli", *command])
    assert "spectra_hf" in imported  # the command ran
    assert not imported & set(HEAVY), imported & set(HEAVY)


def test_hub_serve_starts_without_torch(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, threading
        from spectra_hf.cli import main
        threading.Timer(1.0, lambda: (print(sorted(m for m in {HEAVY!r} if m in sys.modules), flush=True),
                                      __import__("os")._exit(0))).start()
        main(["hub", "serve", "--root", {str(tmp_path)!r}, "--port", "0", "--quiet"])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.strip().splitlines()[-1] == "[]", (done.stdout, done.stderr)


REGISTRATION_CHECK = """
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForQuestionAnswering,
                          AutoModelForSequenceClassification, AutoModelForTokenClassification)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
rows = []
for model_type in ("trilm", "floatlm"):
    config = AutoConfig.for_model(model_type, vocab_size=64, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    rows.append(type(config).__name__ == CONFIG_MAPPING[model_type].__name__)
    for auto in (AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                 AutoModelForTokenClassification, AutoModelForQuestionAnswering):
        rows.append(type(auto.from_config(config)).__name__)
print(rows)
"""
EXPECTED = [
    True, "TriLMModel", "TriLMForCausalLM", "TriLMForSequenceClassification", "TriLMForTokenClassification",
    "TriLMForQuestionAnswering",
    True, "FloatLMModel", "FloatLMForCausalLM", "FloatLMForSequenceClassification", "FloatLMForTokenClassification",
    "FloatLMForQuestionAnswering",
]  # fmt: skip


@pytest.mark.slow  # three fresh interpreters importing torch and transformers (~15-45 s each)
@pytest.mark.parametrize(
    "prelude",
    [
        "import spectra_hf",  # the documented order
        "import transformers.models.auto.modeling_auto\nimport spectra_hf",  # transformers' Auto classes first
        "import spectra_hf.modeling\nimport spectra_hf",  # the model package first
    ],
)
def test_import_spectra_hf_registers_with_the_auto_classes(prelude):
    done = subprocess.run(
        [sys.executable, "-c", prelude + "\n" + REGISTRATION_CHECK], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == repr(EXPECTED)


def test_import_spectra_hf_alone_imports_no_torch():
    imported = _imported_modules(["-c", "import spectra_hf; spectra_hf.__version__"])
    assert "spectra_hf" in imported and not imported & set(HEAVY)
