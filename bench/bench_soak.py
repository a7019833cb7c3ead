"""Fault-and-kill soak of publishing (bounded, loopback only): nothing lost, nothing silently wrong.

    python bench/bench_soak.py [--kills 6] [--models TriLM_99M FloatLM_99M ...] [--seed 0]

A stand-in suite is published with `spectra-hf publish` (a subprocess) to `spectra-hf hub serve` (another one) that
answers 429 (Retry-After: 0) and 503 on a fixed fraction of the requests of every route kind. `--kills` times, after
a random number of requests, the publisher or the server (chosen at random) is SIGKILLed; a killed server is
restarted on the same root and port, a killed or failed publisher is started again, until one run exits 0. Then
every planned file of every branch is downloaded from a fresh, fault-free server and compared by sha256 with the
local file. Printed: requests, injected faults, kills, publisher runs, files and bytes verified, and what was lost
or differs (must be 0).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DEFAULT_MODELS = ("TriLM_99M", "FloatLM_99M", "QuantLM_99M_4bit", "TriLM_1.1B")
ORG = "soak"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """The local Hub subprocess; `stats` keeps the last counters seen from each of its lives."""

    def __init__(self, root: Path, port: int, faults: list[str]):
        self.root, self.port, self.faults = root, port, faults
        self.process: subprocess.Popen | None = None
        self.lives: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [str(Path(sys.executable).with_name("spectra-hf")), "hub", "serve", "--root", str(self.root),
                   "--port", str(self.port), "--quiet"]
        for spec in self.faults:
            command += ["--fault", spec]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if not self.process.stdout.readline().startswith("Local Hub serving"):
            raise RuntimeError(f"`spectra-hf hub serve` did not start (exit {self.process.wait()})")
        self.lives.append({})

    def poll_stats(self) -> dict:
        try:
            with urllib.request.urlopen(f"{self.url}/api/_local/stats", timeout=5) as answer:
                self.lives[-1] = json.loads(answer.read())
        except OSError:
            pass
        return self.lives[-1]

    def kill(self) -> None:
        self.poll_stats()
        self.process.kill()
        self.process.wait()

    def total(self, key: str) -> int:
        return sum(sum(life.get(key, {}).values()) for life in self.lives)


def _verify_everything(plan, url: str) -> dict:
    """Download every planned file of every branch and compare its sha256 with the local file's."""
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.utils import get_session

    api = HfApi(endpoint=url, token=False)
    result = {"files": 0, "bytes": 0, "missing_branches": [], "missing_files": [], "differing_files": []}
    for repo in plan.repos:
        branches = {b.name for b in api.list_repo_refs(repo.repo_id).branches}
        for branch in repo.branches:
            if branch.name not in branches:
                result["missing_branches"].append(f"{repo.repo_id}@{branch.name}")
                continue
            for file in branch.files:
                expected = hashlib.sha256(file.content if file.content is not None else file.local_path.read_bytes())
                digest, size = hashlib.sha256(), 0
                address = hf_hub_url(repo.repo_id, file.path_in_repo, revision=branch.name, endpoint=url)
                with get_session().stream("GET", address, timeout=60) as response:
                    if response.status_code != 200:
                        result["missing_files"].append(f"{repo.repo_id}@{branch.name}/{file.path_in_repo}")
                        continue
                    for chunk in response.iter_bytes(1 << 20):
                        digest.update(chunk)
                        size += len(chunk)
                result["files"] += 1
                result["bytes"] += size
                if digest.hexdigest() != expected.hexdigest():
                    result["differing_files"].append(f"{repo.repo_id}@{branch.name}/{file.path_in_repo}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=6, help="SIGKILLs, each of the publisher or of the server")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--fault-every", type=int, nargs=2, default=[7, 11], metavar=("K429", "K503"),
                        help="fail 1 request in K429 with 429 and 1 in K503 with 503, per route kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-runs", type=int, default=30, help="give up after this many publisher runs")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    from spectra_hf.hub.localhub import ROUTE_KINDS
    from spectra_hf.hub.plan import build_plan
    from spectra_hf.testing.corpus import local_corpus, train_tokenizer
    from spectra_hf.testing.standin import build_standin_suite

    every_429, every_503 = args.fault_every
    faults = [f"{kind}:429:every={every_429}:retry_after=0" for kind in ROUTE_KINDS if kind != "xet"]
    faults += [f"{kind}:503:every={every_503}:retry_after=0" for kind in ROUTE_KINDS if kind != "xet"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        suite = build_standin_suite(tmp / "suite", steps=args.steps, models=args.models,
                                    tokenizer=train_tokenizer(local_corpus(), vocab_size=512))
        plan = build_plan(suite, org=ORG, models=args.models)
        files = sum(len(b.files) for r in plan.repos for b in r.branches)
        print(f"plan: {len(plan.repos)} repos, {sum(len(r.branches) for r in plan.repos)} branches, {files} files, "
              f"{plan.totals()['bytes'] / 1e6:.1f} MB; faults on {len(ROUTE_KINDS) - 1} route kinds: 429 every "
              f"{every_429}, 503 every {every_503}; {args.kills} kills", flush=True)

        server = Server(tmp / "hub", free_port(), faults)
        server.start()
        command = [str(Path(sys.executable).with_name("spectra-hf")), "publish", str(suite), "--org", ORG,
                   "--endpoint", server.url, "--models", *args.models, "--no-progress", "--max-retries", "30"]
        kills = {"publisher": 0, "server": 0}
        runs, failed_runs, started = 0, 0, time.perf_counter()
        while True:
            runs += 1
            if runs > args.max_runs:
                raise SystemExit(f"no publisher run completed in {args.max_runs} runs")
            publisher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            pending = sum(kills.values()) < args.kills
            trigger = server.total("requests") + rng.randint(20, 400)
            while publisher.poll() is None:
                time.sleep(0.2)
                server.poll_stats()
                seen = server.total("requests")
                if pending and seen >= trigger:
                    victim = rng.choice(["publisher", "server"])
                    kills[victim] += 1
                    print(f"  kill {sum(kills.values())}: {victim} after {seen} requests", flush=True)
                    if victim == "server":
                        server.kill()
                        time.sleep(rng.uniform(0.0, 1.0))
                        server.start()
                    else:
                        publisher.kill()
                        publisher.wait()  # reaped, so the loop ends here rather than counting this trigger twice
                    pending = sum(kills.values()) < args.kills
                    trigger = server.total("requests") + rng.randint(20, 400)
            out, err = publisher.communicate()
            if publisher.returncode == 0 and sum(kills.values()) >= args.kills:
                print(f"  run {runs}: {out.strip().splitlines()[-1] if out.strip() else ''}", flush=True)
                break
            if publisher.returncode not in (0, -9):
                failed_runs += 1
                last_error = err.strip().splitlines()[-1] if err.strip() else ""
                print(f"  run {runs} exited {publisher.returncode}: {last_error}", flush=True)
        server.kill()
        soak_s = time.perf_counter() - started

        clean = Server(tmp / "hub", free_port(), [])  # the same store, no faults: what is really there
        clean.start()
        try:
            result = _verify_everything(plan, clean.url)
        finally:
            clean.kill()
        corrupt_dir = tmp / "hub" / "blobs" / "corrupt"
        corrupt = len(list(corrupt_dir.iterdir())) if corrupt_dir.is_dir() else 0

    lost = len(result["missing_branches"]) + len(result["missing_files"]) + len(result["differing_files"])
    print()
    print(f"load average {os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f} (1/5 min), {os.cpu_count()} CPUs")
    print(f"soak wall time         {soak_s:.0f} s")
    print(
        f"requests served        {server.total('requests')} (at least: counters polled every 0.2 s; "
        f"{len(server.lives)} server lives)"
    )
    fault_share = server.total("faults") / max(1, server.total("requests"))
    print(f"faults injected        {server.total('faults')} ({fault_share:.1%} of requests)")
    print(f"kills                  {kills['publisher']} publisher, {kills['server']} server")
    print(f"publisher runs         {runs} ({failed_runs} ended with an error, {kills['publisher']} killed)")
    print(f"commits                {server.total('commits')}")
    print(f"files verified         {result['files']} of {files} planned")
    print(f"bytes verified         {result['bytes']}")
    print(f"blobs set aside        {corrupt}")
    print(f"lost or different      {lost}" + (f": {result}" if lost else ""))
    if lost:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
