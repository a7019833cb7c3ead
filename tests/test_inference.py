"""Packed TriLM inference: exact reload, the dense/int8/int4 paths against a float64 Llama reference, no latent
weights after loading, LoRA on ternary layers, and packed checkpoints as remote code."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from test_ternary import reference_ternary_weight  # g * T by the paper's formula, float64
from transformers import LlamaConfig, LlamaForCausalLM

from spectra_hf import TernaryLinear, TriLMForCausalLM
from spectra_hf.modeling.configuration_trilm import without_trilm_keys
from spectra_hf.suite import config_for
from spectra_hf.testing.remote_code import load_without_spectra_hf

LAYOUT = {"q_proj": 0, "k_proj": 0, "v_proj": 0, "o_proj": 1, "gate_proj": 0, "up_proj": 0, "down_proj": 1}


def llama_reference(latent: TriLMForCausalLM) -> LlamaForCausalLM:
    """A float64 LlamaForCausalLM whose linears hold the paper's g * T of `latent`'s latent weights."""
    config = latent.config
    shards = config.pretraining_model_parallel
    architecture = {
        k: v for k, v in without_trilm_keys(config.to_dict()).items() if k not in ("model_type", "auto_map")
    }
    llama = LlamaForCausalLM(LlamaConfig(**architecture))
    state = {k: v.double() for k, v in latent.state_dict().items()}
    for i in range(config.num_hidden_layers):
        attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        qkv = reference_ternary_weight([state[f"{attn}.{p}.weight"] for p in ("q_proj", "k_proj", "v_proj")], shards, 0)
        for p, weight in zip(("q_proj", "k_proj", "v_proj"), qkv, strict=True):
            state[f"{attn}.{p}.weight"] = weight
        for prefix, p in ((attn, "o_proj"), (mlp, "gate_proj"), (mlp, "up_proj"), (mlp, "down_proj")):
            name = f"{prefix}.{p}.weight"
            state[name] = reference_ternary_weight([state[name]], shards, LAYOUT[p])[0]
    llama.load_state_dict(state)
    return llama.double().eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(latent model, its packed checkpoint directory, input ids, float64 reference logits) for a 2-shard TriLM."""
    torch.manual_seed(0)
    latent = TriLMForCausalLM(config_for("TriLM_1.1B", tiny=True)).eval()
    directory = tmp_path_factory.mktemp("packed")
    latent.save_pretrained(directory, weight_format="packed")
    ids = torch.randint(0, latent.config.vocab_size, (2, 11))
    with torch.no_grad():
        reference = llama_reference(latent)(ids).logits
    return latent, directory, ids, reference


