"""Publishing the tiny stand-in suite against the local Hub: time, HTTP calls and commits per repo and per branch,
and what that means for a real publish (54 repos + 500 checkpoint branches) under the Hub's quotas.

    python bench/bench_publish.py [--steps 100 200 300] [--branches 500]

The HTTP calls per branch measured here are what the real client sends for the same plan shape; the quota estimate
divides them by the Hub's published limits (1000 API requests / 5 min, 128 commits / hour / repo).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from spectra_hf.hub.localhub import LocalHub
from spectra_hf.hub.pacing import HubLimits
from spectra_hf.hub.plan import build_plan
from spectra_hf.hub.publish import publish
from spectra_hf.suite import all_models
from spectra_hf.testing.corpus import local_corpus, train_tokenizer
from spectra_hf.testing.standin import build_standin_suite

# Calls that do not count against the Hub's API quota: the LFS PUT goes to storage, not to the API.
_NOT_API = {"lfs_upload"}


def _run(plan, hub: LocalHub, *, verify: str) -> dict:
    hub.reset_stats()
    started = time.perf_counter()
    report = publish(plan, endpoint=hub.url, limits=HubLimits.unlimited(), progress=False, verify=verify)
    seconds = time.perf_counter() - started
    stats = hub.stats
    api_calls = sum(n for kind, n in stats["requests"].items() if kind not in _NOT_API)
    return {"seconds": seconds, "report": report, "stats": stats, "api_calls": api_calls}


def _estimate(branches: int, api_per_branch: float, api_per_repo: float, repos: int) -> dict:
    """Lower bound on wall time set by the quotas alone, for `branches` checkpoint branches over the trained repos."""
    limits = HubLimits()
    trained = [m for m in all_models() if m.family != "quantlm"]
    total_branches = repos + branches  # every repo's main + the checkpoint branches
    api_calls = total_branches * api_per_branch + repos * api_per_repo
    request_bound_s = api_calls / limits.requests_per_window * limits.window_s
    per_repo = math.ceil(branches / len(trained)) + 1
    commit_bound_s = max(0.0, (per_repo - limits.commits_per_hour) / limits.commits_per_hour * 3600)
    # Bytes: each trained model's checkpoints at its stored size (registry size in bits; TriLM packed ~1.6 bits).
    bytes_total = sum(m.size_bits / 8 for m in all_models()) + sum(
        m.size_bits / 8 * (branches / len(trained)) for m in trained
    )
    return {
        "api_calls": api_calls,
        "request_bound_s": request_bound_s,
        "commit_bound_s": commit_bound_s,
        "commits_per_repo": per_repo,
        "bytes": bytes_total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200, 300], help="checkpoints per trained model")
    parser.add_argument("--branches", type=int, default=500, help="checkpoint branches of the real publish to estimate")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        suite = build_standin_suite(
            tmp / "suite", steps=args.steps, tokenizer=train_tokenizer(local_corpus(), vocab_size=512)
        )
        built_s = time.perf_counter() - started
        started = time.perf_counter()
        plan = build_plan(suite, org="bench")
        plan_s = time.perf_counter() - started
        totals = plan.totals()
        with LocalHub(tmp / "hub") as hub:
            first = _run(plan, hub, verify="listing")
            again = _run(plan, hub, verify="listing")
            checked = _run(plan, hub, verify="full")

    repos, branches = totals["repos"], totals["branches"]
    print(
        f"stand-in suite: {repos} repos ({len(all_models())} models + unpacked TriLMs), {branches} branches, "
        f"{totals['files']} files, {totals['bytes'] / 1e6:.1f} MB; built in {built_s:.1f} s, planned in {plan_s:.1f} s"
    )
    print()
    print(f"load average {os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f} (1/5 min); verify='listing' below except "
          "the last column, which re-runs with verify='full' (every file downloaded and hashed)")
    print(f"{'':34} {'first publish':>14} {'re-run (no-op)':>15} {'ratio':>7} {'re-run, full':>13} {'ratio':>7}")
    runs = (first, again, checked)
    rows = [
        ("wall time (s)", [r["seconds"] for r in runs]),
        ("HTTP requests", [r["stats"]["total_requests"] for r in runs]),
        ("API requests (quota-counted)", [r["api_calls"] for r in runs]),
        ("commits", [sum(r["stats"]["commits"].values()) for r in runs]),
        ("HTTP requests per repo", [r["stats"]["total_requests"] / repos for r in runs]),
        ("API requests per branch", [r["api_calls"] / branches for r in runs]),
        ("commits per branch", [sum(r["stats"]["commits"].values()) / branches for r in runs]),
        ("ms per HTTP request", [1e3 * r["seconds"] / r["stats"]["total_requests"] for r in runs]),
        ("MB hashed by verification", [r["report"].bytes_verified / 1e6 for r in runs]),
    ]
    for label, (a, b, c) in rows:
        print(f"{label:34} {a:>14.2f} {b:>15.2f} {(f'{b / a:.2f}' if a else '-'):>7} {c:>13.2f} "
              f"{(f'{c / a:.2f}' if a else '-'):>7}")
    print()
    kinds = Counter(first["stats"]["requests"])
    print("first publish, requests by kind: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()))
    per_repo = Counter(first["stats"]["commits"].values())
    print(
        "commits per repo (first publish): " + ", ".join(f"{n} commits: {c} repos" for n, c in sorted(per_repo.items()))
    )

    # Per-branch and per-repo API cost, from the first publish: a repo costs create + info + refs + collection item.
    collection_calls = first["stats"]["requests"].get("collection", 0)
    per_repo_calls = (first["stats"]["requests"].get("create_repo", 0) + first["stats"]["requests"].get("repo_info", 0)
                      + first["stats"]["requests"].get("refs", 0) + collection_calls) / repos
    per_branch_calls = (first["api_calls"] - per_repo_calls * repos) / branches
    estimate = _estimate(args.branches, per_branch_calls, per_repo_calls, len(all_models()))
    print()
    trilms = sum(m.family == "trilm" for m in all_models())
    quota = HubLimits()
    print(
        f"estimate for a real publish: {len(all_models())} repos + {args.branches} checkpoint branches "
        f"(+ {trilms} unpacked TriLM repos, negligible), under the Hub's quotas ({quota.requests_per_window} API "
        f"requests / {quota.window_s / 60:g} min, {quota.commits_per_hour} commits / h / repo):"
    )
    print(
        f"  API requests:        {estimate['api_calls']:.0f} "
        f"({per_branch_calls:.2f} per branch, {per_repo_calls:.2f} per repo)"
    )
    print(f"  request-quota bound: {estimate['request_bound_s'] / 60:.0f} min")
    print(
        f"  commit-quota bound:  {estimate['commit_bound_s'] / 60:.0f} min "
        f"({estimate['commits_per_repo']} commits per trained repo)"
    )
    print(
        f"  data:                {estimate['bytes'] / 1e9:.0f} GB (at 100 MB/s: {estimate['bytes'] / 1e8 / 3600:.1f} h)"
    )
    rerun_calls = again["api_calls"] / branches * (len(all_models()) + args.branches)
    print(f"  a no-op re-run:      {rerun_calls:.0f} API requests, 0 commits")


if __name__ == "__main__":
    main()
