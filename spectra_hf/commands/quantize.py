"""`spectra-hf quantize FLOATLM OUT --bits 3 4 6 8 --calibration DATA`: QuantLMs from a FloatLM with GPTQ."""

from __future__ import annotations

import argparse
from pathlib import Path

from spectra_hf.errors import ConfigError
from spectra_hf.suite import QUANT_BITS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize",
        help="quantize a FloatLM into QuantLMs (GPTQ through optimum)",
        description=(
            "Quantize a FloatLM with GPTQ at each width and write OUT/QuantLM_<size>_<b>bit for each (<size>: the "
            "suite size, or the FloatLM's directory name when it is not a suite model). Defaults are the paper's: "
            "symmetric, group size 128 at 3/4 bits (lowered to fit narrow models), per-channel at 6/8, 512 x "
            "2048-token calibration samples; less calibration text than that uses every sample it holds, with a "
            "warning, and samples longer than the model's context are shortened to it. Packed exports of every width "
            "load with AutoModelForCausalLM.from_pretrained (5/6/7 bits after `import spectra_hf`, which registers "
            "their quant_method spectra_gptq with transformers, or without spectra-hf with trust_remote_code=True: "
            "they carry that method's code). Widths outside the suite's 3/4/6/8 need "
            "--non-suite-bits."
        ),
    )
    parser.add_argument("floatlm", type=Path, help="FloatLM directory (config.json, weights, tokenizer files)")
    parser.add_argument("out", type=Path, help="directory to write QuantLM_<size>_<b>bit into (a suite directory)")
    parser.add_argument(
        "--bits",
        type=int,
        nargs="+",
        default=list(QUANT_BITS),
        help="bit widths, 2..8 (default: the suite's 3 4 6 8; others need --non-suite-bits)",
    )
    parser.add_argument(
        "--non-suite-bits",
        action="store_true",
        help="allow widths outside the suite's 3/4/6/8 (2, 5, 7): exported as QuantLM_<size>_<b>bit, which no "
        "Spectra release has",
    )
    parser.add_argument(
        "--calibration",
        nargs="+",
        required=True,
        help="text files (.txt: one document per line; .jsonl/.json/.csv/.parquet: the --text-column), a directory "
        "written by Dataset.save_to_disk, or a dataset name for datasets.load_dataset",
    )
    parser.add_argument(
        "--format", choices=("gptq", "unpacked"), default="gptq", help="packed GPTQ, or dequantized fp16 Llama"
    )
    parser.add_argument(
        "--group-size", type=int, default=None, help="override the paper's group size (-1 = per-channel)"
    )
    parser.add_argument(
        "--calibration-samples",
        type=int,
        default=None,
        help="calibration samples (default 512, or as many as the text holds)",
    )
    parser.add_argument(
        "--calibration-length",
        type=int,
        default=None,
        help="tokens per sample (default 2048, or the model's context if shorter)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed drawing the calibration windows")
    parser.add_argument(
        "--size",
        default=None,
        help="label in the output names (default: the FloatLM's suite size, else its directory name)",
    )
    parser.add_argument("--text-column", default="text", help="text column of a calibration dataset")
    parser.add_argument("--split", default=None, help="split of a calibration dataset (default: its only split)")
    parser.add_argument("--damp-percent", type=float, default=None, help="GPTQ Hessian dampening (default 0.1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging

    from spectra_hf.quantization.gptq import (
        CALIBRATION_LENGTH,
        CALIBRATION_SAMPLES,
        DAMP_PERCENT,
        GPTQ_BITS,
        export_quantlms,
    )

    outside = [b for b in args.bits if b in GPTQ_BITS and b not in QUANT_BITS]
    if outside and not args.non_suite_bits:
        raise ConfigError(
            f"--bits {' '.join(map(str, outside))}: not a suite width (the Spectra suite's QuantLMs are "
            f"{'/'.join(map(str, QUANT_BITS))}-bit); pass --non-suite-bits to export it anyway"
        )
    for b in outside:
        logging.get_logger(__name__).warning(
            f"{b} bits is not a suite width ({'/'.join(map(str, QUANT_BITS))}): QuantLM_*_{b}bit has no counterpart "
            "in the Spectra release"
        )

    calibration = args.calibration[0] if len(args.calibration) == 1 else [Path(p) for p in args.calibration]
    written = export_quantlms(
        args.floatlm,
        args.out,
        calibration=calibration,
        bits=args.bits,
        group_size=args.group_size,
        format=args.format,
        samples=CALIBRATION_SAMPLES if args.calibration_samples is None else args.calibration_samples,
        length=CALIBRATION_LENGTH if args.calibration_length is None else args.calibration_length,
        seed=args.seed,
        size=args.size,
        text_column=args.text_column,
        split=args.split,
        damp_percent=DAMP_PERCENT if args.damp_percent is None else args.damp_percent,
    )
    for path in written:
        print(path)
    return 0
