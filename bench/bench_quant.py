"""QuantLM (GPTQ) next to FloatLM, bitsandbytes and TriLM; and GPTQ's cost at the 99M shape.

    python bench/bench_quant.py [--steps 100] [--calibration-samples 16] [--calibration-length 256]
        [--cost-layers 16] [--parts quality cost]

Part 1, quality (small trained models): trains a small FloatLM and a TriLM of the same shape (hidden 128, GLU 384,
4 layers, 2 heads, vocab 512, context 128) for `--steps` AdamW steps on the offline corpus (plain torch loop,
batch 16 x 128 tokens), quantizes the FloatLM with `export_quantlms` at 3/4/6/8 bits (the paper's group sizes,
calibration `--quality-samples` x 128 tokens of the training text), loads it with bitsandbytes 8-bit and NF4, and
prints size in bits (as the paper counts: quantized weights at their stored width, everything else 16 bits), size
on disk and held-out perplexity (`spectra_hf.evaluation.text_perplexity.perplexity`, windows of 128 tokens) side by
side.

Part 2, cost (the 99M architecture, random fp32 weights, vocabulary 50304; `--cost-layers` of its 16 decoder
layers): GPTQ at each width in a fresh subprocess, printing quantization wall time, peak RSS of that process, and
packed checkpoint size. Calibration is `--calibration-samples` x `--calibration-length` tokens (the paper used
512 x 2048). On CPU, GPTQ's time is dominated by its column-by-column solve, linear in the number of layers and
nearly independent of the calibration size at these sizes.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import tempfile
import time
from pathlib import Path

import torch
import torch._dynamo
from peak_memory import peak_rss_bytes

SHAPE = {
    "hidden_size": 128, "intermediate_size": 384, "num_attention_heads": 2, "num_key_value_heads": 2,
    "num_hidden_layers": 4,
}
CONTEXT = 128


def _token_stream(tokenizer, documents: list[str]):
    ids = tokenizer(documents, add_special_tokens=False)["input_ids"]
    return torch.tensor([t for doc in ids for t in (*doc, tokenizer.eos_token_id)], dtype=torch.long)


def train(model, stream, *, steps: int, lr: float, seed: int = 0):
    """AdamW (betas 0.9/0.95, weight decay 0.1), 10% linear warmup then cosine to 10%, batch 16 x CONTEXT tokens."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup if s < warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))
        ),
    )
    model.train()
    for step in range(steps):
        starts = torch.randint(0, stream.numel() - CONTEXT - 1, (16,), generator=generator)
        batch = torch.stack([stream[s : s + CONTEXT] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            print(f"  {type(model).__name__} step {step:4d} loss {loss.item():.3f}", flush=True)
    return model.eval()


def _disk_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors")) / 2**20


def quality(args, workdir: Path) -> None:
    from spectra_hf import FloatLMForCausalLM, TriLMForCausalLM
    from spectra_hf.checkpoints.exports import read_export_info
    from spectra_hf.evaluation.text_perplexity import perplexity
    from spectra_hf.quantization.bnb import bnb_stored_bits, load_floatlm_bnb
    from spectra_hf.quantization.gptq import export_quantlms, load_quantlm
    from spectra_hf.suite import FLOAT_BITS, QUANT_BITS, TERNARY_BITS, config_for, size_bits
    from spectra_hf.testing.corpus import local_corpus, train_tokenizer, write_corpus

    documents = local_corpus()
    tokenizer = train_tokenizer(documents, vocab_size=512)
    train_txt, eval_txt = write_corpus(documents, workdir / "corpus")
    held_out = [line for line in eval_txt.read_text(encoding="utf-8").splitlines() if line.strip()]
    stream = _token_stream(tokenizer, train_txt.read_text(encoding="utf-8").splitlines())
    overrides = dict(SHAPE, vocab_size=512, max_position_embeddings=CONTEXT)
    print(f"training on {stream.numel()} tokens, {args.steps} steps each; held-out: {len(held_out)} documents")

    started = time.perf_counter()
    torch.manual_seed(0)
    floatlm = train(FloatLMForCausalLM(config_for("FloatLM_99M", **overrides)), stream, steps=args.steps, lr=2e-3)
    torch.manual_seed(0)
    trilm = train(TriLMForCausalLM(config_for("TriLM_99M", **overrides)), stream, steps=args.steps, lr=4e-3)
    print(f"trained both in {time.perf_counter() - started:.0f} s")
    floatlm_dir = workdir / "FloatLM_small"
    floatlm.save_pretrained(floatlm_dir)
    tokenizer.save_pretrained(floatlm_dir)

    started = time.perf_counter()
    quantlms = export_quantlms(
        floatlm_dir, workdir / "suite", calibration=train_txt, samples=args.quality_samples, length=CONTEXT,
        size="small",
    )
    print(f"exported 4 QuantLMs in {time.perf_counter() - started:.0f} s")

    rows = [("FloatLM", size_bits(floatlm.config, bits_per_linear_weight=FLOAT_BITS), _disk_mb(floatlm_dir), floatlm)]
    for bits, directory in zip(QUANT_BITS, quantlms, strict=True):
        stored_bits = read_export_info(directory).extra["size_bits"]
        rows.append((f"QuantLM {bits}-bit", stored_bits, _disk_mb(directory), load_quantlm(directory, backend="torch")))
    for bits in (8, 4):
        model = load_floatlm_bnb(floatlm_dir, bits=bits)
        rows.append((f"bitsandbytes {'int8' if bits == 8 else 'nf4'}", bnb_stored_bits(model), float("nan"), model))
    trilm_bits = size_bits(trilm.config, bits_per_linear_weight=TERNARY_BITS)
    rows.append(("TriLM", trilm_bits, float("nan"), trilm))
    # the packed release form on the 2-bit CPU kernel (int16 activations), in fp32 and bf16, and with the optional
    # int8 embedding/head (a deviation from the paper: both tables at 8 instead of 16 bits)
    trilm_dir = workdir / "TriLM_small"
    trilm.save_pretrained(trilm_dir, weight_format="packed")
    for label, dtype, int8 in (
        ("TriLM 2bit fp32", torch.float32, False),
        ("TriLM 2bit bf16", torch.bfloat16, False),
        ("TriLM 2bit int8emb", torch.bfloat16, True),
    ):
        packed = TriLMForCausalLM.from_pretrained(
            trilm_dir, ternary_inference="2bit", dtype=dtype, int8_embeddings=int8
        ).eval()
        tables = 2 * trilm.config.vocab_size * trilm.config.hidden_size
        rows.append((label, trilm_bits - (8 * tables if int8 else 0), _disk_mb(trilm_dir), packed))

    print(f"\nQuality: hidden {SHAPE['hidden_size']}, {SHAPE['num_hidden_layers']} layers, {args.steps} steps; "
          f"perplexity on {len(held_out)} held-out documents (windows of {CONTEXT} tokens)")
    print(f"{'model':<20}{'size Mbit':>11}{'x FloatLM':>11}{'disk MB':>9}{'ppl':>9}{'ppl / FloatLM':>15}")
    base_ppl = None
    for name, model_bits, disk, model in rows:
        scores = perplexity(model, tokenizer, held_out, max_length=CONTEXT, batch_size=8, show_progress=False)
        ppl = scores["perplexity"]
        base_ppl = base_ppl or ppl
        print(
            f"{name:<20}{model_bits / 1e6:>11.2f}{model_bits / rows[0][1]:>11.3f}{disk:>9.2f}{ppl:>9.2f}"
            f"{ppl / base_ppl:>15.3f}"
        )
    print(
        "disk MB: fp32 safetensors for FloatLM and QuantLM's unquantized tensors, the packed checkpoint for the TriLM "
        "2bit rows; bitsandbytes and the latent TriLM are not exported here"
    )


def _quantize_99m(floatlm_dir: str, bits: int, samples: int, length: int, queue) -> None:
    """Child process: GPTQ the 99M FloatLM at `bits`; report time, peak RSS and checkpoint size."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from spectra_hf.quantization.calibration import calibration_samples, load_calibration_texts
    from spectra_hf.quantization.gptq import GPTQSettings, load_floatlm_as_llama, quantize_model, save_quantized

    tokenizer = AutoTokenizer.from_pretrained(floatlm_dir)
    texts = load_calibration_texts(Path(floatlm_dir) / "calibration.txt")
    data = calibration_samples(tokenizer, texts.documents, samples=samples, length=length)
    model = load_floatlm_as_llama(Path(floatlm_dir))
    rss_before = peak_rss_bytes() / 2**20
    started = time.perf_counter()
    model, quantizer = quantize_model(model, data, GPTQSettings.paper(bits))
    seconds = time.perf_counter() - started
    peak = peak_rss_bytes() / 2**20
    with tempfile.TemporaryDirectory() as out:
        save_quantized(model, quantizer, out)
        disk = _disk_mb(Path(out))
    queue.put({"bits": bits, "seconds": seconds, "rss_before_mb": rss_before, "peak_mb": peak, "disk_mb": disk})


def cost(args, workdir: Path) -> None:
    from spectra_hf import FloatLMForCausalLM
    from spectra_hf.quantization.gptq import GPTQSettings
    from spectra_hf.suite import QUANT_BITS, config_for
    from spectra_hf.testing.corpus import local_corpus, train_tokenizer

    documents = local_corpus()
    floatlm_dir = workdir / "FloatLM_99M"
    torch.manual_seed(0)
    model = FloatLMForCausalLM(config_for("FloatLM_99M", num_hidden_layers=args.cost_layers))
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(floatlm_dir)
    del model
    train_tokenizer(documents, vocab_size=512).save_pretrained(floatlm_dir)
    (floatlm_dir / "calibration.txt").write_text("\n".join(documents), encoding="utf-8")
    print(f"\nCost: FloatLM_99M architecture with {args.cost_layers} of 16 decoder layers "
          f"({params / 1e6:.1f}M parameters, random fp32 weights, {_disk_mb(floatlm_dir):.0f} MB); "
          f"calibration {args.calibration_samples} x {args.calibration_length} tokens; one fresh process per width")
    print(f"{'bits':>4}{'group':>7}{'GPTQ s':>9}{'peak RSS before GPTQ MB':>25}{'peak RSS MB':>13}{'packed MB':>11}")
    context = multiprocessing.get_context("spawn")
    for bits in QUANT_BITS:
        queue = context.Queue()
        child = context.Process(
            target=_quantize_99m,
            args=(str(floatlm_dir), bits, args.calibration_samples, args.calibration_length, queue),
        )
        child.start()
        result = queue.get()
        child.join()
        group = GPTQSettings.paper(bits).group_size
        print(
            f"{bits:>4}{group:>7}{result['seconds']:>9.1f}{result['rss_before_mb']:>25.0f}{result['peak_mb']:>13.0f}"
            f"{result['disk_mb']:>11.1f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="training steps of the small FloatLM and TriLM")
    parser.add_argument("--quality-samples", type=int, default=128, help="calibration samples (x 128 tokens) in part 1")
    parser.add_argument("--calibration-samples", type=int, default=16, help="calibration samples at 99M")
    parser.add_argument("--calibration-length", type=int, default=256, help="tokens per calibration sample at 99M")
    parser.add_argument(
        "--cost-layers", type=int, default=16,
        help="decoder layers of the 99M model in part 2 (GPTQ time grows linearly)",
    )
    parser.add_argument("--parts", nargs="+", choices=("quality", "cost"), default=["quality", "cost"])
    parser.add_argument("--workdir", type=Path, default=None, help="where to write models (default: a temp dir)")
    args = parser.parse_args()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # int8 on CPU warns on every call
    # gptqmodel's TorchLinear torch.compiles its dequantization on first use; on a loaded 2-core CPU that takes
    # minutes per layer shape and does not change results, so everything here runs eagerly.
    torch._dynamo.config.disable = True
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        if "quality" in args.parts:
            quality(args, Path(workdir))
        if "cost" in args.parts:
            cost(args, Path(workdir))


if __name__ == "__main__":
    main()
