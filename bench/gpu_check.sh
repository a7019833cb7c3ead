#!/usr/bin/env bash
# The prepared GPU checks of issue 14, for one CUDA GPU, under 10 minutes (run from the repository root with the
# project installed: pip install -e '.[dev]' triton deepspeed):
#   1. the Triton 2-bit kernel against a float64 reference on CUDA (1, 2, 3, 6 scale shards; 1..16 tokens; fp32/bf16);
#   2. decode and prefill tok/s and resident memory, packed TriLM (dense, int8, 2bit Triton) vs FloatLM bf16, at
#      the 1.1B and 3.9B shapes (random weights);
#   3. one short bf16 training step each with DDP, FSDP2 and DeepSpeed ZeRO-2 from training/recipes/launch/
#      (one process; tiny TriLM on a local corpus and tokenizer, no network).
# Prints one block per check; exits non-zero if a correctness check fails. Figures go to the README's GPU table.
set -uo pipefail
cd "$(dirname "$0")/.."
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
status=0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || { echo "no CUDA GPU"; exit 1; }
python -c "import triton" 2>/dev/null || pip install -q triton

echo "== 1. Triton 2-bit kernel on CUDA vs float64"
timeout 120 python - <<'EOF' || status=1
import torch
from spectra_hf.modeling import TernaryLinear
worst = 0.0
for shards in (1, 2, 3, 6):
    for shard_dim in (0, 1):
        g = torch.Generator().manual_seed(shards * 10 + shard_dim)
        digits = torch.randint(-1, 2, (768, 1152), generator=g, dtype=torch.int8)  # [out, in]
        scales = torch.rand(shards, generator=g) * 0.05 + 0.01
        layer = TernaryLinear.from_ternary(digits, scales, shard_dim=shard_dim, eps=1e-5).cuda()
        layer.prepare_inference("2bit", torch.bfloat16)
        per = scales.double().repeat_interleave((768, 1152)[shard_dim] // shards)
        weight = digits.double() * (per[:, None] if shard_dim == 0 else per[None, :])
        for tokens in (1, 2, 7, 16):
            for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
                x = torch.randn(tokens, 1152, generator=g).to(dtype)
                with torch.no_grad():
                    y = layer(x.cuda()).double().cpu()
                ref = x.double() @ weight.t()
                err = ((y - ref).abs().max() / ref.abs().max()).item()
                worst = max(worst, err / tol)
                assert err <= tol, (shards, shard_dim, tokens, dtype, err)
print(f"ok: every case within its dtype tolerance (worst at {worst:.2f} of the tolerance)")
EOF

echo "== 2. decode / prefill / memory at 1.1B and 3.9B, packed TriLM vs FloatLM bf16"
timeout 330 python - <<'EOF' || status=1
import time, torch
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from spectra_hf import FloatLMForCausalLM, TernaryLinear, TriLMForCausalLM
from spectra_hf.suite import config_for

def build(family, size, path):
    config = config_for(f"{family}_{size}", **({"weight_format": "packed"} if family == "TriLM" else {}))
    with torch.device("meta"):
        model = (TriLMForCausalLM if family == "TriLM" else FloatLMForCausalLM)(config)
    model.to_empty(device="cuda")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0) if p.ndim == 1 else p.normal_(0, 0.02)
        for m in model.modules():
            if isinstance(m, TernaryLinear):
                m.weight_packed.copy_(torch.randint(0, 243, m.weight_packed.shape, device="cuda"))
                m.weight_scale.uniform_(0.01, 0.05)
        model.model.rotary_emb = LlamaRotaryEmbedding(config).cuda()
    model = model.to(torch.bfloat16).eval()
    if path:
        model.prepare_ternary_inference(path)
    return model

def timed(fn):
    torch.cuda.synchronize(); t = time.perf_counter(); fn(); torch.cuda.synchronize(); return time.perf_counter() - t

print(f"{'size':>5} {'model':<14} {'MiB':>7} {'decode tok/s':>12} {'prefill tok/s':>13} {'vs bf16':>8}")
for size in ("1.1B", "3.9B"):
    base = None
    for family, path in (("FloatLM", None), ("TriLM", "dense"), ("TriLM", "int8"), ("TriLM", "2bit")):
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        try:
            model = build(family, size, path)
        except Exception as error:  # report and go on: one failing path must not hide the others
            print(f"{size:>5} {family} {path}: {type(error).__name__}: {error}"); continue
        mib = torch.cuda.memory_allocated() / 2**20
        ids = torch.randint(0, model.config.vocab_size, (1, 512), device="cuda")
        with torch.inference_mode():
            def decode(steps):
                out = model(ids[:, :8], use_cache=True); cache = out.cache
                tok = out.logits[:, -1:].argmax(-1)
                for _ in range(steps):
                    out = model(tok, cache=cache, use_cache=True); cache = out.cache
                    tok = out.logits[:, -1:].argmax(-1)
            decode(3)
            d = 64 / timed(lambda: decode(64))
            model(ids, logits_to_keep=1)
            p = 512 / timed(lambda: model(ids, logits_to_keep=1))
        base = base or d
        label = family if path is None else f"{family} {path}"
        print(f"{size:>5} {label:<14} {mib:>7.0f} {d:>12.1f} {p:>13.0f} {d / base:>7.2f}x", flush=True)
        del model
EOF

echo "== 3. one bf16 training step each: DDP, FSDP2, DeepSpeed ZeRO-2 (recipes/launch, 1 process)"
work=$(mktemp -d)
timeout 60 python - "$work" <<'EOF' || status=1
import sys
from pathlib import Path
from spectra_hf.testing.corpus import local_corpus, train_tokenizer, write_corpus
out = Path(sys.argv[1]); docs = local_corpus(200)
write_corpus(docs, out)
train_tokenizer(docs).save_pretrained(out / "tok")
EOF
train_file="$work/train.txt"
common=(-m spectra_hf.cli train TriLM_99M --tiny true --tokenizer "$work/tok" --data_files "$train_file"
        --block_size 64 --global_batch_size 2 --per_device_train_batch_size 2 --max_steps 2 --bf16 true
        --save_strategy no --report_to none)
for launch in ddp fsdp2 deepspeed_zero2; do
  extra=()
  [ "$launch" = fsdp2 ] && extra=(--fsdp "full_shard auto_wrap" --fsdp_config training/recipes/launch/fsdp2.json)
  [ "$launch" = deepspeed_zero2 ] && extra=(--deepspeed training/recipes/launch/deepspeed_zero2.json)
  start=$(date +%s)
  if timeout 150 accelerate launch --config_file "training/recipes/launch/accelerate_$launch.yaml" --num_processes 1 \
       --mixed_precision bf16 "${common[@]}" --output_dir "$work/out_$launch" "${extra[@]}" > "$work/$launch.log" 2>&1; then
    echo "$launch: ok ($(( $(date +%s) - start )) s)"
  else
    echo "$launch: FAILED ($(( $(date +%s) - start )) s); last lines:"; tail -5 "$work/$launch.log"; status=1
  fi
done
exit $status