def test_latent_saved_packed_reloads_to_identical_ternary_weights_and_logits(saved, tmp_path) -> None:
    latent, directory, ids, reference = saved
    assert latent.config.weight_format == "latent"  # saving packed does not change the model
    packed = TriLMForCausalLM.from_pretrained(directory, ternary_inference="dense", dtype=torch.float32)
    assert packed.config.weight_format == "packed"
    for (name, a), (_, b) in zip(latent.named_modules(), packed.named_modules(), strict=True):
        if isinstance(a, TernaryLinear):
            (digits_a, scales_a), (digits_b, scales_b) = a.ternary_weight(), b.ternary_weight()
            assert torch.equal(digits_a, digits_b) and torch.equal(scales_a, scales_b), name
    with torch.no_grad():
        torch.testing.assert_close(packed(ids).logits, latent(ids).logits, rtol=0, atol=0)
        torch.testing.assert_close(packed(ids).logits.double(), reference, rtol=1e-5, atol=1e-5)
    packed.save_pretrained(tmp_path)  # packed again from the resident dense weights
    again = TriLMForCausalLM.from_pretrained(tmp_path, ternary_inference="dense", dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, latent(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize(
    "path, weight_dtype, bytes_per_weight, tolerance",
    # int8 / int4 run in bfloat16; 2bit accumulates in fp32 (float32 activations stay float32)
    [("int8", torch.int8, 1, 2e-2), ("int4", torch.uint8, 0.5, 2e-2), ("2bit", torch.uint8, 0.25, 1e-5)],
)
def test_weight_only_paths_match_the_reference_and_stay_small(
    saved, path, weight_dtype, bytes_per_weight, tolerance
) -> None:
    _latent, directory, ids, reference = saved
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference=path, dtype=torch.float32)
    for module in model.modules():
        if isinstance(module, TernaryLinear):
            assert module.inference_path == path and module.weight_packed is None
            kernel = module.weight_kernel
            assert kernel.dtype == weight_dtype
            padded_in = -(-module.in_features // 128) * 128 if path == "2bit" else module.in_features
            assert kernel.numel() * kernel.element_size() == padded_in * module.out_features * bytes_per_weight
    with torch.no_grad():
        logits = model(ids).logits.double()
    torch.testing.assert_close(logits, reference, rtol=0, atol=tolerance * reference.abs().max().item())


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad_mode_on"])
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_static_cache_and_torch_compile_decode_like_eager(saved, backend, grad) -> None:
    """The README's static cache + torch.compile route: the 2-bit kernel is a C++ torch operator, so the whole
    forward compiles as one graph (fullgraph=True fails on any graph break), with grad mode on (as users call a
    model) or off, and decodes the tokens eager decoding gives."""
    from transformers import StaticCache

    _, directory, ids, _ = saved
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference="2bit", dtype=torch.float32)
    prompt = ids[:1, :6]

    def greedy(step, steps: int = 4) -> tuple[list[int], torch.Tensor]:
        cache = StaticCache(config=model.config, max_cache_len=16)
        with torch.set_grad_enabled(grad):
            out = model(prompt, cache=cache, cache_position=torch.arange(prompt.shape[1]))
            tokens, logits = [], []
            for i in range(steps):
                token = out.logits[:, -1:].argmax(-1)
                tokens.append(int(token))
                out = step(token, cache=cache, cache_position=torch.tensor([prompt.shape[1] + i]))
                logits.append(out.logits[:, -1].detach())
        return tokens, torch.cat(logits)

    torch._dynamo.reset()
    compiled = torch.compile(model.forward, fullgraph=True, dynamic=False, backend=backend)
    eager_tokens, eager_logits = greedy(model.forward)
    compiled_tokens, compiled_logits = greedy(compiled)
    assert compiled_tokens == eager_tokens
    torch.testing.assert_close(compiled_logits, eager_logits, rtol=1e-4, atol=1e-4 * eager_logits.abs().max().item())


def test_fused_sibling_projections_give_the_per_layer_outputs_without_more_memory(saved) -> None:
    """On the CPU 2-bit path q/k/v and gate/up are one operator call each, returning every member's output
    (ternary_fusion.py): the logits are those of per-layer calls bit for bit, the fused layers' 2-bit rows are views
    of one tensor (no second copy), and a member called alone or after being re-prepared computes its own product."""
    from spectra_hf.modeling.ternary_fusion import FusedProjectionAttention, FusedProjectionMLP, FusedProjections

    _, directory, ids, reference = saved
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference="2bit", dtype=torch.float32)
    attention, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert isinstance(attention, FusedProjectionAttention) and isinstance(mlp, FusedProjectionMLP)
    group = attention.q_proj._fused
    assert group is not None and group is attention.k_proj._fused is attention.v_proj._fused
    assert mlp.gate_proj._fused is mlp.up_proj._fused is not None and mlp.down_proj._fused is None
    storage = group.kernel.untyped_storage().data_ptr()
    assert all(p.weight_kernel.untyped_storage().data_ptr() == storage for p in (attention.k_proj, attention.v_proj))
    assert group.kernel.numel() == sum(p.weight_kernel.numel() for p in (attention.q_proj, attention.k_proj,
                                                                         attention.v_proj))
    with torch.no_grad():
        fused_logits = model(ids).logits
        x = torch.randn(3, attention.k_proj.in_features)
        alone = attention.k_proj(x)  # a member called alone
        assert torch.equal(alone, attention.k_proj._weight_only_matmul(x))
        assert all(torch.equal(a, b) for a, b in zip(group(x), (p(x) for p in group.layers), strict=True))
        for module in model.modules():
            if isinstance(module, TernaryLinear) and module._fused is not None:
                module._fused.dissolve()
        per_layer_logits = model(ids).logits
    # (with the groups the blocks run as two operator calls, whose RMSNorm means and SiLU are evaluated in another
    # order than torch's vectorized loops: the last fp32 bits may differ; test_two_call_decoder_block covers that)
    torch.testing.assert_close(fused_logits, per_layer_logits, rtol=0, atol=1e-6 * per_layer_logits.abs().max().item())
    torch.testing.assert_close(fused_logits.double(), reference, rtol=0, atol=1e-5 * reference.abs().max().item())
    # re-preparing a member dissolves its group; fusing needs every member on the 2-bit path
    assert FusedProjections.fuse(attention.q_proj, attention.k_proj, attention.v_proj) is not None
    attention.k_proj.prepare_inference("int8", torch.float32)
    assert attention.q_proj._fused is None and attention.v_proj._fused is None
    assert FusedProjections.fuse(attention.q_proj, attention.k_proj, attention.v_proj) is None
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, fused_logits, rtol=0, atol=2e-2 * fused_logits.abs().max().item())


