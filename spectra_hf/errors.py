"""Errors a user can cause and fix, by kind; the CLI prints any of them as one line naming the thing and the fix.

Every class is a `SpectraError` and also the built-in exception a caller would expect of that kind, so code that
already catches `ValueError` or `OSError` keeps working. modeling/ (which is also remote code and cannot import
this module) raises the same built-in kinds: `OSError` for checkpoints, `ValueError` for configs.

    SpectraError
    |-- ConfigError          (ValueError)       a bad option, config, recipe or suite name
    |-- DataError            (ValueError)       text or a dataset that cannot be used as given
    |-- CheckpointError      (OSError)          a missing, incomplete, corrupt or wrong-kind checkpoint
    |-- OutputExistsError    (FileExistsError)  an output path holds something that would be lost
    |-- MissingDependencyError (ImportError)    an optional extra is not installed
    `-- HubError             (OSError)          publishing: no target, a refused request, a failed verification
"""


class SpectraError(Exception):
    """Bad input (path, config, checkpoint, option): the message names the thing and the fix."""


class ConfigError(SpectraError, ValueError):
    """A bad option, config.json value, recipe key or suite model name."""


class DataError(SpectraError, ValueError):
    """Text or a dataset that cannot be read, or is too small for what was asked."""


class CheckpointError(SpectraError, OSError):
    """A checkpoint that is missing, incomplete, corrupt, or not of the kind the command needs."""


class OutputExistsError(SpectraError, FileExistsError):
    """An output path already holds files that writing there would destroy (pass --overwrite to replace them)."""


class MissingDependencyError(SpectraError, ImportError):
    """An optional extra (gptq, gguf, bnb, eval) is needed and not installed."""


class HubError(SpectraError, OSError):
    """Publishing or Hub access failed: no explicit target, a refused request, or content that did not verify."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "HubError",
    "MissingDependencyError",
    "OutputExistsError",
    "SpectraError",
]
