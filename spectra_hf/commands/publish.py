"""`spectra-hf publish`: publish a suite directory (54 repos, checkpoint branches, cards, collections) to a Hub."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path

from spectra_hf.errors import ConfigError, SpectraError

TARGET_HELP = """\
where it publishes (one of these must be given; without any, nothing is published):
  --endpoint URL           that Hub, e.g. https://huggingface.co or a running `spectra-hf hub serve` (http://127.0.0.1:8080)
  --hub-root DIR           a local Hub store in DIR, served by this run for its duration; serve it afterwards with
                           `spectra-hf hub serve --root DIR` and point clients at it with
                           HF_ENDPOINT=http://127.0.0.1:PORT HF_HUB_DISABLE_XET=1
  else HF_ENDPOINT         that Hub
  else a token is found    https://huggingface.co (token from --token, HF_TOKEN or `hf auth login`)

--dry-run needs no target: it converts nothing, writes nothing and makes no request (sizes of unpacked TriLM repos
not converted yet are estimated from their configs).
Re-running publishes only what is missing or changed (no empty commits); an interrupted run resumes where it stopped.
A local Hub (loopback --endpoint or --hub-root) is published to without quotas unless you set them."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "publish",
        help="publish a suite directory to the Hub or a local Hub (repos, checkpoint branches, cards, collections)",
        description="Publish SUITE_DIR (one export per model, checkpoints/step<N> inside, see "
        "spectra_hf.checkpoints.exports) as one repo per model under --org, each checkpoint as a branch step<N>, "
        "with model cards, a revisions.json in main and one collection per family.",
        epilog=TARGET_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("suite_dir", type=Path, metavar="SUITE_DIR", help="the suite directory to publish")
    parser.add_argument("--org", required=True, help="Hub user or organization, e.g. SpectraSuite")
    parser.add_argument("--endpoint", help="Hub URL (see below)")
    parser.add_argument("--token", help="write token (prefer HF_TOKEN or `hf auth login`: arguments show in `ps`)")
    parser.add_argument(
        "--hub-root", type=Path, metavar="DIR", help="publish into a local Hub store in DIR (see below)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and its size; writes nothing, no network"
    )
    parser.add_argument(
        "--json", action="store_true", help="with --dry-run: print the plan's totals and what is missing as JSON"
    )
    parser.add_argument("--models", nargs="+", metavar="NAME", help="publish only these suite models")
    parser.add_argument(
        "--no-unpacked",
        action="store_true",
        help="skip the TriLM_<size>_Unpacked repos (release format for stock transformers, converted once into "
        "SUITE_DIR/.publish-staging)",
    )
    parser.add_argument(
        "--allow-partial", action="store_true", help="publish even though models or checkpoints are missing"
    )
    parser.add_argument(
        "--evals",
        type=Path,
        metavar="JSON",
        help='eval results for the cards: {"TriLM_99M": {"arc_easy/acc": 0.4} or "results.json" from '
        '`spectra-hf eval`, ...}',
    )
    parser.add_argument("--private", action="store_true", help="create new repos private")
    parser.add_argument("--no-verify", action="store_true", help="skip the final pass that checks every branch's files")
    parser.add_argument(
        "--verify",
        choices=("listing", "sample", "full"),
        help="what the final pass checks: branch trees only, plus a random ~2 GiB sample of file contents downloaded "
        "and hashed, or every file's content (default: full for a local Hub, sample otherwise); differing files are "
        "uploaded again",
    )
    parser.add_argument(
        "--load-check",
        type=Path,
        metavar="DIR",
        help="also download every branch into DIR and load it with from_pretrained",
    )
    parser.add_argument("--commits-per-hour", type=int, help="commits per repo per hour (Hub: 128)")
    parser.add_argument("--requests-per-window", type=int, help="API requests per window (Hub: 1000 per 300 s)")
    parser.add_argument("--window-s", type=float, help="request window in seconds (Hub: 300)")
    parser.add_argument("--max-retries", type=int, help="retries per operation on 429/5xx (default: 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _limits(args: argparse.Namespace, *, local: bool):
    from spectra_hf.hub.pacing import HubLimits

    overrides = {
        key: value
        for key, value in {
            "commits_per_hour": args.commits_per_hour,
            "requests_per_window": args.requests_per_window,
            "window_s": args.window_s,
            "max_retries": args.max_retries,
        }.items()
        if value is not None
    }
    for key, value in overrides.items():
        lowest = 0 if key == "max_retries" else 1e-9
        if value < lowest:
            raise ConfigError(
                f"--{key.replace('_', '-')} must be {'>= 0' if lowest == 0 else 'positive'}, got {value}"
            )
    return HubLimits.unlimited(**overrides) if local else HubLimits(**overrides)


def _read_evals(path: Path | None) -> dict | None:
    """{model: {"task/metric": value}} or {model: "results.json" written by `spectra-hf eval`} (relative to the
    file)."""
    from spectra_hf.evaluation.results import read_results

    if path is None:
        return None
    try:
        evals = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"--evals {path}: cannot read it as JSON ({error})") from None
    if not isinstance(evals, dict) or not all(isinstance(v, (dict, str)) for v in evals.values()):
        raise ConfigError(f'--evals {path}: expected {{"MODEL": {{"task/metric": value}} or "RESULTS.json"}}')
    return {
        name: read_results(path.parent / value) if isinstance(value, str) else value for name, value in evals.items()
    }


