"""`spectra-hf --help`: wall time and peak RSS, side by side with the same command in a process that first imports
what `import spectra_hf` imported before it became lazy (torch, transformers and spectra_hf.modeling).

    python bench/bench_cli_startup.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

_HELP = (
    "import sys\nfrom spectra_hf.cli import main\nsys.argv = ['spectra-hf', '--help']\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
)
_REPORT = "\nfrom peak_memory import peak_rss_bytes; print(peak_rss_bytes(), file=sys.stderr)"
_EAGER = "import torch, transformers, spectra_hf.modeling\n"


def _run(code: str) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code + _REPORT], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.abspath(__file__))},
    )  # fmt: skip
    return time.perf_counter() - started, int(done.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    results = {"lazy (now)": [], "eager imports (before)": []}
    for _ in range(runs):  # interleaved, so load changes hit both
        results["lazy (now)"].append(_run(_HELP))
        results["eager imports (before)"].append(_run(_EAGER + _HELP))
    lazy_s = statistics.median(t for t, _ in results["lazy (now)"])
    print(f"load average: {os.getloadavg()[0]:.2f} (2-core machine); median of {runs} runs")
    print(f"{'spectra-hf --help':<26} {'seconds':>8} {'peak RSS MiB':>13} {'time / lazy':>12}")
    for name, samples in results.items():
        seconds = statistics.median(t for t, _ in samples)
        rss = statistics.median(r for _, r in samples) / 2**20
        print(f"{name:<26} {seconds:>8.2f} {rss:>13.0f} {seconds / lazy_s:>12.1f}")


if __name__ == "__main__":
    main()
