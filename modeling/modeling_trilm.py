"""TriLM: the Spectra suite's ternary language models (arXiv 2407.12327).

The architecture is FloatLM's (transformers' Llama, reused unchanged) with the seven linear layers of every decoder
block replaced by `TernaryLinear`; the embedding, LM head and norms stay in floating point and activations are not
quantized. Scale shards follow the original Megatron layout (see `ternary.py`).

Checkpoints come in two kinds, named by `config.weight_format`: "latent" (training; resumable) and "packed" (release;
T at 1.6 bits per weight plus per-shard scales, inference only). `save_pretrained(dir, weight_format="packed")` writes
the release format from either kind; `from_pretrained` also reads the original `SpectraSuite/TriLM_*_Unpacked`
Llama checkpoints (weights g_s * T in fp16) and packs them on the fly.
"""

from __future__ import annotations

import os
from typing import cast

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
)
from transformers.utils import logging

from . import ternary_kernels
from .checkpoint_checks import CheckedLoadingMixin, check_loaded_keys, check_packed_bytes, check_scale_values
from .checkpoint_digests import record_checkpoint_digests
from .configuration_trilm import LOADING_KEYS, WEIGHT_FORMATS, TriLMConfig
from .int8_embeddings import has_int8_embeddings, int8_load_plan, plan_table_dtypes, quantize_embeddings_int8
from .ternary import TernaryLinear, default_inference_path, recover_ternary, share_scales
from .ternary_fusion import decode_all_layers, fuse_projections
from .ternary_kernels import cpu_kernel_status, release_freed_memory
from .ternary_stats import TernaryCounts

logger = logging.get_logger(__name__)

# Column-parallel layers are sharded by output rows, row-parallel layers by input columns.
TERNARY_SHARD_DIM = {
    "self_attn.q_proj": 0,
    "self_attn.k_proj": 0,
    "self_attn.v_proj": 0,
    "self_attn.o_proj": 1,
    "mlp.gate_proj": 0,
    "mlp.up_proj": 0,
    "mlp.down_proj": 1,
}


def make_layer_ternary(layer: LlamaDecoderLayer, config: TriLMConfig) -> None:
    """Replace the decoder layer's seven `nn.Linear` with `TernaryLinear`: latent layers keep the Linear's
    parameters, packed layers (`config.weight_format == "packed"`) hold empty packed buffers to be loaded."""
    for path, shard_dim in TERNARY_SHARD_DIM.items():
        parent_name, child_name = path.split(".")
        parent = getattr(layer, parent_name)
        linear = getattr(parent, child_name)
        if config.weight_format == "packed":
            ternary = TernaryLinear(
                linear.in_features,
                linear.out_features,
                shards=config.pretraining_model_parallel,
                shard_dim=shard_dim,
                eps=config.ternary_eps,
                packed=True,
                device=linear.weight.device,
            )
        else:
            ternary = TernaryLinear.from_linear(
                linear, shards=config.pretraining_model_parallel, shard_dim=shard_dim, eps=config.ternary_eps
            )
        setattr(parent, child_name, ternary)
    if config.ternary_fused_qkv_scale:
        attn = layer.self_attn
        q_proj, k_proj, v_proj = attn.q_proj, attn.k_proj, attn.v_proj
        assert isinstance(q_proj, TernaryLinear) and isinstance(k_proj, TernaryLinear)  # replaced just above
        assert isinstance(v_proj, TernaryLinear)
        share_scales(q_proj, k_proj, v_proj)


