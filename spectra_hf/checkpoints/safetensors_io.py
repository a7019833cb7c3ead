"""The safetensors file format read and written one tensor at a time with plain file I/O.

`safetensors.safe_open` memory-maps a whole file, and every page read through the mapping stays resident until the
file is closed; converting a multi-GiB shard would then hold it all. Here a tensor is read with one `read()` into
its own buffer, and a shard is written by appending tensor bytes to a data file and prepending the header at the
end, so memory holds one tensor at a time. Files are standard safetensors (8-byte little-endian header length, JSON
header, data), readable by `safetensors` and transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path
from typing import TypeAlias

import torch

from spectra_hf.errors import CheckpointError
from spectra_hf.modeling.checkpoint_checks import StoredTensor, read_safetensors_header, read_stored_tensor
from spectra_hf.modeling.checkpoint_digests import DIGEST_KEY

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}


# One header reader and checker for every reader of checkpoints (from_pretrained included): see checkpoint_checks.
TensorEntry: TypeAlias = StoredTensor


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors of safetensors file `path`; CheckpointError naming the file if it is truncated or corrupt."""
    try:
        return read_safetensors_header(path)
    except OSError as error:
        raise CheckpointError(str(error)) from error


def read_tensor(path: Path, entry: TensorEntry) -> torch.Tensor:
    """One tensor, read into its own memory."""
    if entry.dtype not in DTYPES:
        raise CheckpointError(f"{path}: dtype {entry.dtype} is not supported here (only {', '.join(DTYPES)})")
    try:
        return read_stored_tensor(path, entry, DTYPES[entry.dtype])
    except OSError as error:
        raise CheckpointError(str(error)) from error


class ShardFileWriter:
    """Writes one safetensors file tensor by tensor: `add()` appends bytes to a side file, `close()` writes the
    header (with every tensor's sha256 digest, see `modeling.checkpoint_digests`) and moves the data behind it;
    `abort()` closes and removes the side file (and a half-written `path`) instead."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._data_path = self.path.with_name(self.path.name + ".data")
        self._data = open(self._data_path, "wb")  # noqa: SIM115 - stays open across add() calls until close()
        self._header: dict[str, dict] = {}
        self._digests: dict[str, str] = {}
        self.nbytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().cpu().contiguous()
        raw = tensor.reshape(-1).view(torch.uint8) if tensor.numel() else torch.empty(0, dtype=torch.uint8)
        # numpy's stubs give ndarray __buffer__ only for Python >= 3.12; the buffer protocol is there on every version
        view = memoryview(raw.numpy())  # type: ignore[arg-type]
        self._data.write(view)
        self._digests[name] = hashlib.sha256(view).hexdigest()
        self._header[name] = {
            "dtype": _NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [self.nbytes, self.nbytes + raw.numel()],
        }
        self.nbytes += raw.numel()

    def close(self) -> None:
        self._data.close()
        metadata = {"format": "pt", DIGEST_KEY: json.dumps(self._digests, separators=(",", ":"))}
        header = json.dumps({"__metadata__": metadata, **self._header}, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        with open(self.path, "wb") as out, open(self._data_path, "rb") as data:
            out.write(struct.pack("<Q", len(header)))
            out.write(header)
            shutil.copyfileobj(data, out, 16 << 20)
        os.remove(self._data_path)

    def abort(self) -> None:
        """Give up this file: close the side file and remove it and anything written at `path` (safe to call after
        a failed `close()`, and more than once)."""
        self._data.close()
        for leftover in (self._data_path, self.path):
            leftover.unlink(missing_ok=True)