def _greedy_logits(model, ids: torch.Tensor, steps: int = 5, **kwargs) -> tuple[list[list[int]], torch.Tensor]:
    """Prefill ids [batch, seq], then `steps` greedy decode steps with a DynamicCache: (tokens per row, the logits of
    every position [batch, seq + steps, vocab] as float64)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        out = model(ids, cache=cache, **kwargs)
        logits, tokens = [out.logits], []
        for _ in range(steps):
            token = out.logits[:, -1:].argmax(-1)  # [batch, 1]
            tokens.append(token)
            out = model(token, cache=cache, **kwargs)
            logits.append(out.logits)
    return torch.cat(tokens, 1).tolist(), torch.cat(logits, 1).double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_two_call_decoder_block_computes_the_per_module_forward(saved, dtype) -> None:
    """A decoder block whose projections are on the CPU 2-bit path runs as two C++ operator calls around the
    attention (ternary_fusion.FusedDecoderLayer): prefill and cached decode give the per-module forward's logits (to
    the last bits of fp32 reductions; in bf16 / fp16, where both round every step, within a rounding of the dtype)
    and its greedy tokens, and the float64 reference's in fp32. A hook on a module of the block, or gradients, run
    the per-module forward instead (the hook is called, also on a member of a fused q/k/v group; the logits are then
    the per-module ones bit for bit)."""
    from spectra_hf.modeling.ternary_fusion import FusedDecoderLayer, LlamaDecoderLayer

    _, directory, ids, reference = saved
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference="2bit", dtype=dtype)
    layers = list(model.model.layers)
    assert all(type(layer) is FusedDecoderLayer for layer in layers)
    with torch.profiler.profile() as profile:
        block_tokens, block_logits = _greedy_logits(model, ids)
    calls = {event.key.split("::")[-1]: event.count for event in profile.key_averages()}
    # the prefill: one call of each per layer; each of the 5 decode steps: every layer in one call (decode_layers,
    # which runs these same blocks and decode_attention inside)
    assert calls.get("attention_inputs") == calls.get("attention_output_and_mlp") == len(layers)
    assert calls.get("decode_layers") == 5 and "decode_attention" not in calls
    for layer in layers:
        layer.__class__ = LlamaDecoderLayer
    module_tokens, module_logits = _greedy_logits(model, ids)
    scale = module_logits.abs().max().item()
    tolerance = {torch.float32: 1e-6, torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
    assert block_tokens == module_tokens
    torch.testing.assert_close(block_logits, module_logits, rtol=0, atol=tolerance * scale)
    if dtype == torch.float32:
        torch.testing.assert_close(
            block_logits[:, : ids.shape[1]], reference, rtol=0, atol=1e-5 * reference.abs().max().item()
        )
    for layer in layers:
        layer.__class__ = FusedDecoderLayer
    seen = []
    handle = layers[1].post_attention_layernorm.register_forward_hook(lambda *args: seen.append(1))
    try:
        with torch.no_grad():
            hooked = model(ids).logits
    finally:
        handle.remove()
    assert len(seen) == 1
    with torch.no_grad():
        layers[1].__class__ = LlamaDecoderLayer
        mixed = model(ids).logits  # layer 1 per module, the others in two calls, as with the hook
        layers[1].__class__ = FusedDecoderLayer
    assert torch.equal(hooked, mixed)
    # a hook on a member of a fused group (q_proj here) is called too: its block, and its group, run per module
    handle = layers[1].self_attn.k_proj.register_forward_pre_hook(lambda *args: seen.append(2))
    try:
        with torch.no_grad():
            hooked = model(ids).logits
            layers[1].__class__ = LlamaDecoderLayer  # the fused-projection attention alone honours it as well
            model(ids)
            layers[1].__class__ = FusedDecoderLayer
    finally:
        handle.remove()
    assert seen == [1, 2, 2]
    assert torch.equal(hooked, mixed)
    with torch.profiler.profile() as profile, torch.enable_grad():
        model(ids[:1, :4]).logits.sum().backward()  # (the embeddings require grad: so do the hidden states)
    assert "attention_inputs" not in {event.key.split("::")[-1] for event in profile.key_averages()}


def test_two_call_decoder_block_follows_parts_replaced_after_loading(saved) -> None:
    """The two-call block computes transformers' RMSNorm and SiLU in C++: a norm or activation replaced after loading
    (another class, a GELU), or a hook on the activation, sends that block to the per-module forward, whose result
    the replacement decides, instead of being silently skipped; putting the originals back restores the two calls."""
    from spectra_hf.modeling.ternary_fusion import FusedDecoderLayer, LlamaDecoderLayer, LlamaRMSNorm

    class ScaledNorm(LlamaRMSNorm):
        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(hidden_states)

    _, directory, ids, _ = saved
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference="2bit", dtype=torch.float32)
    layer = model.model.layers[1]
    assert type(layer) is FusedDecoderLayer

    def logits_and_block_calls() -> tuple[torch.Tensor, int]:
        with torch.no_grad(), torch.profiler.profile() as profile:
            logits = model(ids).logits
        calls = sum(event.count for event in profile.key_averages() if event.key.endswith("::attention_inputs"))
        return logits, calls

    def per_module_logits() -> torch.Tensor:  # layer 1 per module, the others in two calls
        layer.__class__ = LlamaDecoderLayer
        try:
            with torch.no_grad():
                return model(ids).logits
        finally:
            layer.__class__ = FusedDecoderLayer

    original_logits, calls = logits_and_block_calls()
    layers = model.config.num_hidden_layers
    assert calls == layers
    silu, norm = layer.mlp.act_fn, layer.input_layernorm
    replacements = [
        (layer.mlp, "act_fn", torch.nn.GELU()),
        (layer, "input_layernorm", ScaledNorm(norm.weight.shape[0], eps=norm.variance_epsilon)),
    ]
    for owner, name, replacement in replacements:
        original = getattr(owner, name)
        replacement.load_state_dict(original.state_dict())
        setattr(owner, name, replacement)
        logits, calls = logits_and_block_calls()
        assert calls == layers - 1  # the block with the replaced part runs per module
        assert torch.equal(logits, per_module_logits())
        assert not torch.allclose(logits, original_logits)  # (the replacement changes the result)
        setattr(owner, name, original)
        logits, calls = logits_and_block_calls()
        assert calls == layers and torch.equal(logits, original_logits)
    seen = []
    handle = silu.register_forward_hook(lambda *args: seen.append(1))
    try:
        logits, calls = logits_and_block_calls()
    finally:
        handle.remove()
    assert seen == [1] and calls == layers - 1
    torch.testing.assert_close(logits, original_logits, rtol=0, atol=1e-6 * original_logits.abs().max().item())


def test_decoder_layers_slice_over_all_layers_is_the_list_itself(saved) -> None:
    """LlamaModel.forward iterates `layers[: num_hidden_layers]` on every call: TriLM's layer list answers that slice
    with itself instead of a new nn.ModuleList; any other slice or index is nn.ModuleList's, and the state dict keys
    are unchanged."""
    from transformers import LlamaConfig, LlamaModel

    _, directory, ids, _ = saved
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference="2bit", dtype=torch.float32)
    layers = model.model.layers
    count = model.config.num_hidden_layers
    assert layers[:count] is layers and layers[0:count:1] is layers and layers[: count + 5] is layers
    for partial in (layers[1:], layers[::2], layers[:-1]):
        assert type(partial) is type(layers) and partial is not layers
    assert list(layers[1:]) == list(layers)[1:] and layers[-1] is list(layers)[-1]
    stock = LlamaModel(LlamaConfig(**{**model.config.to_dict(), "architectures": None}))
    assert [key for key in model.model.state_dict() if key.startswith("layers.0.input")] == [
        key for key in stock.state_dict() if key.startswith("layers.0.input")
    ]
    with torch.no_grad(), torch.profiler.profile() as profile:
        model(ids)
    calls = sum(event.count for event in profile.key_averages() if event.key.endswith("::attention_inputs"))
    assert calls == count  # every layer still runs


def _decode_with(model, ids: torch.Tensor, attention_mask: torch.Tensor | None, steps: int, *, llama_forward: bool):
    """Greedy decoding of ids [batch, seq] with a DynamicCache, each step through TriLMModel.forward or through
    transformers' LlamaModel.forward on the same model: (logits of every step [batch, steps, vocab], the cache, how many
    times each C++ operator ran in the decode steps)."""
    from transformers import DynamicCache
    from transformers.models.llama.modeling_llama import LlamaModel

    cache = DynamicCache(config=model.config)
    mask = attention_mask
    with torch.no_grad():
        out = model(ids, attention_mask=mask, cache=cache)
        logits = []
        with torch.profiler.profile() as profile:
            for _ in range(steps):
                token = out.logits[:, -1:].argmax(-1)  # [batch, 1]
                if mask is not None:
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                if llama_forward:
                    hidden = LlamaModel.forward(model.model, input_ids=token, attention_mask=mask, cache=cache)
                    out = type(out)(logits=model.lm_head(hidden.last_hidden_state))
                else:
                    out = model(token, attention_mask=mask, cache=cache)
                logits.append(out.logits)
    calls = {}
    for event in profile.key_averages():
        calls[event.key.split("::")[-1]] = event.count
    return torch.cat(logits, 1), cache, calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_step_runs_every_layer_in_one_call_as_llama_model_forward_does(saved, dtype) -> None:
    """A decode step of a packed TriLM on the CPU 2-bit path (one token per sequence, a DynamicCache, no gradients)
    runs all its layers in one C++ call (`decode_layers`): the logits and every layer's cached keys and values equal,
    bit for bit, what transformers' LlamaModel.forward computes on the same model step by step (its layers one
    two-call block each), for a batch with a left-padded row too; generate() takes it."""
    _, directory, ids, _ = saved
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference="2bit", dtype=dtype)
    padding = torch.ones_like(ids)
    padding[0, :3] = 0  # row 0 left-padded
    layers = model.config.num_hidden_layers
    for mask in (None, padding):
        fast_logits, fast_cache, calls = _decode_with(model, ids, mask, 4, llama_forward=False)
        assert calls.get("decode_layers") == 4 and "attention_inputs" not in calls
        llama_logits, llama_cache, llama_calls = _decode_with(model, ids, mask, 4, llama_forward=True)
        assert llama_calls.get("attention_inputs") == 4 * layers and "decode_layers" not in llama_calls
        assert torch.equal(fast_logits, llama_logits)
        for fast_layer, llama_layer in zip(fast_cache.layers, llama_cache.layers, strict=True):
            assert fast_layer.keys.shape[2] == ids.shape[1] + 4
            assert torch.equal(fast_layer.keys, llama_layer.keys) and torch.equal(fast_layer.values, llama_layer.values)
    token, position = fast_logits[:, -1:].argmax(-1), torch.tensor([fast_cache.get_seq_length()])
    with torch.no_grad(), torch.profiler.profile() as profile:  # (loops written for earlier transformers pass this)
        model(token, attention_mask=torch.cat([padding, torch.ones(2, 5, dtype=padding.dtype)], 1), cache=fast_cache,
              cache_position=position)
    assert sum(e.count for e in profile.key_averages() if e.key.endswith("::decode_layers")) == 1
    with torch.profiler.profile() as profile:
        generated = model.generate(ids, attention_mask=padding, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert sum(e.count for e in profile.key_averages() if e.key.endswith("::decode_layers")) == 3  # after the prefill
    # (generate's first new token comes from the prefill's logits: the steps' logits give the three after it)
    assert generated[:, ids.shape[1] + 1 :].tolist() == fast_logits[:, :3].argmax(-1).tolist()


def test_decode_step_in_one_call_leaves_what_it_cannot_honour_to_the_layers(saved) -> None:
    """The one-call decode step applies only where it computes what the layers would: a hook on a layer or on a
    module inside one, a global module hook, requested hidden states or attentions, gradients, a static cache or
    eager attention send the step through the layers (the hook is called, the outputs are returned, the logits are
    the same up to the last bits of fp32 reductions)."""
    from transformers import DynamicCache

    _, directory, ids, _ = saved
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference="2bit", dtype=torch.float32)
    reference_logits, _, _ = _decode_with(model, ids, None, 2, llama_forward=False)
    seen = []

    def hook(*args):
        seen.append(1)

    layer = model.model.layers[1]
    for register in (
        layer.register_forward_hook,
        layer.mlp.down_proj.register_forward_pre_hook,
        layer.input_layernorm.register_forward_hook,
        torch.nn.modules.module.register_module_forward_hook,
    ):
        handle = register(hook)
        try:
            logits, _, calls = _decode_with(model, ids, None, 2, llama_forward=False)
        finally:
            handle.remove()
        assert "decode_layers" not in calls and seen, register
        # (a block with a hooked module runs per module: fp32 reductions in another order, the last bits may differ)
        scale = reference_logits.abs().max().item()
        torch.testing.assert_close(logits, reference_logits, rtol=0, atol=1e-6 * scale)
        seen.clear()
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        out = model(ids, cache=cache)
        with torch.profiler.profile() as profile:
            step = model(out.logits[:, -1:].argmax(-1), cache=cache, output_hidden_states=True)
    assert len(step.hidden_states) == model.config.num_hidden_layers + 1
    torch.testing.assert_close(step.logits, reference_logits[:, :1], rtol=0, atol=1e-6 * scale)
    assert not any(e.key.endswith("::decode_layers") for e in profile.key_averages())
    # transformers' capturing hooks stay installed, idle: the next step is one call again
    with torch.no_grad(), torch.profiler.profile() as profile:
        model(step.logits.argmax(-1), cache=cache)
    assert any(e.key.endswith("::decode_layers") for e in profile.key_averages())
    cache = DynamicCache(config=model.config)
    with torch.profiler.profile() as profile:
        out = model(ids, cache=cache)  # gradients enabled: the embeddings require grad
        out = model(out.logits[:, -1:].argmax(-1), cache=cache)
    assert not any(e.key.endswith("::decode_layers") for e in profile.key_averages())
    torch.testing.assert_close(out.logits.detach(), reference_logits[:, :1], rtol=0, atol=1e-5)
    with torch.profiler.profile() as profile:
        static = model.generate(ids, cache_implementation="static", max_new_tokens=2, do_sample=False)
    assert not any(e.key.endswith("::decode_layers") for e in profile.key_averages())
    assert static[:, ids.shape[1] + 1 :].tolist() == reference_logits[:, :1].argmax(-1).tolist()
    model.set_attn_implementation("eager")  # (decode_layers' attention is sdpa's)
    logits, _, calls = _decode_with(model, ids, None, 2, llama_forward=False)
    assert "decode_layers" not in calls
    torch.testing.assert_close(logits, reference_logits, rtol=0, atol=1e-5 * scale)


def test_decode_step_in_one_call_follows_changes_to_the_model(saved) -> None:
    """What the one-call decode step settles once (the layers' tensors and shapes) is settled again when the model
    changes: an activation replaced after loading sends the step through the layers, putting it back restores the
    one call, a norm weight assigned anew and int8 activations switched on afterwards are used by it; each time the
    logits equal LlamaModel's forward on the same model, bit for bit."""
    _, directory, ids, _ = saved
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference="2bit", dtype=torch.float32)
    mlp = model.model.layers[1].mlp
    silu = mlp.act_fn

    def one_call_logits() -> tuple[torch.Tensor, bool]:
        logits, _, calls = _decode_with(model, ids, None, 2, llama_forward=False)
        assert torch.equal(logits, _decode_with(model, ids, None, 2, llama_forward=True)[0])
        return logits, "decode_layers" in calls

    exact, one_call = one_call_logits()
    assert one_call
    mlp.act_fn = torch.nn.GELU()
    gelu, one_call = one_call_logits()
    assert not one_call and not torch.allclose(gelu, exact)
    mlp.act_fn = silu
    again, one_call = one_call_logits()
    assert one_call and torch.equal(again, exact)
    norm = model.model.layers[0].input_layernorm  # a new parameter object, not an in-place change
    norm.weight = torch.nn.Parameter(norm.weight.detach() * 2)
    doubled, one_call = one_call_logits()
    assert one_call and not torch.equal(doubled, exact)
    norm.weight = torch.nn.Parameter(norm.weight.detach() / 2)
    model.set_int8_activations(True)
    int8, one_call = one_call_logits()
    assert one_call and not torch.equal(int8, exact)