class TriLMPreTrainedModel(CheckedLoadingMixin, LlamaPreTrainedModel):
    config_class = TriLMConfig
    config: TriLMConfig

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *args, ternary_inference: str | None = None, int8_embeddings: bool = False,
        int8_activations: bool = False, **kwargs,
    ):
        """`PreTrainedModel.from_pretrained`, plus: the checkpoint is checked first (complete, consistent, a TriLM
        or a Llama release; see `checkpoint_checks`), a packed checkpoint is made ready for inference on the path
        `ternary_inference` (default: the config's, "auto"), and an original Llama release checkpoint (model_type
        "llama", fp16 weights g_s * T) is converted to a packed TriLM while loading (`TriLMForCausalLM` only).
        `int8_embeddings=True` / `int8_activations=True`: the opt-in int8 deviations (see `set_int8_activations`)."""
        refuse_weight_quantization(kwargs.get("quantization_config"))
        with int8_load_plan(int8_embeddings) as int8_plan:
            result = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = result[0] if isinstance(result, tuple) else result
        if ternary_inference is not None:
            model.config.ternary_inference = ternary_inference
        if model.config.weight_format == "packed":
            _check_packed_layers(model, where=os.fspath(pretrained_model_name_or_path))
            model.prepare_ternary_inference()
        if int8_embeddings:  # `int8_embeddings=True`: an opt-in deviation from the paper (see int8_embeddings.py)
            quantize_embeddings_int8(model, int8_plan)
        if int8_activations:
            model.set_int8_activations(True)
        return result

    @staticmethod
    def _load_pretrained_model(model, state_dict, checkpoint_files, load_config, *args, **kwargs):
        """`PreTrainedModel._load_pretrained_model`; under `int8_embeddings=True` the float embedding and head load
        in their stored dtype (untouched memory-mapped views, converted from the file afterwards: see
        `int8_embeddings.plan_table_dtypes`) instead of as float copies in the model's dtype."""
        if state_dict is None:  # (the dtype plan is a dict built for this load)
            load_config.dtype_plan.update(plan_table_dtypes(checkpoint_files, float_dtype=load_config.dtype))
        return PreTrainedModel._load_pretrained_model(model, state_dict, checkpoint_files, load_config, *args, **kwargs)

    @classmethod
    def _from_checked_pretrained(cls, pretrained_model_name_or_path, config_dict, *args, **kwargs):
        if config_dict is None or config_dict.get("model_type") != "llama" or kwargs.get("gguf_file"):
            return super()._from_checked_pretrained(pretrained_model_name_or_path, config_dict, *args, **kwargs)
        where = os.fspath(pretrained_model_name_or_path)
        if not hasattr(cls, "from_llama"):
            raise OSError(f"{where} is a Llama release checkpoint: load it with TriLMForCausalLM")
        wants_info = kwargs.pop("output_loading_info", False)
        llama, loading_info = LlamaForCausalLM.from_pretrained(
            pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
        )
        check_loaded_keys(loading_info, llama, where=where)
        try:
            model = cls.from_llama(llama)
        except ValueError as error:
            raise ValueError(
                f"{where}: {error} A float model (a FloatLM, or any non-ternary Llama) loads with FloatLMForCausalLM, "
                "LlamaForCausalLM or AutoModelForCausalLM."
            ) from error
        return (model, loading_info) if wants_info else model

    def save_pretrained(self, save_directory, *args, weight_format: str | None = None, **kwargs):
        """`PreTrainedModel.save_pretrained`, choosing what ternary layers store.

        Args:
            weight_format: "packed" (the release format: `P.weight_packed` uint8, 5 digits per byte, and
                `P.weight_scale` float32 [shards]; inference only) or "latent" (float latent weights; resumable
                training). Defaults to `config.weight_format`. A packed model can only be saved packed.
        """
        if has_int8_embeddings(self):
            raise ValueError(
                "this TriLM was loaded with int8_embeddings=True, an inference-only deviation from the paper: "
                "checkpoints keep the float embedding and LM head. Load it again without int8_embeddings to save it"
            )
        weight_format = weight_format or self.config.weight_format
        if weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"weight_format must be one of {WEIGHT_FORMATS}, got {weight_format!r}")
        if weight_format == self.config.weight_format:
            if weight_format == "latent":
                return super().save_pretrained(save_directory, *args, **kwargs)
            return self._save_packed(save_directory, *args, **kwargs)
        if weight_format == "latent":
            raise ValueError(
                "this TriLM holds packed ternary weights, its latent weights do not exist: save it with "
                "weight_format='packed', and resume training from a latent checkpoint"
            )
        kwargs["state_dict"] = self._packed_state_dict(kwargs.get("state_dict"))
        self.config.weight_format = "packed"
        try:
            return self._save_packed(save_directory, *args, **kwargs)
        finally:
            self.config.weight_format = "latent"

    def _save_packed(self, save_directory, *args, **kwargs):
        """Save the packed checkpoint and record every tensor's sha256 in its file's metadata (`checkpoint_digests`)."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            record_checkpoint_digests(save_directory, missing_only=True)
        return result

    def _upload_modified_files(self, working_dir, *args, **kwargs):
        """transformers' upload step of `save_pretrained(push_to_hub=True)` and `push_to_hub()`: the digests of a
        packed checkpoint are recorded before its files leave."""
        if self.config.weight_format == "packed":
            record_checkpoint_digests(working_dir, missing_only=True)
        return super()._upload_modified_files(working_dir, *args, **kwargs)

    @torch.no_grad()
    def _packed_state_dict(self, state_dict: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """The state dict with every latent ternary `P.weight` replaced by `P.weight_packed` and `P.weight_scale`."""
        packed = self.state_dict() if state_dict is None else dict(state_dict)
        for name, module in self.named_modules():
            if isinstance(module, TernaryLinear):
                layer = module.from_ternary(*module.ternary_weight(), shard_dim=module.shard_dim, eps=module.eps)
                del packed[f"{name}.weight"]
                packed.update({f"{name}.{key}": value for key, value in layer.state_dict().items()})
        return packed

    @torch.no_grad()
    def pack_ternary_weights(self) -> None:
        """Replace every latent ternary layer by its packed form in place (frees the latent weights; not reversible).

        The logits of the "dense" inference path in the latent weights' dtype are bit-identical to the latent model's.
        """
        for name, module in list(self.named_modules()):
            if isinstance(module, TernaryLinear) and not module.packed:
                parent_name, child_name = name.rsplit(".", 1)
                packed = module.from_ternary(*module.ternary_weight(), shard_dim=module.shard_dim, eps=module.eps)
                setattr(self.get_submodule(parent_name), child_name, packed)
        self.config.weight_format = "packed"

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """`PreTrainedModel.num_parameters`, counting every ternary weight once whatever its resident form (packed
        1.6-bit bytes, a 2/4-bit kernel layout, int8 or dense): the model's real parameter count."""
        total = super().num_parameters(only_trainable=only_trainable, exclude_embeddings=exclude_embeddings)
        if not only_trainable:  # a prepared layer shows its weights as a [out, in] parameter; an unprepared one not
            total += sum(
                m.in_features * m.out_features
                for m in self.modules()
                if isinstance(m, TernaryLinear) and m.packed and m.inference_path is None
            )
        return total

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """`PreTrainedModel.get_memory_footprint`, counting the bytes that are held: each storage once, at its size.
        transformers' count (elements x element size per tensor) takes a prepared layer's zero-stride placeholder
        `weight` for a dense [out, in] matrix, which nearly doubles a packed 99M TriLM (202 MiB counted, 110 held);
        the fused q/k/v and gate/up kernels are views of one storage each, counted once here."""
        tensors = [*self.parameters(), *(self.buffers() if return_buffers else ())]
        storages: dict[object, int] = {}
        for tensor in tensors:
            storage = tensor.untyped_storage()
            key = (storage.device, storage.data_ptr()) if storage.data_ptr() else id(tensor)  # (meta/empty: apart)
            storages[key] = storage.nbytes()
        return sum(storages.values())

    @torch.no_grad()
    def prepare_ternary_inference(self, path: str | None = None) -> str:
        """Make every packed ternary layer resident on inference path `path` ("dense", "int8", "int4" or "2bit";
        default `config.ternary_inference`, whose "auto" picks per layer: "2bit" on CPU where its kernel builds, else
        "int4", "int8" for CPU layers the int4 kernel cannot take, "dense" elsewhere). Logs and returns the path,
        "auto" if the layers chose differently."""
        # (transformers types the input embedding as any Module; its weight is a tensor)
        embeddings = cast(torch.Tensor, self.get_input_embeddings().weight)
        # the "dense" dtype (and the placeholder weights'): the norms', which follow the model's float dtype; an
        # embedding table loaded for int8 keeps its stored dtype until converted, and int8 codes are no float dtype
        dense_dtype = next((m.weight.dtype for m in self.modules() if isinstance(m, LlamaRMSNorm)), embeddings.dtype)
        requested = path or self.config.ternary_inference
        chosen = set()
        for module in self.modules():
            if isinstance(module, TernaryLinear) and module.packed:
                layer_path = requested
                if requested == "auto":
                    layer_path = default_inference_path(embeddings.device, module.in_features)
                if module.inference_path != layer_path:
                    module.prepare_inference(layer_path, dense_dtype)
                    release_freed_memory()  # per layer: the temporaries must not pile up into the load's peak
                chosen.add(layer_path)
        if fuse_projections(self):  # one 2-bit operator call for q/k/v and one for gate/up (see ternary_fusion.py)
            release_freed_memory()
        in_force = chosen.pop() if len(chosen) == 1 else requested
        kernel = f"; CPU 2-bit kernel: {cpu_kernel_status()}" if embeddings.device.type == "cpu" else ""
        logger.info(f"ternary inference path in force: {in_force} (requested {requested!r}){kernel}")
        return in_force

    def set_int8_activations(self, enabled: bool = True) -> None:
        """Run every ternary product with int8 activations (llama.cpp's route: per 128-column block, scale = block
        max / 127; error bound in `ternary_kernels`' docstring) or, with False, the exact int16 route again. An
        opt-in deviation from the paper for CPU decode speed; needs every ternary layer packed on the CPU 2bit path
        (ValueError otherwise, changing nothing). A compiled forward recompiles once for the new setting."""
        layers = [m for m in self.modules() if isinstance(m, TernaryLinear)]
        if enabled:
            if not layers or not all(layer.packed for layer in layers):
                raise ValueError("int8 activations need a packed TriLM: load a packed checkpoint (weight_format "
                                 "'packed') or pack this model first")
            self.prepare_ternary_inference()
            blocked = [layer for layer in layers if not layer.runs_cpu_2bit]
            if blocked:
                raise ValueError(
                    f"int8 activations are an option of the CPU 2bit path; {len(blocked)} ternary layers run "
                    f"{blocked[0].inference_path!r} on {blocked[0].weight_scale.device.type}: load the model on CPU "
                    "with ternary_inference='2bit' (or 'auto' where the C++ kernel builds)"
                )
        for layer in layers:
            layer.set_int8_activations(enabled)
        logger.info(f"ternary products use {'int8 (opt-in deviation)' if enabled else 'exact int16'} activations")

    @torch.no_grad()
    def ternary_stats(self) -> dict[str, dict[str, float | list[float]]]:
        """Per ternary layer: `zero_fraction` (share of T == 0), `plus_fraction`, `minus_fraction` and `scales`."""
        stats: dict[str, dict[str, float | list[float]]] = {}
        for name, module in self.named_modules():
            if isinstance(module, TernaryLinear):
                digits, scales = module.ternary_weight()
                counts = TernaryCounts()
                counts.add(digits, scales)
                stats[name] = {**counts.fractions(), "scales": scales.tolist()}
        return stats


