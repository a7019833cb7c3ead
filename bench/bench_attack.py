"""Attack run of `spectra-hf release publish` (bounded, loopback only): what it reports must be what the Hub holds.

    python bench/bench_attack.py [--kills 4] [--seed 0]

A small synthetic release (TriLM_99M with two checkpoint branches, FloatLM_99M with one; tests/synthetic_release.py)
is served by `spectra-hf hub serve` (bench_soak.Server) and re-published by `spectra-hf release publish`
subprocesses into one work dir under a tight --max-disk (the preflight minimum plus 256 kB), while:

- `--kills` times, the publisher is SIGKILLed after a random number of new journal lines plus a random delay;
- stray files are dropped into the work dir's download and convert folders before a run;
- the release's FloatLM_99M main is replaced by other weights while a run is under way (after its discovery);
- the journal gets a torn last line (a run must go on) and, once, a malformed line (a run must stop with one error
  naming the line; `--rebuild-journal` then goes on);
- the work dir is reused with another `--to` (must be refused in one line, publishing nothing there);
- a ballast file takes the work dir near the budget (the run must stop on the budget, then resume once it is gone);

and `du` samples the work dir every 50 ms throughout. When a run has exited 0, every row of the manifest (the local
one, equal to the one published on the target) is checked against the Hub: branch at the recorded commit, the tree
holds exactly the listed files, each file downloaded and its sha256 compared; the moved revision's published
tensors are compared with the release's at the commit the manifest names. Exit status 1 on any discrepancy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from bench_soak import Server, free_port

SOURCE, TARGET, OTHER = "SpectraSuite", "attack", "attack-other"
MODELS = ["TriLM_99M", "FloatLM_99M"]
MOVED = "SpectraSuite/FloatLM_99M"


class DuSampler:
    """`du -s --block-size=1` of a directory every `interval_s`, keeping the largest."""

    def __init__(self, path: Path, interval_s: float = 0.05) -> None:
        self.path, self.interval_s, self.peak, self.samples = path, interval_s, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self.path.exists():
                continue
            done = subprocess.run(["du", "-s", "--block-size=1", str(self.path)], capture_output=True, text=True)
            if done.stdout:
                self.peak = max(self.peak, int(done.stdout.split()[0]))
                self.samples += 1

    def __enter__(self) -> DuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _journal_lines(journal: Path) -> int:
    return journal.read_bytes().count(b"\n") if journal.is_file() else 0


def _publish_command(url: str, work: Path, org: str, budget: int, *extra: str) -> list[str]:
    return [str(Path(sys.executable).with_name("spectra-hf")), "release", "publish", "--from", SOURCE, "--to", org,
            "--endpoint", url, "--work-dir", str(work), "--models", *MODELS, "--max-disk", str(budget),
            "--no-progress", *extra]  # fmt: skip


def _run(command: list[str], *, journal: Path | None = None, kill_after: tuple[int, float] | None = None,
         during=None) -> tuple[int, str]:  # fmt: skip
    """Run the publisher; SIGKILL it `kill_after` = (new journal lines, then seconds); `during()` once it journals."""
    before = _journal_lines(journal) if journal else 0
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fired = False
    while process.poll() is None:
        new = _journal_lines(journal) - before if journal else 0
        if during is not None and not fired and new >= 1:
            during()
            fired = True
        if kill_after is not None and new >= kill_after[0]:
            time.sleep(kill_after[1])
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    out, err = process.communicate()
    return process.wait(), (out + err).strip()


def _check_rows(url: str, manifest: dict, problems: list[str]) -> dict:
    """Every manifest row against the Hub: branch head, exact tree, sha256 of each downloaded file."""
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.utils import get_session

    api = HfApi(endpoint=url, token=False)
    figures = {"rows": 0, "files": 0, "bytes": 0}
    for row in manifest["revisions"]:
        where = f"{row['repo']}@{row['branch']}"
        figures["rows"] += 1
        if "stray.txt" in row.get("files", {}):
            problems.append(f"{where}: a stray file of the work dir was published")
        if row["status"] != "published":
            problems.append(f"{where}: status {row['status']}")
            continue
        heads = {ref.name: ref.target_commit for ref in api.list_repo_refs(row["repo"]).branches}
        if heads.get(row["branch"]) != row.get("commit"):
            problems.append(f"{where}: branch at {heads.get(row['branch'])}, manifest says {row.get('commit')}")
            continue
        tree = {e.path for e in api.list_repo_tree(row["repo"], revision=row["commit"], recursive=True)}
        if tree - {".gitattributes"} != set(row["files"]):
            problems.append(f"{where}: tree {sorted(tree)} differs from the manifest's {sorted(row['files'])}")
        for path, sha256 in row["files"].items():
            digest = hashlib.sha256()
            address = hf_hub_url(row["repo"], path, revision=row["commit"], endpoint=url)
            with get_session().stream("GET", address, timeout=60, follow_redirects=True) as response:
                for chunk in response.iter_bytes(1 << 20):
                    digest.update(chunk)
                    figures["bytes"] += len(chunk)
            figures["files"] += 1
            if digest.hexdigest() != sha256:
                problems.append(f"{where}/{path}: sha256 {digest.hexdigest()[:12]} != manifest {sha256[:12]}")
    return figures


def _check_moved(url: str, manifest: dict, problems: list[str]) -> None:
    """The moved FloatLM's published tensors equal the release's at the commit the manifest names."""
    import torch
    from huggingface_hub import HfApi
    from safetensors.torch import load_file

    api = HfApi(endpoint=url, token=False)
    row = next(r for r in manifest["revisions"] if r["release"]["repo"] == MOVED)
    release = load_file(api.hf_hub_download(MOVED, "model.safetensors", revision=row["release"]["commit"]))
    published = load_file(api.hf_hub_download(row["repo"], "model.safetensors", revision=row["commit"]))
    if set(release) != set(published) or any(not torch.equal(release[k], published[k]) for k in release):
        problems.append(f"{row['repo']}@main: tensors differ from the release at {row['release']['commit'][:12]}")


def _build(url: str, root: Path) -> tuple[int, Path]:
    """Upload the release; returns (its largest revision in bytes, the replacement weights for the move)."""
    from huggingface_hub import HfApi
    from synthetic_release import ReleaseSpec, build_release, floatlm_checkpoint

    from spectra_hf.testing.corpus import local_corpus, train_tokenizer

    tokenizer = train_tokenizer(local_corpus(200), vocab_size=512)
    api = HfApi(endpoint=url, token=False)
    spec = ReleaseSpec(trilm={"99M": (1, [1000, 2000])}, floatlm={"99M": [1000]})
    folders = build_release(api, spec, root / "release", tokenizer=tokenizer)
    replacement = floatlm_checkpoint(root / "moved", seed=77, tokenizer=tokenizer)
    largest = max(
        sum(getattr(e, "size", 0) for e in api.list_repo_tree(repo, revision=branch, recursive=True))
        for repo, branch in (key.split("@") for key in folders)
    )
    return largest, replacement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=4, help="SIGKILLs of the publisher at random moments")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from huggingface_hub import HfApi

    from spectra_hf.release.estimate import disk_needed

    problems: list[str] = []
    outcomes: list[str] = []

    def expect(what: str, code: int, output: str, wanted: int | tuple, needle: str = "") -> None:
        wanted = wanted if isinstance(wanted, tuple) else (wanted,)
        last = output.splitlines()[-1] if output else ""
        ok = code in wanted and needle in output
        outcomes.append(f"{what}: exit {code}")
        print(f"  {what:<44} exit {code:>3}  {last[:110]}", flush=True)
        if not ok:
            problems.append(f"{what}: exit {code} (wanted {wanted}{', ' + repr(needle) if needle else ''}): {last}")

    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        os.environ["HF_HOME"] = str(tmp / "hf-home")
        server = Server(tmp / "hub", free_port(), [])
        server.start()
        started = time.perf_counter()
        try:
            largest, replacement = _build(server.url, tmp)
            budget = disk_needed(largest) + 256_000
            work = tmp / "work"
            journal = work / "journal.jsonl"
            publish = _publish_command(server.url, work, TARGET, budget)
            print(f"release: 5 revisions, largest {largest} bytes; --max-disk {budget} bytes; {args.kills} kills",
                  flush=True)  # fmt: skip
            with DuSampler(work) as du:
                moved = [False]

                def move() -> None:
                    HfApi(endpoint=server.url, token=False).upload_folder(
                        repo_id=MOVED, folder_path=str(replacement), commit_message="moved during a run"
                    )
                    moved[0] = True

                for kill in range(args.kills):
                    if kill == 1:  # stray files for whichever revision comes next
                        for folder in ("download", "convert"):
                            for child in (work / folder).iterdir() if (work / folder).is_dir() else []:
                                (child / "stray.txt").write_text("stray\n")
                    code, output = _run(publish, journal=journal, kill_after=(rng.randint(1, 4), rng.uniform(0, 0.8)),
                                        during=move if kill == args.kills // 2 and not moved[0] else None)  # fmt: skip
                    expect(f"kill {kill + 1}", code, output, (-signal.SIGKILL, 0))
                    with open(journal, "ab") as handle:  # a kill mid-write: a torn last line
                        handle.write(b'{"key": "SpectraSuite/TriLM_99M_Unpacked@main", "state": "publ')
                if not moved[0]:
                    move()
                lines = journal.read_bytes().split(b"\n")
                lines.insert(1, b'{"key": "x@main", "state": "published", "files": "none"}')
                journal.write_bytes(b"\n".join(lines))
                expect("malformed journal line", *_run(publish), 2, "line 2 is not a journal record")
                code, output = _run(_publish_command(server.url, work, OTHER, budget))
                expect("work dir reused with another --to", code, output, 2, "belongs to another target")
                ballast = work / "ballast.bin"
                held = int(subprocess.run(["du", "-s", "--block-size=1", str(work)], capture_output=True,
                                          text=True).stdout.split()[0])  # fmt: skip
                ballast.write_bytes(b"\0" * max(0, budget - held - largest // 2))  # less than one revision left
                code, output = _run([*publish, "--rebuild-journal"])
                expect("rebuild journal, ballast near the budget", code, output, 2, "would be passed")
                ballast.unlink()
                code, output = _run(publish)
                expect("final run", code, output, 0)
            attack_s = time.perf_counter() - started
            manifest = json.loads((work / "manifest.json").read_text())
            figures = _check_rows(server.url, manifest, problems)
            api = HfApi(endpoint=server.url, token=False)
            published = json.loads(
                Path(api.hf_hub_download(f"{TARGET}/spectra-release-manifest", "manifest.json")).read_text()
            )
            if published != manifest:
                problems.append("the manifest published on the target differs from the local one")
            _check_moved(server.url, manifest, problems)
            if list(api.list_models(author=OTHER)):
                problems.append(f"{OTHER} holds repos: the reused work dir published there")
            if du.peak > budget:
                problems.append(f"du sampled {du.peak} bytes in the work dir, above the budget {budget}")
            peak_line = next((line for line in output.splitlines() if "peak disk" in line), "")
            commits = server.poll_stats().get("commits", {})
        finally:
            server.kill()

    load = os.getloadavg()
    print()
    print(f"load average           {load[0]:.2f} / {load[1]:.2f} (1/5 min), {os.cpu_count()} CPUs (shared machine)")
    print(f"attack wall time       {attack_s:.0f} s ({len(outcomes)} publisher runs)")
    print(f"kills                  {sum('kill' in o and '-9' in o for o in outcomes)} of {args.kills} landed")
    print(f"manifest rows checked  {figures['rows']}, {figures['files']} files, {figures['bytes']} bytes by sha256")
    print(f"commits on the target  {sum(n for repo, n in commits.items() if repo.startswith(TARGET + '/'))}")
    print(f"disk budget            {budget} bytes; du peak {du.peak} bytes ({du.samples} samples); tool: "
          f"{peak_line.split('peak disk')[-1].split(';')[0].strip()}")  # fmt: skip
    print(f"discrepancies          {len(problems)}" + "".join(f"\n  - {p}" for p in problems))
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