def test_model_copied_after_decoding_decodes_with_its_own_tensors(saved) -> None:
    """The one-call decode step keeps its settled plan on the model (tensors of the blocks, no kernel object): a deep
    copy made after decoding runs the step in one call with the copy's own tensors (changing the original's weights
    afterwards leaves the copy's logits as they were)."""
    import copy

    _, directory, ids, _ = saved
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference="2bit", dtype=torch.float32)
    logits, _, calls = _decode_with(model, ids, None, 2, llama_forward=False)
    assert calls.get("decode_layers") == 2
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight.mul_(2)  # (the original only)
    twin_logits, _, calls = _decode_with(twin, ids, None, 2, llama_forward=False)
    assert calls.get("decode_layers") == 2 and torch.equal(twin_logits, logits)
    assert not torch.equal(_decode_with(model, ids, None, 2, llama_forward=False)[0], logits)


def test_decode_layers_refuses_malformed_inputs_with_a_message(saved) -> None:
    """The operator names what is wrong with its inputs (a missing block tensor, counts that do not match the
    layers) rather than reading past them."""
    from spectra_hf.modeling import ternary_kernels

    kernel = ternary_kernels.cpu_kernel()
    assert kernel is not None
    hidden = torch.zeros(1, 1, 8)
    cos = sin = torch.ones(1, 1, 4)
    cache = torch.zeros(1, 2, 3, 4)
    with pytest.raises(RuntimeError, match="12 block tensors, keys, values and two norm epsilons per layer"):
        kernel.decode_layers(hidden, [None] * 11, [cache], [cache], cos, sin, None, [1e-5, 1e-5], [8, 8, 8], [8, 8], 4,
                             0.5, 16)
    with pytest.raises(RuntimeError, match="block tensor 0 of layer 0 is None"):
        kernel.decode_layers(hidden, [None] * 12, [cache], [cache], cos, sin, None, [1e-5, 1e-5], [8, 8, 8], [8, 8], 4,
                             0.5, 16)