def _check_packed_layers(model: nn.Module, *, where: str) -> None:
    """OSError naming the tensor if a loaded packed layer holds a negative or non-finite scale or a byte that is not
    five base-3 digits (checked here too because checkpoints from the Hub are not pre-checked on disk)."""
    for name, module in model.named_modules():
        if isinstance(module, TernaryLinear) and module.packed:
            check_scale_values(f"{name}.weight_scale", module.weight_scale, where=where)
            assert module.weight_packed is not None, "a loaded packed layer holds its packed bytes until prepared"
            check_packed_bytes(f"{name}.weight_packed", module.weight_packed, where=where)


def refuse_weight_quantization(quantization_config) -> None:
    """Refuse a `quantization_config` (BitsAndBytesConfig, GPTQConfig, ...) for a TriLM load, which would otherwise
    load and quantize nothing: transformers' quantizers leave the ternary layers and the LM head as they are."""
    if quantization_config is None:
        return
    method = getattr(quantization_config, "quant_method", None) or (
        quantization_config.get("quant_method") if isinstance(quantization_config, dict) else None
    )
    kind = type(quantization_config).__name__ if not isinstance(quantization_config, dict) else f"a {method} config"
    raise ValueError(
        f"TriLM does not take quantization_config ({kind}): its decoder linear layers already are ternary, stored at "
        "1.6 bits per weight and run by the int4/int8 kernels, and the quantizer would convert none of them (nor the "
        "LM head it skips). Load without quantization_config; quantize a FloatLM with bitsandbytes or GPTQ instead."
    )


