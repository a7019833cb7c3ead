"""`spectra-hf hub serve`: run the local Hugging Face Hub server (spectra_hf.hub.localhub) until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spectra_hf.errors import SpectraError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "hub",
        help="run a local server that speaks the Hugging Face Hub protocol",
        description="A local Hugging Face Hub for tests, benchmarks and offline publishing rehearsals.",
    )
    actions = parser.add_subparsers(dest="hub_command", metavar="ACTION", required=True)
    serve = actions.add_parser(
        "serve",
        help="serve a local Hub from a directory until Ctrl-C",
        description="Serve repos, branches, uploads and downloads from --root. Point clients at it with "
        "HF_ENDPOINT=<url> HF_HUB_DISABLE_XET=1 (set before huggingface_hub is imported).",
    )
    serve.add_argument("--root", type=Path, required=True, help="storage directory (created if missing)")
    serve.add_argument("--port", type=int, default=8080, help="TCP port; 0 picks a free one (default: 8080)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, local only)")
    serve.add_argument("--token", default=None, help="require `Authorization: Bearer TOKEN` on every request")
    serve.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="inject failures, e.g. commit:429:first=2:retry_after=1 or lfs:503:every=3 (repeatable)",
    )
    serve.add_argument("--quiet", action="store_true", help="do not log one line per request")
    serve.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from spectra_hf.hub.localhub import Fault, LocalHub

    if args.root.exists() and not args.root.is_dir():
        raise SpectraError(f"--root {args.root} is a file: pass a directory (it is created if missing).")
    if not 0 <= args.port <= 65535:
        raise SpectraError(f"--port {args.port} is not a TCP port: pass 0..65535 (0 picks a free port).")
    try:
        faults = [Fault.parse(spec) for spec in args.fault]
    except ValueError as error:
        raise SpectraError(f"--fault: {error}") from error
    args.root.mkdir(parents=True, exist_ok=True)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        hub = LocalHub(args.root, host=args.host, port=args.port, token=args.token, faults=faults, log=log)
    except OSError as error:
        raise SpectraError(f"Cannot listen on {args.host}:{args.port} ({error}): pick another --port.") from error
    print(f"Local Hub serving {args.root.resolve()} at {hub.url}", flush=True)
    print(f"Point clients at it: HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1 (Ctrl-C stops)", flush=True)
    try:
        hub.serve_forever()
    except KeyboardInterrupt:
        print("Local Hub stopped.", flush=True)
    return 0
