"""Optional int8 input embedding and LM head for inference: a DEVIATION from the paper, whose TriLMs keep both in
floating point. At 99M-390M the bf16 LM head is read every decode token and is as large as all ternary blocks
together; int8 with one scale per row (absmax / 127) halves it. The perplexity cost is measured by
bench/bench_inference.py. Enabled with `from_pretrained(..., int8_embeddings=True)`; such a model cannot be saved
(reload without the flag to save): checkpoints keep the paper's float embedding and head.

Loading converts the two tables tensor by tensor, never holding a float copy in memory: transformers is told to load
them in their stored dtype (a memory-mapped view of the file, whose pages are never read), then each table is read
from the safetensors file in row blocks of `ROW_BLOCK_BYTES` with plain reads (no mmap pages left resident) and
quantized block by block into its int8 codes; the views are then dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn
from transformers.utils import logging

from .checkpoint_checks import StoredTensor, read_safetensors_header
from .ternary_kernels import int8_matmul_cpu, release_freed_memory

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.get_logger(__name__)

DEVIATION = (
    "int8 embedding / LM head in use: a deviation from the paper (its models keep both in floating point); "
    "logits differ from the released model's at int8 precision"
)


# Float rows read and quantized at a time when a table is converted (its float32 temporaries are 2x this).
ROW_BLOCK_BYTES = 1 << 20
_STORED_FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: (codes int8 [rows, cols], scales float32 [rows]); an all-zero row gets scale 1.
    Converted `ROW_BLOCK_BYTES` of rows at a time, so the float32 temporaries stay small whatever the table."""
    rows, cols = weight.shape
    codes = torch.empty(rows, cols, dtype=torch.int8)  # [rows, cols]
    scales = torch.empty(rows, dtype=torch.float32)  # [rows]
    step = max(1, ROW_BLOCK_BYTES // max(1, cols * weight.element_size()))
    for start in range(0, rows, step):
        rows_slice = slice(start, start + step)
        _quantize_block(weight[rows_slice].detach(), codes[rows_slice], scales[rows_slice])
    return codes, scales


def _quantize_block(block: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> None:
    """Quantize float rows `block` [n, cols] into `codes` int8 [n, cols] and `scales` float32 [n] (views to fill)."""
    block = block.float()
    block_scales = block.abs().amax(dim=1) / 127
    block_scales = torch.where(block_scales == 0, torch.ones_like(block_scales), block_scales)
    codes.copy_(block.div_(block_scales[:, None]).round_().clamp_(-127, 127))
    scales.copy_(block_scales)


def int8_rows_from_file(path: str | Path, entry: StoredTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`_int8_rows` of a float [rows, cols] tensor stored in safetensors file `path` at `entry`, read in row blocks
    with plain reads: only the int8 codes [rows, cols], the float32 scales [rows] and one block are ever in memory."""
    dtype = _STORED_FLOAT_DTYPES.get(entry.dtype)
    if dtype is None or len(entry.shape) != 2:
        raise ValueError(f"{path}: an int8 table must be a 2-D float tensor, found {entry.dtype} {list(entry.shape)}")
    rows, cols = entry.shape
    row_bytes = cols * dtype.itemsize
    step = max(1, ROW_BLOCK_BYTES // max(1, row_bytes))
    codes = torch.empty(rows, cols, dtype=torch.int8)  # [rows, cols]
    scales = torch.empty(rows, dtype=torch.float32)  # [rows]
    buffer = bytearray(step * row_bytes)
    with open(path, "rb") as handle:
        handle.seek(entry.start)
        for start in range(0, rows, step):
            count = min(step, rows - start)
            view = memoryview(buffer)[: count * row_bytes]
            if handle.readinto(view) != len(view):
                raise OSError(f"corrupt checkpoint file {path}: truncated tensor data; re-download or re-save it")
            block = torch.frombuffer(view, dtype=dtype).reshape(count, cols)  # [count, cols], on `buffer`
            _quantize_block(block, codes[start : start + count], scales[start : start + count])
    return codes, scales


class _KeepScaleDtype(nn.Module):
    """Casts of the model (`.half()`, `.float()`) move `scale` between devices but keep its dtype."""

    scale: torch.Tensor  # the buffer the subclasses register

    def _apply(self, fn, recurse: bool = True):
        scale = self._buffers.pop("scale")
        assert scale is not None, "the subclasses register a scale buffer"
        super()._apply(fn, recurse)
        moved = fn(scale)
        self._buffers["scale"] = moved if moved.dtype == scale.dtype else scale.to(moved.device)
        return self


class Int8Linear(_KeepScaleDtype):
    """y = x W^T with W stored as int8 [out, in] and one float32 scale per output row; x [..., in] -> [..., out] in
    x's dtype. On CPU the 2-bit path's C++ kernel computes it (int16 activations, 16 weights per instruction: about
    twice as fast as torch's int8 weight-only kernel, which computes in bfloat16 and is the fallback)."""

    def __init__(self, linear: nn.Linear, *, quantized: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """`quantized`: the (codes, scales) of `linear.weight` already computed (then its weight is not read)."""
        super().__init__()
        codes, scales = quantized if quantized is not None else _int8_rows(linear.weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(codes, requires_grad=False)  # a parameter, so num_parameters() counts it
        self.register_buffer("scale", scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = int8_matmul_cpu(x, self.weight, self.scale)
        if y is not None:
            return y
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch._weight_int8pack_mm(flat, self.weight, self.scale.to(torch.bfloat16))
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class Int8Embedding(_KeepScaleDtype):
    """Embedding rows stored as int8 [vocab, hidden] with one float32 scale per row; looked-up rows are returned in
    `dtype` (the model's float dtype)."""

    def __init__(
        self, embedding: nn.Embedding, *, quantized: tuple[torch.Tensor, torch.Tensor] | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """`quantized`: the (codes, scales) of `embedding.weight` already computed (then its weight is not read);
        `dtype`: the float dtype of looked-up rows (default the embedding weight's)."""
        super().__init__()
        codes, scales = quantized if quantized is not None else _int8_rows(embedding.weight)
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx = embedding.padding_idx
        self.dtype = dtype or embedding.weight.dtype
        self.weight = nn.Parameter(codes, requires_grad=False)
        self.register_buffer("scale", scales)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.dtype = fn(torch.zeros(0, dtype=self.dtype)).dtype  # the rows come out in the model's float dtype
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.weight[ids].float() * self.scale[ids, None]).to(self.dtype)


@dataclass
class Int8LoadPlan:
    """What a load with `int8_embeddings=True` learns while transformers reads the checkpoint: the stored dtype and
    the file and byte range of each float table to convert (by parameter name)."""

    stored: dict[str, tuple[Path, StoredTensor]] = field(default_factory=dict)
    float_dtype: torch.dtype | None = None  # the dtype the model's other float weights load in


_LOAD_PLAN: ContextVar[Int8LoadPlan | None] = ContextVar("spectra_int8_load_plan", default=None)
TABLE_NAMES = ("model.embed_tokens.weight", "lm_head.weight")


@contextmanager
def int8_load_plan(enabled: bool) -> Iterator[Int8LoadPlan | None]:
    """While it is open (and `enabled`), loads record the float tables' places in the checkpoint (see
    `plan_table_dtypes`); yields the plan, or None when not enabled."""
    if not enabled:
        yield None
        return
    plan = Int8LoadPlan()
    token = _LOAD_PLAN.set(plan)
    try:
        yield plan
    finally:
        _LOAD_PLAN.reset(token)


def plan_table_dtypes(
    checkpoint_files: list[str] | None, *, float_dtype: torch.dtype | None
) -> dict[str, torch.dtype]:
    """Inside `int8_load_plan(True)`: records where the float tables lie in `checkpoint_files` (safetensors) and the
    model's float dtype `float_dtype` (looked-up rows come out in it), and returns {parameter name: stored dtype}:
    a dtype plan for transformers that keeps the tables in their stored dtype, so they load as untouched
    memory-mapped views rather than converted copies. {} outside a plan or for other files."""
    plan = _LOAD_PLAN.get()
    if plan is None or not checkpoint_files:
        return {}
    plan.float_dtype = float_dtype
    dtypes = {}
    for file in checkpoint_files:
        if not str(file).endswith(".safetensors"):
            return {}
        for name, entry in read_safetensors_header(file).items():
            if name in TABLE_NAMES and entry.dtype in _STORED_FLOAT_DTYPES:
                plan.stored[name] = (Path(file), entry)
                dtypes[name] = _STORED_FLOAT_DTYPES[entry.dtype]
    return dtypes


def quantize_embeddings_int8(model: PreTrainedModel, plan: Int8LoadPlan | None = None) -> None:
    """Replace `model`'s input embedding and LM head (a `*ForCausalLM`) by their int8 forms, in place, one table at a
    time. With a `plan` from the load, a table it located is read from the checkpoint file in row blocks (its loaded
    float view is never read); otherwise the loaded float weight is converted in row blocks."""
    logger.warning(DEVIATION)
    stored = plan.stored if plan is not None else {}
    float_dtype = plan.float_dtype if plan is not None else None  # (the tables may have loaded in their stored dtype)

    def quantized(name: str, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if name in stored and weight.device.type == "cpu" and tuple(weight.shape) == stored[name][1].shape:
            return int8_rows_from_file(*stored[name])
        return None

    # (transformers types the input embedding as any Module; a TriLM's is an nn.Embedding)
    embedding = cast(nn.Embedding, model.get_input_embeddings())
    table = quantized("model.embed_tokens.weight", embedding.weight)
    model.set_input_embeddings(Int8Embedding(embedding, quantized=table, dtype=float_dtype))
    del embedding, table  # the float table (or its file view) goes before the head's codes are made
    release_freed_memory()
    if getattr(model, "lm_head", None) is not None and isinstance(model.lm_head, nn.Linear):
        model.lm_head = Int8Linear(model.lm_head, quantized=quantized("lm_head.weight", model.lm_head.weight))
        release_freed_memory()


def has_int8_embeddings(model: nn.Module) -> bool:
    return any(isinstance(module, (Int8Linear, Int8Embedding)) for module in model.modules())