class DecoderLayers(nn.ModuleList):
    """The decoder layers' nn.ModuleList, whose slice over all of them is the list itself: LlamaModel.forward
    iterates `self.layers[: num_hidden_layers]` on every call, and nn.ModuleList builds a new container for a slice,
    registering every layer in it again (77 us for 16 layers, measured: ~1% of a 99M decode step). Any other index
    or slice is nn.ModuleList's."""

    def __getitem__(self, idx):
        if isinstance(idx, slice) and range(len(self))[idx] == range(len(self)):
            return self
        return super().__getitem__(idx)


# The arguments TriLMForCausalLM (LlamaForCausalLM's forward) and generate() pass to the model in a decode step, and
# cache_position, which decoding loops written for earlier transformers pass (LlamaModel hands it to the cache, which
# a DynamicCache ignores); a call with any other goes to LlamaModel's forward.
_DECODE_STEP_ARGUMENTS = frozenset(
    {"input_ids", "attention_mask", "position_ids", "cache", "inputs_embeds", "use_cache", "cache_position"}
)


class TriLMModel(TriLMPreTrainedModel, LlamaModel):
    """The TriLM decoder stack: `input_ids` [batch, seq] -> `last_hidden_state` [batch, seq, hidden]."""

    def __init__(self, config: TriLMConfig) -> None:
        LlamaModel.__init__(self, config)
        self.layers.__class__ = DecoderLayers  # (same modules and state dict keys)
        for layer in self.layers:  # (an nn.ModuleList yields plain Modules: LlamaModel fills it with decoder layers)
            make_layer_ternary(cast(LlamaDecoderLayer, layer), config)

    def forward(self, *args, **kwargs):
        """LlamaModel's forward. A decode step without gradients (one token per sequence after the first, a
        DynamicCache, nothing to collect: what generate() and a cached decoding loop run) takes `_decode_step`,
        which computes the same with the layers' two-call blocks in one operator call where they all apply."""
        if not args and kwargs.keys() <= _DECODE_STEP_ARGUMENTS and self._decode_step_applies(**kwargs):
            return self._decode_step(**kwargs)
        return super().forward(*args, **kwargs)

    def _decode_step_applies(self, input_ids=None, cache=None, inputs_embeds=None, **_) -> bool:
        config = self.config
        return (
            input_ids is not None
            and inputs_embeds is None
            and input_ids.dim() == 2
            and input_ids.shape[1] == 1
            and type(cache) is DynamicCache
            and cache.get_seq_length() > 0
            and not torch.is_grad_enabled()
            and not self.training
            and ternary_kernels.forward_kernel is not None
            and not config.output_attentions
            and not config.output_hidden_states
            and config.return_dict is not False
        )

    def _decode_step(
        self,
        input_ids: torch.LongTensor,
        cache: DynamicCache,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool | None = None,
        inputs_embeds: None = None,
        cache_position: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPast:
        """LlamaModel.forward's steps for one token per sequence (input_ids [batch, 1]) with a filled cache, the
        layers in one `decode_layers` call where `decode_all_layers` allows it, else one by one as LlamaModel runs
        them (tests/test_inference.py checks both against LlamaModel.forward, bit for bit)."""
        config = self.config
        hidden_states = self.embed_tokens(input_ids)  # [batch, 1, hidden]
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length()
            position_ids = (torch.arange(1, device=hidden_states.device) + past_seen_tokens).unsqueeze(0)
        # (sdpa, one new token per sequence and no padding mask: it sees every cached token, which is no mask - what
        # create_causal_mask concludes too, in ~80 us a step)
        causal_mask = None
        if attention_mask is not None or config._attn_implementation != "sdpa":
            causal_mask = create_causal_mask(
                config=config,
                inputs_embeds=hidden_states,
                attention_mask=attention_mask,
                cache=cache,
                position_ids=position_ids,
            )
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        layers = self.layers[: config.num_hidden_layers]
        stepped = decode_all_layers(layers, hidden_states, position_embeddings, causal_mask, cache)
        if stepped is not None:
            hidden_states = stepped
        else:
            use_cache = config.use_cache if use_cache is None else use_cache
            for decoder_layer in layers:
                hidden_states = decoder_layer(
                    hidden_states,
                    attention_mask=causal_mask,
                    position_embeddings=position_embeddings,
                    position_ids=position_ids,
                    cache=cache,
                    use_cache=use_cache,
                )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache)