def test_decode_attention_serves_padded_batches_and_static_caches(saved) -> None:
    """A decode step's attention is one C++ call (`decode_attention`) with transformers' boolean masks too: a
    left-padded batch decodes each row's own greedy tokens (as generated alone), through the one-call decode step
    (`decode_layers`) and through the layers one by one (a hook on each layer, which keeps its block in two calls but
    not the step in one), and a static cache (its unwritten slots masked) the dynamic cache's."""
    _, directory, ids, _ = saved
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference="2bit", dtype=torch.float32)
    short, long = ids[0, :4], ids[1, :7]
    batch = torch.stack([torch.cat([torch.zeros(3, dtype=ids.dtype), short]), long])  # [2, 7], row 0 left-padded
    padding = torch.ones_like(batch)
    padding[0, :3] = 0
    settings = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    alone = [model.generate(row[None], **settings)[0, -5:].tolist() for row in (short, long)]
    layers = model.model.layers
    for operator, calls_expected in (("decode_layers", 4), ("decode_attention", 4 * len(layers))):
        hooks = [layer.register_forward_hook(lambda *args: None) for layer in layers if operator == "decode_attention"]
        try:
            with torch.profiler.profile() as profile:
                together = model.generate(batch, attention_mask=padding, **settings)[:, -5:]
        finally:
            for hook in hooks:
                hook.remove()
        calls = {event.key.split("::")[-1]: event.count for event in profile.key_averages()}
        assert calls.get(operator) == calls_expected  # 4 decode steps after the prefill
        assert together.tolist() == alone
    with torch.profiler.profile() as profile:
        static = model.generate(long[None], cache_implementation="static", **settings)[0, -5:]
    assert any(event.key.endswith("::decode_attention") for event in profile.key_averages())
    assert static.tolist() == alone[1]


