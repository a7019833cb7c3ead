"""`spectra-hf hub serve`: time from launch to the first answered request, and resident memory, side by side with
the same server started in a process that first imports torch and transformers (what `hub serve` cost while
`import spectra_hf` pulled them in).

    python bench/bench_serve_startup.py [--runs 3]

Each run starts a fresh server on a free port under a temporary root, polls GET /api/_local/stats until it answers,
and reads the server's own report of its RSS and of the heavy modules it has imported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

_SERVE = "from spectra_hf.cli import main; import sys; sys.exit(main(sys.argv[1:]))"
_WITH_TORCH = "import torch, transformers; " + _SERVE


def _start(code: str, root: Path) -> tuple[float, dict]:
    """Seconds until the server answered, and its /api/_local/stats `process` block."""
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-c", code, "hub", "serve", "--root", str(root), "--port", "0", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url = server.stdout.readline().split(" at ")[-1].strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the server did not start (exit {server.wait()})")
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/_local/stats", timeout=5) as answer:
                    process = json.loads(answer.read())["process"]
                return time.perf_counter() - started, process
            except OSError:
                time.sleep(0.01)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, dict]]] = {"hub serve": [], "hub serve after torch+transformers": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            results["hub serve"].append(_start(_SERVE, Path(tmp) / f"a{run}"))
            results["hub serve after torch+transformers"].append(_start(_WITH_TORCH, Path(tmp) / f"b{run}"))
    light, heavy = results["hub serve"], results["hub serve after torch+transformers"]
    seconds = [statistics.median(t for t, _ in runs) for runs in (light, heavy)]
    rss = [statistics.median(p["rss_bytes"] for _, p in runs) / 2**20 for runs in (light, heavy)]
    print(f"load average {os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f} (1/5 min), {os.cpu_count()} CPUs, "
          f"median of {args.runs} runs")
    print(f"{'':36} {'start-up s':>10} {'RSS MiB':>9}  heavy modules imported")
    for (label, runs), s, r in zip(results.items(), seconds, rss, strict=True):
        print(f"{label:36} {s:>10.2f} {r:>9.0f}  {', '.join(runs[0][1]['heavy_modules']) or '-'}")
    print(f"{'ratio (torch+transformers / serve)':36} {seconds[1] / seconds[0]:>10.2f} {rss[1] / rss[0]:>9.2f}")


if __name__ == "__main__":
    main()
