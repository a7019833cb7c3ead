"""What the checks before loading cost: `inspect_checkpoint` next to the `from_pretrained` it guards.

    python bench/bench_checks.py [--size 390M] [--repeats 3]

Saves a randomly initialized TriLM of registry size `--size` packed (the release format) and latent, then times, in
this process, the checks alone (headers, expected tensors, the packed scales) and a whole
`TriLMForCausalLM.from_pretrained` (which runs them), best of `--repeats`, and prints both with their ratio and the
load average (the machine is shared: compare ratios from one run, not seconds across runs).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from functools import partial
from pathlib import Path


def best_of(repeats: int, action) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="390M")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from spectra_hf import TriLMForCausalLM
    from spectra_hf.modeling.checkpoint_checks import inspect_checkpoint
    from spectra_hf.suite import config_for

    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        model = TriLMForCausalLM(config_for(f"TriLM_{args.size}")).to(torch.float16)
        model.save_pretrained(Path(tmp) / "packed", weight_format="packed")
        model.save_pretrained(Path(tmp) / "latent")
        del model
        print(f"{'TriLM_' + args.size:<16}{'checks (s)':>12}{'from_pretrained (s)':>22}{'checks / load':>15}")
        for kind in ("packed", "latent"):
            path = Path(tmp) / kind
            checks = best_of(args.repeats, partial(inspect_checkpoint, path))
            load = best_of(args.repeats, partial(TriLMForCausalLM.from_pretrained, path))
            print(f"{kind:<16}{checks:>12.4f}{load:>22.3f}{checks / load:>15.2%}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