def test_cpu_decode_head_is_the_linear_head_within_a_rounding(saved) -> None:
    """On the CPU 2-bit path the LM head computes a few tokens' logits with the C++ GEMV (`dense_mm`): within one
    rounding of torch's matmul in bf16, used for decode steps (not with gradients, nor for more tokens than its cap),
    and a tied or untied head keeps its weight (same parameter, same state dict)."""
    from spectra_hf.modeling.ternary_fusion import DENSE_MM_MAX_TOKENS, CpuDecodeHead

    directory = saved[1]
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference="2bit", dtype=torch.bfloat16)
    head = model.lm_head
    assert type(head) is CpuDecodeHead
    assert "lm_head.weight" in model.state_dict() or model.config.tie_word_embeddings
    x = torch.randn(3, 1, head.in_features, dtype=torch.bfloat16)  # [batch, seq, hidden]
    with torch.no_grad(), torch.profiler.profile() as profile:
        logits = head(x)
    assert any(event.key.endswith("::dense_mm") for event in profile.key_averages())
    reference = torch.nn.functional.linear(x, head.weight)
    torch.testing.assert_close(logits, reference, rtol=2**-7, atol=1e-3)
    too_many = torch.randn(1, DENSE_MM_MAX_TOKENS[torch.bfloat16] + 1, head.in_features, dtype=torch.bfloat16)
    with torch.profiler.profile() as profile:
        with torch.no_grad():
            head(too_many)
        head(x)  # gradients enabled: the weight requires grad
    assert not any(event.key.endswith("::dense_mm") for event in profile.key_averages())


def test_two_call_decoder_block_returns_attentions_when_asked(saved) -> None:
    """output_attentions=True collects every block's attention weights through transformers' hooks, which the
    two-call block leaves to the per-module forward; afterwards (the hooks stay installed) blocks run in two calls
    again."""
    _, directory, ids, _ = saved
    model = TriLMForCausalLM.from_pretrained(
        directory, ternary_inference="2bit", dtype=torch.float32, attn_implementation="eager"
    )
    with torch.no_grad():
        out = model(ids, output_attentions=True)
        assert len(out.attentions) == model.config.num_hidden_layers
        assert out.attentions[0].shape == (2, model.config.num_attention_heads, ids.shape[1], ids.shape[1])
        with torch.profiler.profile() as profile:
            again = model(ids).logits
    assert any(event.key.endswith("::attention_inputs") for event in profile.key_averages())
    torch.testing.assert_close(again, out.logits, rtol=0, atol=1e-6 * out.logits.abs().max().item())


def test_auto_path_and_switching_paths(saved) -> None:
    _, directory, ids, _ = saved
    model = TriLMForCausalLM.from_pretrained(directory)
    assert model.config.ternary_inference == "auto"
    # CPU default: the 2-bit kernel (this machine has a C++ compiler and AVX2)
    assert {m.inference_path for m in model.modules() if isinstance(m, TernaryLinear)} == {"2bit"}
    with torch.no_grad():
        two_bit = model(ids).logits
        assert model.prepare_ternary_inference("int8") == "int8"
        assert {m.inference_path for m in model.modules() if isinstance(m, TernaryLinear)} == {"int8"}
        torch.testing.assert_close(model(ids).logits, two_bit, rtol=0, atol=1e-2 * two_bit.abs().max().item())
    with pytest.raises(ValueError, match="unknown ternary inference path"):
        TriLMForCausalLM.from_pretrained(directory, ternary_inference="int3")


def test_packed_model_cannot_be_saved_latent(saved, tmp_path) -> None:
    _, directory, _, _ = saved
    model = TriLMForCausalLM.from_pretrained(directory)
    with pytest.raises(ValueError, match="latent weights do not exist"):
        model.save_pretrained(tmp_path, weight_format="latent")


def test_in_place_packing_keeps_logits(saved) -> None:
    latent, _, ids, _ = saved
    model = TriLMForCausalLM(copy.deepcopy(latent.config))
    model.load_state_dict(latent.state_dict())
    model.eval().pack_ternary_weights()
    assert not any(p.is_floating_point() and p.ndim == 2 and ".layers." in n for n, p in model.named_parameters())
    with torch.no_grad():
        model.prepare_ternary_inference("dense")
        torch.testing.assert_close(model(ids).logits, latent(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("path", ["latent", "dense", "int8", "2bit"])
def test_lora_wraps_ternary_layers(saved, path) -> None:
    latent, directory, ids, _ = saved
    if path == "latent":
        model = TriLMForCausalLM(copy.deepcopy(latent.config))
        model.load_state_dict(latent.state_dict())
    else:
        model = TriLMForCausalLM.from_pretrained(directory, ternary_inference=path)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    wrapped = [m for m in peft_model.modules() if type(m).__name__ == "Linear" and hasattr(m, "base_layer")]
    assert len(wrapped) == 3 * latent.config.num_hidden_layers
    assert all(isinstance(m.base_layer, TernaryLinear) for m in wrapped)
    loss = peft_model(ids, labels=ids).loss
    loss.backward()
    lora_grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)


def test_packed_checkpoint_loads_as_remote_code_without_spectra_hf(saved, tmp_path) -> None:
    _, directory, ids, _ = saved
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    (loaded,) = load_without_spectra_hf([directory], ids, work_dir=tmp_path / "remote", env=env).loads
    assert loaded.module.startswith("transformers_modules") and loaded.class_name == "TriLMForCausalLM"
    in_process = TriLMForCausalLM.from_pretrained(directory)  # the same "auto" path (2bit on CPU)
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits, in_process(ids).logits, rtol=0, atol=0)


# ------------------------------------------------------------------ a packed TriLM as a first-class PreTrainedModel

