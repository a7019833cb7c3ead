"""`spectra-hf release publish | import`: the public SpectraSuite release -> the published suite (or a suite dir)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DESCRIPTION = (
    "Take the public release (fp16 Llama checkpoints: TriLM_<size>_Unpacked, FloatLM_<size>, "
    "QuantLM_<size>_<b>bit_Unpacked and the *_Unpacked_ckpts repos with one step<N> branch per checkpoint), convert "
    "every revision (TriLM packed, FloatLM, QuantLM GPTQ codes recovered), verify it against the release tensors and "
    "publish it as branch main / step<N> of ORG/<name>, one revision at a time under --max-disk. A journal in "
    "--work-dir makes a killed run resume without repeating finished revisions; a manifest of every revision (new "
    "branch, checks, sha256 of what was published, each confirmed on the target Hub; refused and missing ones with the "
    "reason) is written and published to ORG/spectra-release-manifest. A work dir serves one target. Exit status 1 "
    "while any revision is refused, missing, pending or not confirmed on the target."
)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from", dest="source_org", default="SpectraSuite", help="the release org (default SpectraSuite)"
    )
    parser.add_argument("--endpoint", help="Hub URL (default: HF_ENDPOINT, else https://huggingface.co)")
    parser.add_argument("--source-endpoint", help="Hub the release is read from, when it differs from --endpoint")
    parser.add_argument("--token", help="Hub token (prefer HF_TOKEN or `hf auth login`: arguments show in `ps`)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("spectra-release-work"),
        help="downloads, conversions, journal (default ./spectra-release-work); reuse it to resume",
    )
    parser.add_argument(
        "--max-disk",
        default=None,
        metavar="SIZE",
        help="disk the work dir may use, e.g. 200GB (checked before anything is downloaded and enforced during the "
        "run: it stops, resumably, before passing it)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        help="only these suite models (e.g. TriLM_99M QuantLM_2.3B_4bit); default all 54",
    )
    parser.add_argument(
        "--steps", nargs="+", type=int, metavar="N", help="only these checkpoint steps (each must exist)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list repos and revisions and estimate bytes, requests, disk and time; download nothing",
    )
    parser.add_argument("--down-mb-s", type=float, default=100.0, help="download bandwidth the dry run assumes (MB/s)")
    parser.add_argument("--up-mb-s", type=float, default=50.0, help="upload bandwidth the dry run assumes (MB/s)")
    parser.add_argument(
        "--json", action="store_true", help="print the result (dry run: the revisions and estimate) as JSON"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "release", help="re-publish (or import) the public SpectraSuite release", description=DESCRIPTION
    )
    actions = parser.add_subparsers(dest="release_command", metavar="ACTION", required=True)
    publish = actions.add_parser(
        "publish", help="convert and publish every release revision to --to ORG", description=DESCRIPTION
    )
    _common(publish)
    publish.add_argument("--to", dest="target_org", required=True, help="the org to publish to")
    publish.add_argument("--private", action="store_true", help="create new repos private")
    publish.add_argument(
        "--rebuild-journal",
        action="store_true",
        help="rebuild the work dir's journal (e.g. a damaged one, kept beside it) from what the target Hub holds: "
        "rows of its published manifest that still check out; every other revision is processed again",
    )
    publish.set_defaults(func=run)
    imp = actions.add_parser("import", help="convert every release revision into a suite directory (no publishing)")
    _common(imp)
    imp.add_argument(
        "--out",
        dest="suite_dir",
        type=Path,
        required=True,
        help="the suite directory to write (spectra_hf.checkpoints.exports layout)",
    )
    imp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spectra_hf.workdir_lock import workdir_lock

    if args.dry_run:  # reads only: no lock, and no work dir created
        return _run(args)
    with workdir_lock(args.work_dir, command=f"spectra-hf release {args.release_command}"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from spectra_hf.release import parse_size, run_release

    report = run_release(
        source_org=args.source_org,
        target_org=getattr(args, "target_org", None),
        suite_dir=getattr(args, "suite_dir", None),
        work_dir=args.work_dir,
        endpoint=args.endpoint,
        source_endpoint=args.source_endpoint,
        token=args.token,
        models=args.models,
        steps=args.steps,
        max_disk=parse_size(args.max_disk) if args.max_disk else None,
        dry_run=args.dry_run,
        private=getattr(args, "private", False),
        progress=not args.no_progress,
        down_mb_s=args.down_mb_s,
        up_mb_s=args.up_mb_s,
        rebuild_journal=getattr(args, "rebuild_journal", False),
    )
    if args.dry_run:
        if args.json:
            rows = [
                {
                    "release": r.key,
                    "step": r.step,
                    "bytes": r.size,
                    "files": len(r.files),
                    "target": f"{args.target_org if hasattr(args, 'target_org') else '-'}/{r.model.name}@{r.branch}",
                }
                for r in report.discovery.revisions
            ]
            print(
                json.dumps(
                    {"revisions": rows, "missing": report.discovery.missing, "estimate": report.estimate.as_dict()},
                    indent=2,
                )
            )
        else:
            for r in report.discovery.revisions:
                print(f"  {r.key:<60} -> {r.model.name}@{r.branch:<12} {r.size:>14,} bytes  {len(r.files)} files")
            for item in report.discovery.missing:
                print(f"  missing: {item['what']}: {item['reason']}")
            print(report.estimate.describe())
        return 0
    print(report.summary())
    print(f"manifest: {report.manifest_path}")
    if args.json:
        print(json.dumps(report.manifest, indent=2, sort_keys=True))
    if not report.complete:
        manifest = report.manifest
        assert manifest is not None, "a run that is not a dry run builds its manifest"
        problems = [f"{r['revision']}: {r['reason']}" for r in manifest["refused"]]
        problems += [f"{m['what']}: {m['reason']}" for m in manifest["missing"]]
        problems += [f"{r['revision']}: not confirmed on the target: {r['reason']}" for r in manifest["unverified"]]
        problems += [f"{key}: pending" for key in manifest["pending"]]
        print(
            f"spectra-hf release: error: {len(problems)} release revisions not published: " + "; ".join(problems[:5]),
            file=sys.stderr,
        )
        return 1
    return 0
