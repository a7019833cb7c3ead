"""`spectra-hf hub serve`: run the local Hugging Face Hub server (spectra_hf.hub.localhub) until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from spectra_hf.errors import ConfigError, HubError

TOKEN_ENV = "SPECTRA_HUB_TOKEN"


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
    serve.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help=f"file holding the token that writes and reads private repos (or set {TOKEN_ENV}); without a token "
        "the server is single-user: anyone who can connect reads and writes everything",
    )
    serve.add_argument(
        "--token",
        default=None,
        help=f"the token itself (visible to other users in `ps`: prefer --token-file or {TOKEN_ENV})",
    )
    serve.add_argument(
        "--public-url",
        default=None,
        help="base URL clients reach this server at, for the URLs it hands out (default: http://HOST:PORT)",
    )
    serve.add_argument(
        "--max-body-mb",
        type=float,
        default=64.0,
        help="largest API request body in MiB; LFS uploads excepted (default: 64)",
    )
    serve.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="inject failures, e.g. commit:429:first=2:retry_after=1 or lfs:503:every=3 (repeatable)",
    )
    serve.add_argument("--quiet", action="store_true", help="do not log one line per request")
    serve.set_defaults(func=run_serve)


def _token(args: argparse.Namespace) -> str | None:
    """The token from --token-file, --token or SPECTRA_HUB_TOKEN (in that order), stripped of surrounding space."""
    given = [name for name, value in (("--token-file", args.token_file), ("--token", args.token)) if value]
    if len(given) > 1:
        raise ConfigError("give the token once: --token-file or --token (or SPECTRA_HUB_TOKEN), not both")
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(f"--token-file {args.token_file}: cannot read it ({error.strerror}).") from None
        if not token:
            raise ConfigError(f"--token-file {args.token_file} is empty: write the token in it.")
        return token
    token = args.token or os.environ.get(TOKEN_ENV, "").strip()
    if args.token:
        print("warning: --token is visible to every user of this machine in `ps`; prefer --token-file or "
              f"{TOKEN_ENV}.", file=sys.stderr)
    return token or None


def run_serve(args: argparse.Namespace) -> int:
    from spectra_hf.hub.localhub import Fault, LocalHub
    from spectra_hf.hub.localhub.server import is_loopback_host

    if args.root.exists() and not args.root.is_dir():
        raise ConfigError(f"--root {args.root} is a file: pass a directory (it is created if missing).")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a TCP port: pass 0..65535 (0 picks a free port).")
    try:
        faults = [Fault.parse(spec) for spec in args.fault]
    except ValueError as error:
        raise ConfigError(f"--fault: {error}") from error
    if args.max_body_mb <= 0:
        raise ConfigError(f"--max-body-mb {args.max_body_mb} must be positive.")
    token = _token(args)
    if token is None and not is_loopback_host(args.host):
        raise ConfigError(
            f"--host {args.host} lets other machines in, and without a token anyone could write: give --token-file "
            f"or {TOKEN_ENV}, or bind 127.0.0.1."
        )
    args.root.mkdir(parents=True, exist_ok=True)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        hub = LocalHub(
            args.root, host=args.host, port=args.port, token=token, faults=faults, log=log,
            max_body_bytes=int(args.max_body_mb * 1024 * 1024), public_url=args.public_url,
        )
    except OSError as error:
        raise HubError(f"Cannot listen on {args.host}:{args.port} ({error}): pick another --port.") from error
    url = args.public_url or hub.url
    print(f"Local Hub serving {args.root.resolve()} at {url}", flush=True)
    print(f"Point clients at it: HF_ENDPOINT={url} HF_HUB_DISABLE_XET=1 (Ctrl-C stops)", flush=True)
    print(hub.access, flush=True)
    try:
        hub.serve_forever()
    except KeyboardInterrupt:
        print("Local Hub stopped.", flush=True)
    return 0
