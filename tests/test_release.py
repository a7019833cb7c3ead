"""`spectra-hf release`: the public release (synthetic, built with stock transformers and real GPTQ, served by the
project's local Hub as org SpectraSuite) re-published to another org.

References come from outside the code under test: the release folders themselves (logits of stock
LlamaForCausalLM on them, their tensors), integer codes and scales the test draws itself, GPTQ v1 tensors unpacked
here in float64, and the local Hub's own commit counters.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file
from synthetic_release import ORG, ReleaseSpec, build_release, release_logits, set_tensor

import spectra_hf
from spectra_hf.cli import main
from spectra_hf.errors import CheckpointError
from spectra_hf.hub.localhub import LocalHub
from spectra_hf.quantization.recover import recover_codes
from spectra_hf.release import run_release
from spectra_hf.release.journal import JOURNAL_FILE
from spectra_hf.release.manifest import MANIFEST_FILE, MANIFEST_REPO

PROBE = torch.tensor([[0, 17, 250, 3, 99, 480, 12, 7, 311, 64, 5, 200]])  # [1, 12] token ids < 512


def _commits(hub: LocalHub, org: str) -> dict[str, int]:
    return {repo: n for repo, n in hub.stats["commits"].items() if repo.startswith(f"{org}/")}


def _publish_argv(work: Path, target: str, endpoint: str, *extra: str) -> list[str]:
    return [
        "release",
        "publish",
        "--from",
        ORG,
        "--to",
        target,
        "--endpoint",
        endpoint,
        "--work-dir",
        str(work),
        "--no-progress",
        *extra,
    ]


# -- recovering GPTQ codes: integer codes and scales drawn here, W = fl16(s * k) -------------------------------------


@pytest.mark.parametrize("bits, group_size", [(3, 128), (4, 128), (6, -1), (8, -1)])
def test_codes_and_scales_are_recovered_from_fp16_weights(bits, group_size):
    generator = torch.Generator().manual_seed(bits)
    out_features, in_features = 64, 256
    groups = 1 if group_size < 0 else in_features // group_size
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = torch.randint(low, high + 1, (out_features, in_features), generator=generator)  # [64, 256]
    codes[:, 0] = low  # GPTQ's symmetric grid reaches -2^(b-1) in most groups
    scales = (torch.rand(out_features, groups, generator=generator) * 0.01 + 1e-4).half()  # [64, groups]
    per_column = scales.float().repeat_interleave(in_features // groups, dim=1)  # [64, 256]
    weight = (per_column * codes).half()
    recovered = recover_codes(weight, bits=bits, group_size=group_size, name="w")
    again = (recovered.scales.float().repeat_interleave(in_features // groups, dim=1) * recovered.codes.float()).half()
    assert torch.equal(again.view(torch.int16), weight.view(torch.int16))  # bit for bit
    assert recovered.fit.bit_exact and recovered.fit.values == weight.numel()
    assert torch.equal(recovered.codes.long(), codes) and torch.equal(recovered.scales, scales)


def test_a_weight_on_no_lattice_is_refused_by_name():
    codes = torch.randint(-8, 8, (32, 128), generator=torch.Generator().manual_seed(0))
    weight = (codes * 0.01).half()
    weight[3, 70] = weight[3, 70] + 0.0037  # off the grid of its group by about a third of a step
    with pytest.raises(CheckpointError, match=r"model.layers.0.mlp.up_proj.weight is not a 4-bit GPTQ weight.*row 3"):
        recover_codes(weight, bits=4, group_size=128, name="model.layers.0.mlp.up_proj.weight")


# -- a small release on the session's local Hub (HF_ENDPOINT): one TriLM and one checkpoint branch ---------------------


@pytest.fixture(scope="module")
def small_release(local_hub, tmp_path_factory, tokenizer):
    spec = ReleaseSpec(trilm={"190M": (1, [3000])})
    return build_release(
        HfApi(endpoint=local_hub.url), spec, tmp_path_factory.mktemp("small-release"), tokenizer=tokenizer
    )


def test_one_command_republishes_a_trilm_with_its_checkpoint(local_hub, small_release, tmp_path, capsys):
    work = tmp_path / "work"
    argv = _publish_argv(work, "smallorg", local_hub.url, "--models", "TriLM_190M", "--max-disk", "5MB")
    assert main(argv) == 0, capsys.readouterr().err
    assert _commits(local_hub, "smallorg") == {"smallorg/TriLM_190M": 2, f"smallorg/{MANIFEST_REPO}": 1}

    for revision, folder in (
        ("step3000", "SpectraSuite/TriLM_190M_Unpacked_ckpts@step3000"),
        ("main", "SpectraSuite/TriLM_190M_Unpacked@main"),
    ):
        model = spectra_hf.TriLMForCausalLM.from_pretrained(
            "smallorg/TriLM_190M", revision=revision, dtype=torch.float32, ternary_inference="dense"
        )
        assert type(model).__name__ == "TriLMForCausalLM" and model.config.weight_format == "packed"
        with torch.no_grad():
            logits = model(PROBE).logits
        torch.testing.assert_close(logits, release_logits(small_release[folder], PROBE), rtol=0, atol=1e-4)

    api = HfApi()
    card = Path(api.hf_hub_download("smallorg/TriLM_190M", "README.md", revision="step3000")).read_text()
    assert "## Provenance" in card and "SpectraSuite/TriLM_190M_Unpacked_ckpts" in card and "bit for bit" in card
    assert f"{3000 * 2**20 / 1e9:.3g}B" in card  # tokens seen: step x the registry's 1M-token TriLM batch
    revisions = json.loads(Path(api.hf_hub_download("smallorg/TriLM_190M", "revisions.json")).read_text())
    assert revisions["revisions"] == [{"branch": "step3000", "step": 3000, "tokens_seen": 3000 * 2**20}]
    manifest = json.loads((work / MANIFEST_FILE).read_text())
    assert manifest["complete"] and [r["branch"] for r in manifest["revisions"]] == ["step3000", "main"]
    assert any("architecture differs" in w for w in manifest["warnings"])  # tiny model under a real name
    published = Path(api.hf_hub_download(f"smallorg/{MANIFEST_REPO}", MANIFEST_FILE)).read_text()
    assert json.loads(published) == manifest
    weights = Path(api.hf_hub_download("smallorg/TriLM_190M", "model.safetensors", revision="step3000"))
    import hashlib

    assert manifest["revisions"][0]["files"]["model.safetensors"] == hashlib.sha256(weights.read_bytes()).hexdigest()

    # a second run finds everything done and makes no commit
    assert main(argv) == 0
    assert _commits(local_hub, "smallorg") == {"smallorg/TriLM_190M": 2, f"smallorg/{MANIFEST_REPO}": 1}
    assert json.loads((work / MANIFEST_FILE).read_text()) == manifest


def test_dry_run_lists_revisions_with_the_release_file_sizes(local_hub, small_release, tmp_path, capsys):
    argv = [
        "release",
        "publish",
        "--from",
        ORG,
        "--to",
        "dryorg",
        "--endpoint",
        local_hub.url,
        "--work-dir",
        str(tmp_path / "w"),
        "--models",
        "TriLM_190M",
        "--dry-run",
        "--json",
    ]
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [r["target"] for r in plan["revisions"]] == ["dryorg/TriLM_190M@step3000", "dryorg/TriLM_190M@main"]
    folder = small_release["SpectraSuite/TriLM_190M_Unpacked@main"]
    local_bytes = sum(p.stat().st_size for p in folder.iterdir())
    assert local_bytes <= plan["revisions"][1]["bytes"] <= local_bytes + 4096  # + the .gitattributes the Hub creates
    assert plan["estimate"]["download_bytes"] == sum(r["bytes"] for r in plan["revisions"])
    assert plan["estimate"]["requests"] > 0 and plan["estimate"]["seconds"] > 0
    assert not (tmp_path / "w").exists() and "dryorg/TriLM_190M" not in str(local_hub.stats["commits"])


def _set_one(row: int, column: int, value: float):
    def edit(weight: torch.Tensor) -> torch.Tensor:
        weight[row, column] = value
        return weight

    return edit


def _nudge_off_grid(row: int, column: int):
    """Move one value about a third of a grid step (max |row| / 128 at 8 bits) away from where it was."""

    def edit(weight: torch.Tensor) -> torch.Tensor:
        weight[row, column] += weight[row].abs().max() / 128 * 0.37
        return weight

    return edit


def test_the_2_3b_spelling_of_2_4b_is_found_and_republished_under_the_registry_name(own_hub, tmp_path, tokenizer):
    api = HfApi(endpoint=own_hub.url)
    folders = build_release(api, ReleaseSpec(trilm={"2.3B": (3, [100])}), tmp_path / "release", tokenizer=tokenizer)
    report = run_release(source_org=ORG, target_org="neworg", work_dir=tmp_path / "work", endpoint=own_hub.url,
                         models=["TriLM_2.4B"], progress=False)
    assert report.complete
    assert [(r["release"]["repo"], r["repo"], r["branch"]) for r in report.manifest["revisions"]] == [
        ("SpectraSuite/TriLM_2.3B_Unpacked_ckpts", "neworg/TriLM_2.4B", "step100"),
        ("SpectraSuite/TriLM_2.3B_Unpacked", "neworg/TriLM_2.4B", "main"),
    ]
    local = api.snapshot_download("neworg/TriLM_2.4B", revision="step100")
    model = spectra_hf.TriLMForCausalLM.from_pretrained(local, dtype=torch.float32, ternary_inference="dense")
    assert model.config.pretraining_model_parallel == 3
    with torch.no_grad():
        logits = model(PROBE).logits
    expected = release_logits(folders["SpectraSuite/TriLM_2.3B_Unpacked_ckpts@step100"], PROBE)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)


# -- bad input: one clear error each, nothing half-published (each on a local Hub of its own) ------------------------


@pytest.fixture()
def own_hub(tmp_path):
    with LocalHub(tmp_path / "hub", port=0) as hub:
        yield hub


@pytest.mark.parametrize("case", ["not_ternary", "missing_branch", "missing_repo", "too_little_disk"])
def test_bad_input_gives_one_clear_error_and_publishes_nothing(case, own_hub, tmp_path, tokenizer, capsys):
    api = HfApi(endpoint=own_hub.url)
    folders = build_release(api, ReleaseSpec(trilm={"99M": (1, [1000])}), tmp_path / "release", tokenizer=tokenizer)
    extra = ["--models", "TriLM_99M"]
    if case == "not_ternary":
        folder = folders["SpectraSuite/TriLM_99M_Unpacked@main"]
        set_tensor(folder, "model.layers.1.self_attn.q_proj.weight", _set_one(2, 5, 0.3))
        api.upload_folder(repo_id="SpectraSuite/TriLM_99M_Unpacked", folder_path=str(folder))
        expected, code = "model.layers.1.self_attn.q_proj.weight", 1
    elif case == "missing_branch":
        extra += ["--steps", "1000", "2000"]
        expected, code = "has no checkpoint branch step2000 (its branches: step1000)", 2
    elif case == "missing_repo":
        extra = ["--models", "TriLM_99M", "FloatLM_560M"]
        expected, code = "the release has no repo for FloatLM_560M", 2
    else:
        extra += ["--max-disk", "2kB"]
        expected, code = "--max-disk 2.00 kB is too small for one revision", 2
    assert main(_publish_argv(tmp_path / "work", "neworg", own_hub.url, *extra)) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("spectra-hf release: error:") and expected in err[-1], err[-1]
    published = {m.id for m in api.list_models(author="neworg")}
    if case == "not_ternary":  # the good checkpoint is out, the refused main is not; the manifest says why
        assert api.list_repo_refs("neworg/TriLM_99M").branches and "step1000" in {
            b.name for b in api.list_repo_refs("neworg/TriLM_99M").branches
        }
        files = {f.path for f in api.list_repo_tree("neworg/TriLM_99M", revision="main")}
        assert "model.safetensors" not in files
        manifest = json.loads((tmp_path / "work" / MANIFEST_FILE).read_text())
        assert [r["status"] for r in manifest["revisions"]] == ["published", "refused"] and not manifest["complete"]
    else:
        assert published == set()


# -- the whole thing: every family, MP 1 and 2, both size spellings, kills, disk budget (slow) ---------------------

FULL = ReleaseSpec(
    trilm={"99M": (1, [1000, 2000]), "1.1B": (2, [500])},
    floatlm={"99M": [1000]},
    quantlm=[("2.3B", 4), ("99M", 8)],
)
FULL_MODELS = ["TriLM_99M", "TriLM_1.1B", "FloatLM_99M", "QuantLM_2.4B_4bit", "QuantLM_99M_8bit"]
BRANCHES = {"TriLM_99M": 3, "TriLM_1.1B": 2, "FloatLM_99M": 2, "QuantLM_2.4B_4bit": 1, "QuantLM_99M_8bit": 1}


@pytest.fixture(scope="module")
def full_release(local_hub, tmp_path_factory, tokenizer, corpus_files):
    api = HfApi(endpoint=local_hub.url)
    folders = build_release(
        api, FULL, tmp_path_factory.mktemp("full-release"), tokenizer=tokenizer, calibration=corpus_files[0]
    )
    assert api.repo_exists("SpectraSuite/QuantLM_2.3B_4bit_Unpacked")
    return folders


def _run_until(argv: list[str], journal: Path, condition, env: dict) -> int:
    """Start the CLI in a subprocess and SIGKILL it as soon as `condition(journal lines)` holds."""
    process = subprocess.Popen(
        [sys.executable, "-m", "spectra_hf.cli", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while process.poll() is None:
        lines = journal.read_text().splitlines() if journal.is_file() else []
        entries = [json.loads(line) for line in lines if line.endswith("}")]
        if condition(entries):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    return process.wait()


def _dequantize_v1(state: dict[str, torch.Tensor], prefix: str, bits: int) -> torch.Tensor:
    """W [out, in] = scale[g] * (q - (stored_zero + 1)) from GPTQ v1 int32 words (2/4/8 bits), in float64."""
    per_word = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    mask = (1 << bits) - 1
    qweight, qzeros = state[f"{prefix}.qweight"], state[f"{prefix}.qzeros"]
    q = ((qweight.unsqueeze(1) >> shifts.view(1, -1, 1)) & mask).reshape(qweight.shape[0] * per_word, -1)  # [in, out]
    zeros = ((qzeros.unsqueeze(2) >> shifts.view(1, 1, -1)) & mask).reshape(qzeros.shape[0], -1) + 1  # [G, out]
    g_idx = state[f"{prefix}.g_idx"].long()
    return (state[f"{prefix}.scales"].double()[g_idx] * (q.double() - zeros[g_idx].double())).T


@pytest.mark.slow
def test_full_release_survives_kills_stays_under_budget_and_reproduces_every_family(local_hub, full_release, tmp_path):
    from transformers import LlamaForCausalLM

    from spectra_hf.quantization import load_quantlm

    budget = 4_000_000  # the largest revision (the 2.4B QuantLM, hidden 128) is about 1.2 MB
    env = {**os.environ, "HF_ENDPOINT": local_hub.url}
    work = tmp_path / "killed"
    argv = _publish_argv(work, "killedorg", local_hub.url, "--models", *FULL_MODELS, "--max-disk", str(budget))
    journal = work / JOURNAL_FILE
    moments = [
        lambda e: any(x["state"] == "downloaded" for x in e),  # mid-conversion of the first revision
        lambda e: sum(x["state"] == "published" for x in e) >= 3,  # between revisions
        lambda e: any(
            x["state"] == "converted" and "QuantLM" in x["key"] for x in e
        ),  # a QuantLM converted, publishing
    ]
    for moment in moments:
        assert _run_until(argv, journal, moment, env) == -signal.SIGKILL
    assert main(argv) == 0
    killed_manifest = json.loads((work / MANIFEST_FILE).read_text())
    commits = _commits(local_hub, "killedorg")
    assert {repo.split("/")[1]: n for repo, n in commits.items() if MANIFEST_REPO not in repo} == BRANCHES  # none twice

    # an uninterrupted run to another org, with the work directory's size sampled while it runs
    clean_work, peak, running = tmp_path / "clean", [0], [True]

    def sample():
        while running[0]:
            size = 0
            for root, _, names in os.walk(clean_work):
                for name in names:
                    with contextlib.suppress(FileNotFoundError):  # removed while we looked
                        size += os.lstat(os.path.join(root, name)).st_size
            peak[0] = max(peak[0], size)
            time.sleep(0.01)

    release_clean = functools.partial(  # the uninterrupted run, and below its no-op re-run
        run_release, source_org=ORG, target_org="cleanorg", work_dir=clean_work, endpoint=local_hub.url,
        models=FULL_MODELS, max_disk=budget, progress=False,
    )
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        report = release_clean()
    finally:
        running[0] = False
        sampler.join()
    assert report.complete and 0 < peak[0] < budget and report.peak_disk_bytes < budget
    clean_manifest = json.loads((clean_work / MANIFEST_FILE).read_text())
    as_killed = json.loads(json.dumps(clean_manifest).replace("cleanorg", "killedorg"))
    for manifest in (as_killed, killed_manifest):  # the card and revisions.json name the org, so their hashes differ
        for row in manifest["revisions"]:
            assert {"README.md", "model.safetensors", "config.json"} <= set(row["files"])
            assert len(row.pop("commit")) == 40  # the target branch's commit: its own in each org
            row["files"] = {
                path: sha for path, sha in row["files"].items() if path not in ("README.md", "revisions.json")
            }
    assert as_killed == killed_manifest  # same manifest after three kills
    again = release_clean()
    assert again.commits == 0 and again.processed == 0

    # every family at every revision: the release's logits (stock Llama on the release files)
    for row in clean_manifest["revisions"]:
        release = row["release"]
        folder = full_release[f"{release['repo']}@{release['revision']}"]
        repo, branch = row["repo"], row["branch"]
        expected = release_logits(folder, PROBE)
        if row["model"].startswith("QuantLM"):
            bits = int(row["model"].split("_")[2].removesuffix("bit"))
            local = Path(HfApi().snapshot_download(repo, revision=branch))
            packed = load_file(local / "model.safetensors")
            weights = load_file(folder / "model.safetensors")
            for name, tensor in weights.items():
                if name.endswith("_proj.weight"):
                    mine = _dequantize_v1(packed, name.removesuffix(".weight"), bits).to(torch.float16)
                    assert torch.equal(mine.view(torch.int16), tensor.view(torch.int16)), name  # bit for bit
            model = load_quantlm(local, dtype=torch.float32, backend="torch")
            atol = 2e-3  # float32 s * k against the release's fp16-rounded s * k
        elif row["model"].startswith("TriLM"):
            model = spectra_hf.TriLMForCausalLM.from_pretrained(
                repo, revision=branch, dtype=torch.float32, ternary_inference="dense"
            )
            atol = 1e-4
        else:
            model = LlamaForCausalLM.from_pretrained(
                repo, revision=branch, dtype=torch.float32
            )  # stock Llama loads FloatLM
            atol = 1e-5
        with torch.no_grad():
            logits = model(PROBE).logits
        torch.testing.assert_close(logits, expected, rtol=0, atol=atol, msg=f"{repo}@{branch}")
        assert row["status"] == "published" and row["checks"], row


@pytest.mark.slow
def test_off_lattice_quantlm_is_refused_and_import_writes_a_suite_dir(own_hub, tmp_path, tokenizer, corpus_files):
    api = HfApi(endpoint=own_hub.url)
    folders = build_release(
        api, ReleaseSpec(quantlm=[("99M", 8)]), tmp_path / "release", tokenizer=tokenizer, calibration=corpus_files[0]
    )
    suite = tmp_path / "suite"
    report = run_release(
        source_org=ORG,
        suite_dir=suite,
        work_dir=tmp_path / "w1",
        endpoint=own_hub.url,
        models=["QuantLM_99M_8bit"],
        progress=False,
    )
    assert report.complete and (suite / "QuantLM_99M_8bit" / "quantize_config.json").is_file()
    info = json.loads((suite / "QuantLM_99M_8bit" / "spectra_export.json").read_text())
    assert info["extra"]["release"]["repo"] == "SpectraSuite/QuantLM_99M_8bit_Unpacked"

    folder = folders["SpectraSuite/QuantLM_99M_8bit_Unpacked@main"]
    set_tensor(folder, "model.layers.0.mlp.down_proj.weight", _nudge_off_grid(5, 9))
    api.upload_folder(repo_id="SpectraSuite/QuantLM_99M_8bit_Unpacked", folder_path=str(folder))
    report = run_release(
        source_org=ORG,
        target_org="neworg",
        work_dir=tmp_path / "w2",
        endpoint=own_hub.url,
        models=["QuantLM_99M_8bit"],
        progress=False,
    )
    assert not report.complete and "model.layers.0.mlp.down_proj.weight is not a 8-bit GPTQ weight" in report.refused[0]
    assert not api.repo_exists("neworg/QuantLM_99M_8bit")
