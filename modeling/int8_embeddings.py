"""Optional int8 input embedding and LM head for inference: a DEVIATION from the paper, whose TriLMs keep both in
floating point. At 99M-390M the bf16 LM head is read every decode token and is as large as all ternary blocks
together; int8 with one scale per row (absmax / 127) halves it. The perplexity cost is measured by
bench/bench_inference.py. Enabled with `from_pretrained(..., int8_embeddings=True)`; such a model cannot be saved
(reload without the flag to save): checkpoints keep the paper's float embedding and head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import nn
from transformers.utils import logging

from .ternary_kernels import int8_matmul_cpu

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.get_logger(__name__)

DEVIATION = (
    "int8 embedding / LM head in use: a deviation from the paper (its models keep both in floating point); "
    "logits differ from the released model's at int8 precision"
)


def _int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: (codes int8 [rows, cols], scales float32 [rows]); an all-zero row gets scale 1."""
    scales = weight.detach().float().abs().amax(dim=1) / 127
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)
    codes = (weight.detach().float() / scales[:, None]).round_().clamp_(-127, 127).to(torch.int8)
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

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        codes, scales = _int8_rows(linear.weight)
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

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        codes, scales = _int8_rows(embedding.weight)
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx = embedding.padding_idx
        self.dtype = embedding.weight.dtype
        self.weight = nn.Parameter(codes, requires_grad=False)
        self.register_buffer("scale", scales)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.dtype = fn(torch.zeros(0, dtype=self.dtype)).dtype  # the rows come out in the model's float dtype
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.weight[ids].float() * self.scale[ids, None]).to(self.dtype)


def quantize_embeddings_int8(model: PreTrainedModel) -> None:
    """Replace `model`'s input embedding and LM head (a `*ForCausalLM`) by their int8 forms, in place."""
    logger.warning(DEVIATION)
    # (transformers types the input embedding as any Module; a TriLM's is an nn.Embedding)
    model.set_input_embeddings(Int8Embedding(cast(nn.Embedding, model.get_input_embeddings())))
    if getattr(model, "lm_head", None) is not None and isinstance(model.lm_head, nn.Linear):
        model.lm_head = Int8Linear(model.lm_head)


def has_int8_embeddings(model: nn.Module) -> bool:
    return any(isinstance(module, (Int8Linear, Int8Embedding)) for module in model.modules())
