"""SpectraTrainer's overhead over transformers' Trainer: seconds per optimizer step, side by side in one run.

    python bench/bench_trainer.py [--size 99M] [--layers 2] [--steps 10] [--rounds 3]

Same model (the size's real widths and scale-shard count, `--layers` decoder blocks, vocabulary 512), same packed
data, same AdamW; variants: plain `Trainer` (linear schedule), `SpectraTrainer` (paper schedule + weight-decay
callback, logging LR/WD every step) and `SpectraTrainer` with ternary statistics logged every step (zeros, scales,
flipped digits: the one extra cost, a pass over all ternary weights per log). Rounds interleave the variants so
machine noise hits all alike; the median per variant is printed with its ratio to plain Trainer.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def run_variant(variant: str, name: str, layers: int, steps: int, dataset, workdir: str) -> float:
    """Seconds per optimizer step of one training run (after one warm-up step)."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    from spectra_hf.suite import config_for
    from spectra_hf.training import SpectraTrainer, SpectraTrainingArguments

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self.start = time.perf_counter()

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_for(name, num_hidden_layers=layers, vocab_size=512))
    common = dict(
        output_dir=workdir, use_cpu=True, max_steps=steps + 1, per_device_train_batch_size=4, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, log_level="error",
    )
    clock = Clock()
    if variant == "Trainer":
        trainer = Trainer(
            model=model, args=TrainingArguments(**common, lr_scheduler_type="linear", weight_decay=0.1),
            train_dataset=dataset, data_collator=default_data_collator, callbacks=[clock],
        )
    else:
        args = SpectraTrainingArguments(**common, lr_after_drop=5e-4, ternary_stats=variant.endswith("stats"))
        trainer = SpectraTrainer(
            model=model, args=args, train_dataset=dataset, data_collator=default_data_collator, callbacks=[clock]
        )
    trainer.remove_callback(PrinterCallback)  # keep the bench's output to its table
    trainer.train()
    return (time.perf_counter() - clock.start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="99M", help="suite size whose widths to use")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=128)
    options = parser.parse_args()

    from datasets import Dataset

    from spectra_hf.testing.corpus import local_corpus, train_tokenizer
    from spectra_hf.training.data import pack_documents

    texts = local_corpus()
    tokenizer = train_tokenizer(texts, vocab_size=512)
    dataset = pack_documents(
        Dataset.from_dict({"text": texts}), tokenizer, text_column="text", block_size=options.block_size
    )
    name = f"TriLM_{options.size}"
    variants = ("Trainer", "SpectraTrainer", "SpectraTrainer+stats")
    times: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(options.rounds):
            for variant in variants:
                times[variant].append(run_variant(variant, name, options.layers, options.steps, dataset, workdir))
    base = statistics.median(times["Trainer"])
    print(f"{name} widths, {options.layers} layers, 4 x {options.block_size} tokens per step, {options.steps} steps, "
          f"median of {options.rounds} interleaved rounds")
    print(f"{'variant':<24} {'s/step':>8} {'vs Trainer':>11}")
    for variant in variants:
        median = statistics.median(times[variant])
        print(f"{variant:<24} {median:>8.4f} {median / base:>10.2f}x")


if __name__ == "__main__":
    main()
