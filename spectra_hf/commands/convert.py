"""`spectra-hf convert SRC OUT`: between the original release, packed / latent TriLM, FloatLM, Llama and GGUF."""

from __future__ import annotations

import argparse

TARGET_HELP = (
    "packed: TriLM release format (1.6 bits per ternary weight; default for an original TriLM_*_Unpacked "
    "checkpoint); unpacked: the original release format (plain LlamaForCausalLM, fp16); floatlm: a FloatLM from a "
    "Llama checkpoint; gguf-tq1_0 / gguf-tq2_0 / gguf-f16: one GGUF file for llama.cpp"
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert between release (Llama fp16), packed/latent TriLM, FloatLM and GGUF",
        description=(
            "Convert a checkpoint directory, streaming tensor by tensor (bounded memory, sharded safetensors in "
            "and out). Ternary weights are recovered exactly from an original release and verified: a tensor that "
            "is not g_s * {-1, 0, +1} on the shards of pretraining_model_parallel is refused by name."
        ),
    )
    parser.add_argument("src", help="checkpoint directory (config.json + *.safetensors)")
    parser.add_argument(
        "out",
        help=(
            "output directory (new or empty; not the source, nor inside or around it), or a .gguf file for gguf "
            "targets"
        ),
    )
    parser.add_argument(
        "--to", choices=("packed", "unpacked", "floatlm", "gguf-tq1_0", "gguf-tq2_0", "gguf-f16"), help=TARGET_HELP
    )
    parser.add_argument(
        "--dtype",
        choices=("float16", "bfloat16", "float32"),
        help="dtype of written float tensors (default: float16 for unpacked, else the source's)",
    )
    parser.add_argument(
        "--max-shard-size", type=float, default=2.0, metavar="GB", help="largest safetensors shard in GiB (default 2)"
    )
    parser.add_argument(
        "--allow-f16-fallback",
        action="store_true",
        help="gguf-tq*: write ternary matrices whose rows or scale shards do not split into 256-weight TQ blocks as "
        "f16 (default: refuse such a model)",
    )
    parser.add_argument(
        "--no-tokenizer",
        action="store_true",
        help="gguf: write the file without tokenizer keys when the model has no tokenizer.json (llama.cpp refuses it)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT if it is an earlier output of this same conversion (anything else in OUT is never replaced: "
        "a non-empty OUT that convert did not write, or that holds files of yours, is refused)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectra_hf.checkpoints.convert import convert_checkpoint

    out = convert_checkpoint(
        args.src,
        args.out,
        to=args.to,
        dtype=args.dtype,
        max_shard_bytes=int(args.max_shard_size * (1 << 30)),
        allow_f16_fallback=args.allow_f16_fallback,
        allow_no_tokenizer=args.no_tokenizer,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0