PATHS = ("dense", "int8", "int4", "2bit")
# relative to the logits' scale: the int8 / int4 kernels and bf16 / fp16 activations round to ~8-11 significant bits
PATH_TOLERANCE = {"dense": 1e-5, "2bit": 1e-5, "int8": 2e-2, "int4": 2e-2}
DTYPE_TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("path", PATHS)
def test_dtype_casts_after_loading_keep_every_path_working(saved, path) -> None:
    _, directory, ids, reference = saved
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference=path)
    casts = (
        ("float()", lambda m: m.float(), torch.float32),
        ("to(torch.float32)", lambda m: m.to(torch.float32), torch.float32),
        ("half()", lambda m: m.half(), torch.float16),
        ("bfloat16()", lambda m: m.bfloat16(), torch.bfloat16),
        ("float() again", lambda m: m.float(), torch.float32),
    )
    rounded = 0.0  # a cast to 16 bits rounds the float parts (embedding, norms, head) for good, as in any model
    for label, cast, dtype in casts:
        cast(model)
        layers = [m for m in model.modules() if isinstance(m, TernaryLinear)]
        assert {m.inference_path for m in layers} == {path}, label
        assert all(m.weight_scale.dtype == torch.float32 for m in layers), label  # exact scales survive any cast
        with torch.no_grad():
            logits = model(ids).logits
        assert logits.dtype == dtype, label
        rounded = max(rounded, DTYPE_TOLERANCE[dtype])
        tolerance = max(PATH_TOLERANCE[path], rounded)
        torch.testing.assert_close(
            logits.double(), reference, rtol=0, atol=tolerance * reference.abs().max().item(), msg=label
        )


def test_num_parameters_counts_every_ternary_weight_once(saved) -> None:
    latent, directory, _, _ = saved
    expected = sum(p.numel() for p in latent.parameters())  # the latent model's own tensors: each weight once
    config = latent.config
    lora_rank = 4
    # LoRA on q_proj: A [r, hidden] and B [q_out, r] per layer
    q_out = config.num_attention_heads * (config.hidden_size // config.num_attention_heads)
    lora = config.num_hidden_layers * lora_rank * (config.hidden_size + q_out)
    unprepared = TriLMForCausalLM(copy.deepcopy(config))
    unprepared.pack_ternary_weights()
    assert unprepared.num_parameters() == expected
    for path in PATHS:
        model = TriLMForCausalLM.from_pretrained(directory, ternary_inference=path)
        assert model.num_parameters() == expected, path
        peft_model = get_peft_model(model, LoraConfig(r=lora_rank, target_modules=["q_proj"]))
        assert peft_model.get_nb_trainable_parameters() == (lora, expected + lora), path


@pytest.mark.parametrize("path", PATHS)
def test_peft_merge_on_a_packed_trilm_is_refused_naming_merge_lora_to_float(saved, path, tmp_path) -> None:
    from spectra_hf.training.lora import merge_lora_to_float

    _, directory, ids, _ = saved
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference=path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
        tuned = peft_model(ids).logits
    for safe_merge in (False, True):
        with pytest.raises(RuntimeError, match="merge_lora_to_float"):
            peft_model.merge_and_unload(safe_merge=safe_merge)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, tuned, rtol=0, atol=0)  # nothing was changed
        merged = merge_lora_to_float(peft_model)  # the exact way out the error names
        scale = tuned.abs().max().item()
        torch.testing.assert_close(merged(ids).logits, tuned, rtol=0, atol=PATH_TOLERANCE[path] * scale + 1e-5)
    merged.save_pretrained(tmp_path)
    reloaded = type(merged).from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, merged(ids).logits, rtol=0, atol=0)


def test_int8_embeddings_are_opt_in_close_to_the_reference_and_not_saved(saved, tmp_path) -> None:
    latent, directory, ids, reference = saved
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference="2bit", int8_embeddings=True)
    assert model.get_input_embeddings().weight.dtype == torch.int8 and model.lm_head.weight.dtype == torch.int8
    assert model.num_parameters() == sum(p.numel() for p in latent.parameters())
    for cast in (lambda m: m.float(), lambda m: m.bfloat16()):
        cast(model)
        with torch.no_grad():
            logits = model(ids).logits.double()
        # int8 rows (absmax / 127) and the bf16 head kernel: a few percent of the logits' scale at most
        torch.testing.assert_close(logits, reference, rtol=0, atol=5e-2 * reference.abs().max().item())
    with pytest.raises(ValueError, match="without int8_embeddings"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_compile_for_decode_generates_the_eager_tokens_with_one_graph(saved, capsys) -> None:
    """The one switch of the fast route: generate() then decodes on a static cache through one compiled graph (later
    calls of other lengths reuse it) and gives eager greedy decoding's tokens."""
    from spectra_hf.fast_decode import compile_for_decode

    _, directory, ids, _ = saved
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference="2bit", dtype=torch.float32)
    prompt = ids[:1, :6]
    eager = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    seconds = compile_for_decode(model, max_cache_len=32)
    assert f"compiled the decode step in {seconds:.1f} s" in capsys.readouterr().out
    for new_tokens in (8, 5):
        tokens = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        assert torch.equal(tokens, eager[:, : 6 + new_tokens])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_compiled_graph_calls_the_fused_cpp_operator_once_per_group(saved) -> None:
    """Inside a torch.compile graph (no grad) a decoder block is two C++ operator calls around the attention (RMSNorm,
    q/k/v and the rotary embedding; o, the residual, RMSNorm, gate/up, SiLU, down and the residual), with no Python
    call between them; without the block's ops (per-module forward) q/k/v and gate/up are one call each, o and down
    one each."""
    from spectra_hf.modeling import ternary_kernels

    _, directory, ids, _ = saved
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference="2bit", dtype=torch.float32)
    kernel = ternary_kernels.cpu_kernel()
    if kernel is None:
        pytest.skip(f"CPU kernel: {ternary_kernels.cpu_kernel_status()}")
    calls: list[str] = []

    def recording_backend(graph_module, example_inputs):
        calls.extend(str(node.target) for node in graph_module.graph.nodes if node.op == "call_function")
        return graph_module.forward

    torch._dynamo.reset()
    compiled = torch.compile(model.forward, fullgraph=True, dynamic=False, backend=recording_backend)
    with torch.no_grad():
        logits = compiled(ids[:1, :4]).logits
        torch.testing.assert_close(logits, model(ids[:1, :4]).logits, rtol=0, atol=0)
    layers = model.config.num_hidden_layers
    for name in ("attention_inputs", "attention_output_and_mlp"):
        assert sum(call.endswith(f"{kernel.namespace}.{name}.default") for call in calls) == layers
    assert not any("ternary_mm" in call for call in calls)
    from spectra_hf.modeling.ternary_fusion import LlamaDecoderLayer

    for layer in model.model.layers:
        layer.__class__ = LlamaDecoderLayer  # the per-module forward
    calls.clear()
    torch._dynamo.reset()
    compiled = torch.compile(model.forward, fullgraph=True, dynamic=False, backend=recording_backend)
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids[:1, :4]).logits, logits, rtol=0, atol=1e-6 * logits.abs().max().item())
    assert sum(f"{kernel.namespace}.ternary_mm_fused" in call for call in calls) == 2 * layers
    assert sum(call.endswith(f"{kernel.namespace}.ternary_mm.default") for call in calls) == 2 * layers