def _target(args: argparse.Namespace):
    """The explicit target of this run (`spectra_hf.hub.plan.choose_target`); HubError naming the four ways if none."""
    from huggingface_hub import get_token

    from spectra_hf.hub.plan import choose_target

    return choose_target(endpoint=args.endpoint, hub_root=args.hub_root, token=args.token or get_token())


def _dry_run(args: argparse.Namespace) -> int:
    """Print the plan: nothing is converted or written, no request is made."""
    from spectra_hf.hub.plan import build_plan

    plan = build_plan(
        args.suite_dir,
        org=args.org,
        evals=_read_evals(args.evals),
        models=args.models,
        unpacked=not args.no_unpacked,
        convert=False,
    )
    try:
        target = _target(args).describe()
    except SpectraError as error:
        target = f"none: a real run would refuse ({error})"
    if args.json:
        document = {
            "org": plan.org,
            "target": target,
            "totals": plan.totals(),
            "estimated_files": plan.estimated_files,
            "missing": plan.missing,
        }
        print(json.dumps(document, indent=2))
        return 0
    print(plan.describe())
    print(f"target: {target}")
    if plan.missing and not args.allow_partial:
        print("publishing would refuse this plan: export what is missing, or pass --allow-partial")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _dry_run(args)
    from transformers.utils import logging  # not at module level: `spectra-hf --help` imports this module

    logger = logging.get_logger(__name__)
    target = _target(args)  # before any work: no target, nothing is converted or published
    if target.chosen_by in ("--endpoint", "--hub-root"):
        logger.info(f"publishing to {target.describe()}")
    else:
        logger.warning(f"publishing to {target.describe()}")

    from spectra_hf.hub.client import is_local_endpoint
    from spectra_hf.hub.plan import build_plan
    from spectra_hf.hub.publish import publish

    plan = build_plan(
        args.suite_dir, org=args.org, evals=_read_evals(args.evals), models=args.models, unpacked=not args.no_unpacked
    )
    with ExitStack() as stack:
        endpoint = target.endpoint
        if target.hub_root is not None:
            from spectra_hf.hub.localhub import LocalHub

            target.hub_root.mkdir(parents=True, exist_ok=True)
            endpoint = stack.enter_context(LocalHub(target.hub_root)).url
            print(f"serving the local Hub store {target.hub_root} at {endpoint} for this run", file=sys.stderr)
        assert endpoint is not None
        report = publish(
            plan,
            endpoint=endpoint,
            token=args.token,
            limits=_limits(args, local=is_local_endpoint(endpoint)),
            allow_partial=args.allow_partial,
            private=args.private,
            verify=False if args.no_verify else (args.verify or True),
            load_check_dir=args.load_check,
            progress=not args.no_progress,
        )
    print(f"published {plan.org} to {endpoint}: {report.summary()}")
    if plan.missing:
        print(f"partial suite: {len(plan.missing)} missing items were not published (see --dry-run)")
    if target.hub_root is not None:
        print(f"serve it with: spectra-hf hub serve --root {target.hub_root}")
    return 0
