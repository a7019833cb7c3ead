"""LoRA on TriLM: what merging an adapter into a ternary model means, and the exact alternative.

peft wraps every targeted `TernaryLinear` (an `nn.Linear` subclass) and adds `B A x` to the ternary output, so a
LoRA-tuned TriLM computes `Y = X (g T)^T + s X (B A)^T`: the base stays frozen and ternary, only A and B train.
Three honest ways to ship the result:

1. Keep the adapter unmerged (`model.save_pretrained(dir)` writes only the adapter; load the TriLM, then
   `PeftModel.from_pretrained`). Exact, and the base keeps its 1.6-bit packed release form.
2. `merge_lora_to_float(model)`: a dense FloatLM whose linear weights are `g T + s B A`. Exact (same function as
   the unmerged model), but the linear layers are no longer ternary (16/32-bit weights).
3. peft's `merge_and_unload()` on a latent TriLM: folds `s B A` into the latent weight, which the next forward
   re-ternarizes with a new absmean scale. The result is ternary but NOT the tuned function: digits near the rounding
   thresholds flip and the scales move, while most of a small update is rounded away. Use it only if you re-evaluate
   (or keep training) the merged model. On a packed TriLM (a loaded release) there is no latent weight to fold into:
   peft's merge is refused before anything changes, with an error naming `merge_lora_to_float`
   (`modeling/ternary.py`), so no merged-but-unloadable checkpoint can be written.
"""

from __future__ import annotations

from typing import cast

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import PreTrainedModel

from spectra_hf.errors import ConfigError
from spectra_hf.modeling import FloatLMConfig, FloatLMForCausalLM, TernaryLinear, TriLMConfig
from spectra_hf.modeling.ternary import dense_of_digits


def _merged_weight(module: nn.Module) -> torch.Tensor:
    """The dense [out, in] weight that a (possibly LoRA-wrapped, possibly ternary) linear layer applies."""
    if isinstance(module, LoraLayer):
        base = module.get_base_layer()
        if module.merged:
            raise ConfigError("the adapter is already merged into the latent weights: unmerge it first")
        weight = _merged_weight(base)
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                # (every peft LoRA layer class defines get_delta_weight; their LoraLayer base does not declare it)
                weight = weight + module.get_delta_weight(adapter).float()  # type: ignore[operator]
        return weight
    if isinstance(module, TernaryLinear):
        return dense_of_digits(*module.ternary_weight(), module.shard_dim, torch.float32)
    return cast(torch.Tensor, module.weight).float()  # a linear layer's weight (nn.Module types attributes loosely)


@torch.no_grad()
def merge_lora_to_float(model: PeftModel) -> FloatLMForCausalLM:
    """A dense float32 FloatLM computing exactly what the LoRA-adapted TriLM (or FloatLM) `model` computes.

    Ternary layers become `g T` plus the adapters' `s B A`; everything else is copied. The result has the same
    architecture as a FloatLM of the same size (a standard Llama checkpoint once saved).
    """
    base = cast(PreTrainedModel, model.get_base_model())  # peft types it as any Module; here a TriLM or FloatLM
    ternary_only = set(TriLMConfig().to_dict()) - set(FloatLMConfig().to_dict())
    values = {k: v for k, v in base.config.to_dict().items() if k not in ternary_only | {"model_type", "auto_map"}}
    merged = FloatLMForCausalLM(FloatLMConfig(**values))
    state = {}
    for name, _ in merged.named_parameters():
        module_name, _, param = name.rpartition(".")
        source = base.get_submodule(module_name)
        linear = param == "weight" and isinstance(source, (nn.Linear, LoraLayer))
        state[name] = _merged_weight(source) if linear else getattr(source, param).float()
    merged.load_state_dict(state)
    return merged