def test_int8_activations_are_opt_in_within_a_few_percent_and_compile_like_eager(saved) -> None:
    """`int8_activations=True`: every ternary product (fused q/k/v and gate/up included) takes int8 activations,
    logits stay close to the float64 reference, the compiled forward (fullgraph, grad mode on) decodes eager's
    tokens, and switching back restores the exact route bit for bit; a latent model is refused."""
    latent, directory, ids, reference = saved
    exact = TriLMForCausalLM.from_pretrained(directory, ternary_inference="2bit", dtype=torch.float32)
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference="2bit", dtype=torch.float32,
                                             int8_activations=True)
    layers = [m for m in model.modules() if isinstance(m, TernaryLinear)]
    assert layers and all(layer.activation_bits == 8 for layer in layers)
    assert any(layer._fused is not None for layer in layers)  # the fused groups run int8 too
    with torch.no_grad():
        exact_logits, logits = exact(ids).logits.double(), model(ids).logits.double()
    assert not torch.equal(logits, exact_logits)
    torch.testing.assert_close(logits, reference, rtol=0, atol=5e-2 * reference.abs().max().item())
    prompt = ids[:1, :6]
    torch._dynamo.reset()
    compiled = torch.compile(model.forward, fullgraph=True, dynamic=False, backend="aot_eager")
    eager_out = model(prompt).logits.detach()
    compiled_out = compiled(prompt).logits  # grad mode on, as users call it (per-module blocks: see
    torch.testing.assert_close(compiled_out.detach(), eager_out, rtol=0, atol=0)  # test_two_call_decoder_block)
    with torch.no_grad():  # the two-call blocks, in the graph and eagerly
        torch.testing.assert_close(compiled(prompt).logits, model(prompt).logits, rtol=0, atol=0)
    model.set_int8_activations(False)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits.double(), exact_logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="need a packed TriLM"):
        copy.deepcopy(latent).set_int8_activations(True)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_decode_steps_write_the_cache_in_place_never_into_a_slot_another_tensor_shows(saved, mode) -> None:
    """The one-call decode step writes each new key and value into a reserved token slot of the cache's buffer (one
    buffer across steps while it has room) instead of concatenating, and only where no other tensor shows that slot:
    two caches holding the same tensors (one steps, then the other), a cropped cache and a view kept from an earlier
    step each see exactly what an independent copy sees. Under no_grad and inference_mode (which keeps no view
    relations)."""
    import copy

    from transformers import DynamicCache

    _, directory, ids, _ = saved
    model = TriLMForCausalLM.from_pretrained(directory, ternary_inference="2bit", dtype=torch.float32)

    def step(cache, token: torch.Tensor) -> torch.Tensor:
        with mode(), torch.profiler.profile() as profile:
            logits = model(token, cache=cache).logits
        assert any(e.key.endswith("::decode_layers") for e in profile.key_averages())
        return logits

    cache = DynamicCache(config=model.config)
    with mode():
        first = model(ids, cache=cache).logits[:, -1:].argmax(-1)  # [batch, 1]
    step(cache, first)  # (the first step copies the prefill's keys into a buffer with room)
    buffer = cache.layers[0].keys.data_ptr()
    kept = cache.layers[0].keys  # a view from this step, which later steps must not change
    kept_values = kept.clone()
    a, b, c = (torch.full_like(first, token) for token in (5, 7, 9))
    snapshot = copy.deepcopy(cache)
    shared = copy.deepcopy(cache)
    for mine, theirs in zip(shared.layers, cache.layers, strict=True):
        mine.keys, mine.values = theirs.keys, theirs.values  # the very same tensors
    after_a = step(cache, a)
    assert cache.layers[0].keys.data_ptr() == buffer  # written in place
    after_b = step(shared, b)
    assert shared.layers[0].keys.data_ptr() != buffer  # its slot was taken: copied
    after_c = step(cache, c)
    reference = copy.deepcopy(snapshot)
    assert torch.equal(step(reference, a), after_a) and torch.equal(step(reference, c), after_c)
    assert torch.equal(step(copy.deepcopy(snapshot), b), after_b)
    assert torch.equal(kept, kept_values)
    cache.crop(-2)  # (the last two tokens)
    cropped = copy.deepcopy(cache)
    assert torch.equal(step(cache, b), step(cropped, b))
    for mine, theirs in zip(cache.layers, cropped.layers, strict=True):
        assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)