class TriLMForCausalLM(TriLMPreTrainedModel, LlamaForCausalLM):
    """TriLM with its (untied, floating-point) LM head: `input_ids` [batch, seq] -> `logits` [batch, seq, vocab]."""

    def __init__(self, config: TriLMConfig) -> None:
        LlamaPreTrainedModel.__init__(self, config)
        self.model = TriLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    @torch.no_grad()
    def from_llama(cls, llama: LlamaForCausalLM) -> TriLMForCausalLM:
        """A packed TriLM from an original release model (`SpectraSuite/TriLM_*_Unpacked`): a `LlamaForCausalLM`
        whose decoder linears hold g_s * T. Scale shards come from `pretraining_model_parallel` in its config (1 if
        absent); T and the scales are recovered exactly. Raises ValueError naming a tensor that is not ternary."""
        config_dict = llama.config.to_dict()
        for key in (*LOADING_KEYS, "dtype", "torch_dtype"):
            config_dict.pop(key, None)
        config = TriLMConfig(**config_dict, weight_format="packed")
        with torch.device("meta"):
            model = cls(config)
        float_state = {
            key: value
            for key, value in llama.state_dict().items()
            if not any(f".{path}." in key for path in TERNARY_SHARD_DIM)
        }
        model.load_state_dict(float_state, strict=False, assign=True)
        model.model.rotary_emb = llama.model.rotary_emb
        for index, (layer, source) in enumerate(zip(model.model.layers, llama.model.layers, strict=True)):
            for path, shard_dim in TERNARY_SHARD_DIM.items():
                name = f"model.layers.{index}.{path}.weight"
                weight = source.get_submodule(path).weight
                digits, scales = recover_ternary(weight, config.pretraining_model_parallel, shard_dim, name)
                parent_name, child_name = path.split(".")
                packed = TernaryLinear.from_ternary(digits, scales, shard_dim=shard_dim, eps=config.ternary_eps)
                setattr(layer.get_submodule(parent_name), child_name, packed)
        model.generation_config = llama.generation_config
        return model.eval()


TriLMConfig.register_for_auto_class()
TriLMModel.register_for_auto_class("AutoModel")
TriLMForCausalLM.register_for_auto_class("AutoModelForCausalLM")
