"""Re-publishing the release: time, peak memory and peak disk per GB of release converted, per family, and the
dry-run estimate for the whole suite (54 models + every checkpoint branch).

    python bench/bench_release.py [--hidden 512 --layers 4 --vocab 8192 --checkpoints 2]

Each family runs in a fresh subprocess (peak RSS is per process) against a local Hub holding a bench-scale release
built with stock transformers: TriLM (2 scale shards) and FloatLM with `--checkpoints` step branches each, and a
4-bit QuantLM whose fp16 weights are drawn on a symmetric 4-bit lattice with fp16 group scales (what GPTQ's
dequantization produces; recovery cost does not depend on how the codes were found, and GPTQ itself would take
minutes here). The full-suite estimate cannot read the release's real file sizes offline: it takes fp16 sizes
from the registry's parameter counts and assumes 28 checkpoints per trained run (500+ in all), and converts at
the rate measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

FAMILIES = {"trilm": "TriLM_1.1B", "floatlm": "FloatLM_99M", "quantlm": "QuantLM_99M_4bit"}


def _build(hub_url: str, work: Path, args) -> None:
    import torch
    from huggingface_hub import HfApi
    from synthetic_release import ORG, _ckpts_repo, upload
    from transformers import LlamaConfig, LlamaForCausalLM
    from trilm_release import release_model

    from spectra_hf.testing.corpus import local_corpus, train_tokenizer

    api = HfApi(endpoint=hub_url)
    tokenizer = train_tokenizer(local_corpus(200), vocab_size=512)
    shape = {
        "hidden_size": args.hidden,
        "intermediate_size": 3 * args.hidden,
        "num_attention_heads": args.hidden // 64,
        "num_key_value_heads": args.hidden // 64,
        "num_hidden_layers": args.layers,
        "vocab_size": args.vocab,
    }

    def save(model, name: str) -> Path:
        folder = work / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    def floatlm(seed: int) -> LlamaForCausalLM:
        torch.manual_seed(seed)
        config = LlamaConfig(**shape, head_dim=64, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
        return LlamaForCausalLM(config).to(torch.float16)

    upload(api, f"{ORG}/TriLM_1.1B_Unpacked", save(release_model(2, seed=1, **shape), "trilm"))
    upload(api, f"{ORG}/FloatLM_99M", save(floatlm(2), "floatlm"))
    _ckpts_repo(api, f"{ORG}/TriLM_1.1B_Unpacked_ckpts")
    _ckpts_repo(api, f"{ORG}/FloatLM_99M_Unpacked_ckpts")
    for index in range(args.checkpoints):
        step = 1000 * (index + 1)
        upload(
            api,
            f"{ORG}/TriLM_1.1B_Unpacked_ckpts",
            save(release_model(2, seed=10 + index, **shape), f"t{step}"),
            branch=f"step{step}",
        )
        upload(api, f"{ORG}/FloatLM_99M_Unpacked_ckpts", save(floatlm(20 + index), f"f{step}"), branch=f"step{step}")
    quant = floatlm(3)
    with torch.no_grad():
        for name, module in quant.named_modules():
            if name.rsplit(".", 1)[-1].endswith("_proj"):
                out_features, in_features = module.weight.shape
                codes = torch.randint(-8, 8, (out_features, in_features))  # [out, in]
                scales = (torch.rand(out_features, in_features // 128) * 0.01 + 1e-3).half()  # [out, groups]
                module.weight.copy_((scales.float().repeat_interleave(128, dim=1) * codes).half())
    upload(api, f"{ORG}/QuantLM_99M_4bit_Unpacked", save(quant, "quantlm"))


def _measure(family: str, hub_url: str, work: Path) -> dict:
    """One family, in this (fresh) process: run the release publish and sample the work directory's size."""
    from peak_memory import peak_rss_bytes

    from spectra_hf.release import run_release
    from spectra_hf.release.disk import directory_bytes

    peak, running = [0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], directory_bytes(work))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    report = run_release(
        source_org="SpectraSuite",
        target_org=f"bench-{family}",
        work_dir=work,
        endpoint=hub_url,
        models=[FAMILIES[family]],
        progress=False,
    )
    seconds = time.perf_counter() - started
    running[0] = False
    sampler.join()
    assert report.complete, report.manifest
    release_bytes = report.discovery.bytes
    return {
        "family": family,
        "revisions": len(report.discovery.revisions),
        "release_bytes": release_bytes,
        "seconds": seconds,
        "peak_rss": peak_rss_bytes(),
        "peak_disk": max(peak[0], report.peak_disk_bytes),
        "commits": report.commits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--checkpoints", type=int, default=2)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: FAMILY,HUB_URL,WORK
    args = parser.parse_args()
    if args.measure:
        family, url, work = args.measure.split(",")
        print(json.dumps(_measure(family, url, Path(work))))
        return

    os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
    from spectra_hf.hub.localhub import LocalHub
    from spectra_hf.release.estimate import estimate, full_suite_revisions

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch, LocalHub(Path(scratch) / "hub", port=0) as hub:
        _build(hub.url, Path(scratch) / "release", args)
        rows = []
        for family in FAMILIES:
            env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(Path(scratch) / "hf-home")}
            done = subprocess.run(
                [sys.executable, __file__, "--measure", f"{family},{hub.url},{Path(scratch) / ('work-' + family)}"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    load_after = os.getloadavg()

    print(
        f"release re-publication, bench scale (hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, "
        f"{args.checkpoints} checkpoints per trained model); "
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}"
    )
    print(
        f"{'family':<8} {'revisions':>9} {'release MB':>10} {'seconds':>8} {'s per GB':>9} {'peak RSS MB':>11} "
        f"{'peak disk MB':>12} {'disk / largest revision':>24}"
    )
    per_gb = {}
    for row in rows:
        gb = row["release_bytes"] / 1e9
        largest = row["release_bytes"] / row["revisions"]
        per_gb[row["family"]] = row["seconds"] / gb
        print(
            f"{row['family']:<8} {row['revisions']:>9} {row['release_bytes'] / 1e6:>10.1f} {row['seconds']:>8.1f} "
            f"{row['seconds'] / gb:>9.0f} {row['peak_rss'] / 1e6:>11.0f} {row['peak_disk'] / 1e6:>12.1f} "
            f"{row['peak_disk'] / largest:>24.2f}"
        )
    total_bytes = sum(r["release_bytes"] for r in rows)
    rate = total_bytes / 1e9 / sum(r["seconds"] for r in rows)
    print(f"overall: {rate:.3f} GB of release per second (conversion + local publish, no network)")
    suite = estimate(full_suite_revisions(), convert_gb_s=rate)
    print(
        "full suite dry-run estimate (registry parameter counts at fp16, 28 checkpoints per trained run: "
        "the real release sizes are not reachable offline):"
    )
    print("  " + suite.describe())
    print(f"  conversion alone at the measured rate: {suite.download_bytes / 1e9 / rate / 3600:.1f} h")


if __name__ == "__main__":
    main()
