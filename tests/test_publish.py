"""Publishing the suite against the project's local Hub with the real huggingface_hub client and transformers.

The stand-in suite has the 54 suite names with tiny models (each export with its own random weights) and two
checkpoint branches per TriLM and FloatLM: 54 repos, 90 branches.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from huggingface_hub.utils.sha import git_hash
from safetensors.torch import load_file, save_file

import spectra_hf  # noqa: F401  (registers trilm / floatlm with the Auto classes)
from spectra_hf.checkpoints.exports import checkpoint_dir, model_dir
from spectra_hf.cli import main as cli_main
from spectra_hf.errors import SpectraError
from spectra_hf.hub.localhub import LocalHub
from spectra_hf.hub.pacing import HubLimits, Pacer
from spectra_hf.hub.plan import build_plan
from spectra_hf.hub.publish import publish
from spectra_hf.suite import all_models, get_model
from spectra_hf.testing.standin import build_standin_suite

ORG = "standin"
STEPS = (100, 200)
FAST = HubLimits.unlimited()
SAMPLE = ("TriLM_3.9B", "FloatLM_99M", "QuantLM_1.1B_4bit")  # 6 scale shards, float, quantized


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory, tokenizer, corpus_files) -> Path:
    """The stand-in suite; QuantLM_99M_4bit is a real packed GPTQ export of FloatLM_99M
    (spectra_hf.quantization.gptq)."""
    from spectra_hf.quantization.gptq import export_quantlms

    suite = build_standin_suite(tmp_path_factory.mktemp("suite"), steps=STEPS, tokenizer=tokenizer)
    export_quantlms(
        model_dir(suite, "FloatLM_99M"), suite, calibration=corpus_files[0], bits=(4,), samples=4, length=64
    )
    return suite


@pytest.fixture(scope="module")
def published(suite_dir, local_hub):
    """The whole stand-in suite published to the session's local Hub (which HF_ENDPOINT points at)."""
    plan = build_plan(suite_dir, org=ORG)
    report = publish(plan, endpoint=local_hub.url, limits=FAST, progress=False)
    return plan, report


def _commits(hub: LocalHub, org: str) -> dict[str, int]:
    return {repo: n for repo, n in hub.stats["commits"].items() if repo.startswith(f"{org}/")}


def _small_suite(root: Path, tokenizer, models: tuple[str, ...]) -> Path:
    return build_standin_suite(root, steps=STEPS, tokenizer=tokenizer, models=list(models))


@pytest.mark.slow  # publishes or plans the whole 54-model stand-in suite
def test_full_suite_creates_every_repo_branch_and_collection(published, local_hub):
    plan, report = published
    assert plan.complete and report.verified
    models = {f"{ORG}/{m.name}" for m in all_models()}
    unpacked = {f"{ORG}/{m.name}_Unpacked" for m in all_models() if m.family == "trilm"}
    assert len(models) == 54 and {r.repo_id for r in plan.repos} == models | unpacked
    api = HfApi()
    commits = _commits(local_hub, ORG)
    for repo in plan.repos:
        branches = {b.name for b in api.list_repo_refs(repo.repo_id).branches}
        trained = repo.model.family != "quantlm" and repo.variant == "release"
        expected = {"main"} | ({f"step{s}" for s in STEPS} if trained else set())
        assert branches == expected, repo.repo_id
        assert commits[repo.repo_id] == len(expected)  # exactly one commit per branch
    assert report.commits == sum(len(r.branches) for r in plan.repos) == 90 + 9
    collections = {c.title: c for c in api.list_collections(owner=ORG)}
    for family, count in (("TriLM", 18), ("FloatLM", 9), ("QuantLM", 36)):
        items = {i.item_id for i in api.get_collection(collections[f"Spectra {family}"].slug).items}
        assert len(items) == count and all(i.startswith(f"{ORG}/{family}_") for i in items)


@pytest.mark.slow  # publishes or plans the whole 54-model stand-in suite
@pytest.mark.parametrize("name", SAMPLE)
def test_branches_read_back_with_identical_weights(published, suite_dir, tmp_path, name):
    from transformers import AutoModelForCausalLM

    repo_id = f"{ORG}/{name}"
    revisions = [None] if name.startswith("QuantLM") else [None, *(f"step{s}" for s in STEPS)]
    for revision in revisions:
        local = model_dir(suite_dir, name) if revision is None else checkpoint_dir(suite_dir, name, int(revision[4:]))
        downloaded = hf_hub_download(repo_id, "model.safetensors", revision=revision, cache_dir=tmp_path)
        assert Path(downloaded).read_bytes() == (local / "model.safetensors").read_bytes()
        model = AutoModelForCausalLM.from_pretrained(repo_id, revision=revision, cache_dir=tmp_path)
        state = model.state_dict()
        expected = load_file(local / "model.safetensors")
        assert set(expected) <= set(state)
        for key, tensor in expected.items():
            assert torch.equal(state[key], tensor), (repo_id, revision, key)
    if len(revisions) > 1:
        listing = json.loads(Path(hf_hub_download(repo_id, "revisions.json", cache_dir=tmp_path)).read_text())
        batch = get_model(name).batch_tokens
        assert [(r["branch"], r["step"], r["tokens_seen"]) for r in listing["revisions"]] == [
            (f"step{s}", s, s * batch) for s in STEPS
        ]


@pytest.mark.slow  # publishes or plans the whole 54-model stand-in suite
@pytest.mark.parametrize("name", ["TriLM_99M", "TriLM_2.4B"])
def test_unpacked_release_loads_in_stock_llama_with_the_trilm_logits(published, tmp_path, name):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    llama = AutoModelForCausalLM.from_pretrained(f"{ORG}/{name}_Unpacked", cache_dir=tmp_path, dtype=torch.float32)
    assert (
        type(llama) is LlamaForCausalLM
        and llama.config.pretraining_model_parallel == get_model(name).spec.model_parallel
    )
    trilm = AutoModelForCausalLM.from_pretrained(f"{ORG}/{name}", cache_dir=tmp_path, dtype=torch.float32)
    ids = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        expected, actual = trilm(ids).logits, llama(ids).logits
    # The release format stores g * T in fp16: equal to the TriLM's float32 forward up to fp16 rounding of g.
    torch.testing.assert_close(actual, expected, rtol=2e-3, atol=2e-3)


@pytest.mark.slow  # publishes or plans the whole 54-model stand-in suite
def test_every_card_parses_with_its_metadata(published, tmp_path):
    plan, _ = published
    for repo in plan.repos:
        for branch in repo.branches:
            card = ModelCard.load(hf_hub_download(repo.repo_id, "README.md", revision=branch.name, cache_dir=tmp_path))
            data = card.data.to_dict()
            assert data["license"] == "apache-2.0" and data["library_name"] == "transformers", repo.repo_id
            assert data["pipeline_tag"] == "text-generation"
            assert "datasets" not in data  # stand-ins are scaled down: their cards claim none of the suite's data
            assert repo.model.family in data["tags"]
            if repo.model.family == "quantlm":
                assert data["base_model"] == f"{ORG}/FloatLM_{repo.model.size}"
                assert data["base_model_relation"] == "quantized"
            else:
                assert "base_model" not in data
            if branch.name == "main":
                for other in repo.branches[1:]:
                    assert f"`{other.name}`" in card.text


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def _run_card_blocks(cards: list[str], *, endpoint: str, tmp_path: Path) -> list[str]:
    """Run every python block of `cards` in a fresh interpreter pointed at `endpoint`: first the blocks without
    spectra_hf (checking that they never import it), then the others. Returns the blocks run."""
    blocks = [b for card in cards for b in _python_blocks(card)]
    remote = [b for b in blocks if "spectra_hf" not in b]
    native = [b for b in blocks if "spectra_hf" in b]
    script = (
        "import sys\n"
        f"for block in {remote!r}:\n    exec(compile(block, 'card', 'exec'), {{}})\n"
        "assert not any(m.startswith('spectra_hf') for m in sys.modules), 'the stock path imported spectra_hf'\n"
        f"for block in {native!r}:\n    exec(compile(block, 'card', 'exec'), {{}})\n"
        "print('CARDS OK')\n"
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HUB_CACHE": str(tmp_path / "cache"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "CARDS OK" in run.stdout
    return blocks


@pytest.mark.slow  # publishes or plans the whole 54-model stand-in suite
def test_card_quickstart_code_runs_with_and_without_spectra_hf(published, local_hub, tmp_path):
    """Each card's python blocks run as written in a fresh interpreter pointed at the local Hub: remote code
    (TriLM, FloatLM), stock Llama (unpacked TriLM), stock transformers + gptqmodel and spectra-hf's loader (GPTQ)."""
    plan, _ = published
    cards = []
    for repo_id in ("TriLM_1.1B", "FloatLM_99M", "QuantLM_99M_4bit", "TriLM_99M_Unpacked"):
        repo = next(r for r in plan.repos if r.repo_id == f"{ORG}/{repo_id}")
        for branch in repo.branches[:2]:
            card = next(f.content for f in branch.files if f.path_in_repo == "README.md").decode()
            cards.append(card)
    blocks = _run_card_blocks(cards, endpoint=local_hub.url, tmp_path=tmp_path)
    remote = [b for b in blocks if "spectra_hf" not in b]
    assert len(remote) == len(cards) == 6 and len(blocks) == 10  # main cards: stock + native; branch cards: one
    assert all("trust_remote_code=True" in b or "_Unpacked" in b or "QuantLM" in b for b in remote)
    assert any("load_quantlm" in b for b in blocks)


@pytest.mark.slow  # publishes or plans the whole 54-model stand-in suite
def test_second_run_makes_no_commits(published, local_hub):
    plan, _ = published
    before = _commits(local_hub, ORG)
    report = publish(plan, endpoint=local_hub.url, limits=FAST, progress=False, verify=False)
    assert report.commits == report.repos_created == report.branches_created == report.collection_items_added == 0
    assert report.repos == 63 and report.branches == 99
    assert _commits(local_hub, ORG) == before
    # Local hashes are remembered across runs (a real suite is not re-read); they match the reference digests.
    cache = json.loads((plan.suite_dir / ".publish-staging" / "hashes.json").read_text())
    weights = model_dir(plan.suite_dir, "TriLM_99M") / "model.safetensors"
    size, *_, sha256, sha1 = cache[str(weights.resolve())]  # size, file stamps..., digests
    data = weights.read_bytes()
    assert (size, sha256, sha1) == (len(data), hashlib.sha256(data).hexdigest(), git_hash(data))


@pytest.mark.slow  # a publishing subprocess killed and resumed
def test_killed_run_resumes_to_a_complete_suite(tmp_path, tokenizer):
    """A publishing process is SIGKILLed midway (deterministically: a quota of 2 commits per repo per hour holds it
    right after it created TriLM_99M's step200 branch), and a second run completes the suite."""
    models = ("TriLM_99M", "FloatLM_99M", "TriLM_3.9B")
    suite = _small_suite(tmp_path / "suite", tokenizer, models)
    plan = build_plan(suite, org="crash", models=list(models))
    total = sum(len(r.branches) for r in plan.repos)  # 3 models + 2 unpacked TriLMs: 11 branches
    with LocalHub(tmp_path / "hub") as hub:
        command = [sys.executable, "-m", "spectra_hf.cli", "publish", str(suite), "--org", "crash", "--endpoint",
                   hub.url, "--models", *models, "--no-progress", "--commits-per-hour", "2"]
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        # Waiting for its 3rd commit: step200 is created and its tree read, then the pacer holds the commit.
        while hub.stats["requests"].get("tree", 0) < 3 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        assert child.poll() is None, child.stderr.read()[-2000:]
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert _commits(hub, "crash") == {"crash/TriLM_99M": 2}
        api = HfApi(endpoint=hub.url)
        stale = {f.path: f for f in api.list_repo_tree("crash/TriLM_99M", revision="step200") if hasattr(f, "lfs")}
        final = {f.path: f for f in api.list_repo_tree("crash/TriLM_99M") if hasattr(f, "lfs")}
        assert stale["model.safetensors"].lfs.sha256 == final["model.safetensors"].lfs.sha256  # a copy of main

        report = publish(plan, endpoint=hub.url, limits=FAST, progress=False)
        assert report.verified
        # The 2 branches the killed run finished are not committed again; the other 9 are committed once.
        assert report.commits == total - 2
        assert _commits(hub, "crash") == {r.repo_id: len(r.branches) for r in plan.repos}
        path = hf_hub_download(
            "crash/TriLM_99M", "model.safetensors", revision="step200", endpoint=hub.url, cache_dir=tmp_path
        )
        assert Path(path).read_bytes() == (checkpoint_dir(suite, "TriLM_99M", 200) / "model.safetensors").read_bytes()


def test_stale_branch_is_repaired(tmp_path, tokenizer):
    from huggingface_hub import CommitOperationAdd

    suite = _small_suite(tmp_path / "suite", tokenizer, ("FloatLM_99M",))
    plan = build_plan(suite, org="stale", models=["FloatLM_99M"])
    with LocalHub(tmp_path / "hub") as hub:
        api = HfApi(endpoint=hub.url)
        api.create_repo("stale/FloatLM_99M")
        api.create_branch("stale/FloatLM_99M", branch="step100")
        api.create_commit(
            "stale/FloatLM_99M", [CommitOperationAdd("junk.bin", b"\0junk")], commit_message="half", revision="step100"
        )
        report = publish(plan, endpoint=hub.url, limits=FAST, progress=False, load_check_dir=tmp_path / "load")
        assert report.verified and report.files_deleted >= 1
        files = set(api.list_repo_files("stale/FloatLM_99M", revision="step100"))
        assert "junk.bin" not in files and "model.safetensors" in files
        assert report.loaded == [f"stale/FloatLM_99M@{b}" for b in ("main", "step100", "step200")]
        # A changed checkpoint is re-published alone, in one commit.
        weights = checkpoint_dir(suite, "FloatLM_99M", 200) / "model.safetensors"
        save_file({k: v + 1 for k, v in load_file(weights).items()}, str(weights), metadata={"format": "pt"})
        report = publish(
            build_plan(suite, org="stale", models=["FloatLM_99M"]), endpoint=hub.url, limits=FAST, progress=False
        )
        assert report.commits == 1 and report.files_uploaded == 1
        downloaded = hf_hub_download(
            "stale/FloatLM_99M", "model.safetensors", revision="step200", endpoint=hub.url, cache_dir=tmp_path
        )
        assert Path(downloaded).read_bytes() == weights.read_bytes()


@pytest.mark.slow  # waits out six 1 s Retry-After answers
def test_429_with_retry_after_on_branches_and_commits_still_completes(tmp_path, tokenizer):
    suite = _small_suite(tmp_path / "suite", tokenizer, ("TriLM_1.1B",))
    plan = build_plan(suite, org="busy", models=["TriLM_1.1B"], unpacked=False)
    with LocalHub(tmp_path / "hub") as hub:
        for kind in ("create_repo", "branch", "commit"):
            hub.inject(kind, 429, every=2, retry_after=1)  # every operation is refused once, then accepted
        report = publish(plan, endpoint=hub.url, limits=HubLimits.unlimited(), progress=False)
        faults = hub.stats["faults"]
        assert faults["branch"] == 2 and faults["commit"] == 3 and faults["create_repo"] == 1
        assert report.verified and report.commits == 3 and _commits(hub, "busy") == {"busy/TriLM_1.1B": 3}
        assert report.retries == 6 and report.waited_s >= 6  # each retry waited the server's Retry-After


def test_offline_mode_still_publishes_to_a_loopback_hub(tmp_path, tokenizer, monkeypatch):
    """HF_HUB_OFFLINE=1 means "no network": a Hub on 127.0.0.1 is no network, so publishing to it must work."""
    from huggingface_hub import constants

    suite = _small_suite(tmp_path / "suite", tokenizer, ("FloatLM_99M",))
    plan = build_plan(suite, org="offline", models=["FloatLM_99M"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with LocalHub(tmp_path / "hub") as hub:
        report = publish(plan, endpoint=hub.url, limits=FAST, progress=False)
        assert report.verified and _commits(hub, "offline") == {"offline/FloatLM_99M": 3}
    assert constants.HF_HUB_OFFLINE is True  # restored after the run


def test_pacer_keeps_commits_and_requests_under_the_quotas():
    now = [0.0]
    slept = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(HubLimits(commits_per_hour=2, requests_per_window=3, window_s=300), sleep=sleep, clock=lambda: now[0])
    pacer.call(lambda: None, repo="a/b", commits=1)
    pacer.call(lambda: None, repo="a/b", commits=1)
    pacer.call(lambda: None, repo="a/c", commits=1)  # another repo has its own commit quota
    assert slept == []
    pacer.call(lambda: None)  # a 4th request within 300 s waits for the window to roll over
    assert slept == [300.0]
    pacer.call(lambda: None, repo="a/b", commits=1)  # a 3rd commit to a/b within the hour waits for it
    assert slept == [300.0, 3300.0] and now[0] == 3600.0


def test_missing_model_or_checkpoint_is_refused_before_any_request(tmp_path, tokenizer):
    suite = _small_suite(tmp_path / "suite", tokenizer, ("TriLM_99M", "FloatLM_99M"))
    (checkpoint_dir(suite, "TriLM_99M", 100) / "model.safetensors").unlink()
    plan = build_plan(suite, org="gaps")
    assert any(m.startswith("TriLM_190M:") and "is missing" in m for m in plan.missing)
    assert any(m.startswith("TriLM_99M checkpoint step100:") and "no *.safetensors" in m for m in plan.missing)
    with LocalHub(tmp_path / "hub") as hub:
        with pytest.raises(SpectraError, match=r"incomplete, nothing was published.*--allow-partial"):
            publish(plan, endpoint=hub.url, limits=FAST, progress=False)
        assert hub.stats["total_requests"] == 0
        report = publish(plan, endpoint=hub.url, limits=FAST, progress=False, allow_partial=True)
        assert report.verified and report.repos == 3  # TriLM_99M, its unpacked sibling, FloatLM_99M
        api = HfApi(endpoint=hub.url)
        assert {b.name for b in api.list_repo_refs("gaps/TriLM_99M").branches} == {"main", "step200"}
    assert cli_main(["publish", str(suite), "--org", "gaps", "--endpoint", "http://127.0.0.1:9"]) == 2


@pytest.mark.parametrize("org", ["bad org", "-leading", "double--dash", "x" * 100])
def test_invalid_org_is_refused(tmp_path, org):
    with pytest.raises(SpectraError, match="invalid Hub"):
        build_plan(tmp_path, org=org, models=["TriLM_99M"])  # refused before any export is read


def test_bad_token_is_refused_without_echoing_it(tmp_path, tokenizer):
    suite = _small_suite(tmp_path / "suite", tokenizer, ("QuantLM_99M_3bit",))
    plan = build_plan(suite, org="locked", models=["QuantLM_99M_3bit"])
    secret = "hf_wrongTOKEN1234567890"
    with LocalHub(tmp_path / "hub", token="hf_rightTOKEN") as hub:
        with pytest.raises(SpectraError, match="refused the token") as error:
            publish(plan, endpoint=hub.url, token=secret, limits=FAST, progress=False)
        assert secret not in str(error.value) and error.value.__cause__ is None
        assert not HfApi(endpoint=hub.url, token="hf_rightTOKEN").repo_exists("locked/QuantLM_99M_3bit")


def test_unreachable_endpoint_is_a_clear_error(tmp_path, tokenizer):
    plan = build_plan(
        _small_suite(tmp_path / "suite", tokenizer, ("QuantLM_99M_3bit",)), org=ORG, models=["QuantLM_99M_3bit"]
    )
    with pytest.raises(SpectraError, match=r"cannot reach the Hub at http://127.0.0.1:9 .*hub serve"):
        publish(plan, endpoint="http://127.0.0.1:9", limits=FAST, progress=False)


def _no_target_environment(monkeypatch) -> None:
    monkeypatch.delenv("HF_ENDPOINT")  # huggingface_hub read it at import; the CLI looks again to pick its target
    monkeypatch.delenv("HF_TOKEN", raising=False)
    from huggingface_hub import get_token

    assert get_token() is None, "this test needs a machine without a saved Hub login"


def test_cli_without_a_target_refuses_in_one_line_and_writes_nothing(tmp_path, tokenizer, monkeypatch, capsys):
    suite = _small_suite(tmp_path / "suite", tokenizer, ("TriLM_99M",))
    before = _snapshot(suite)
    _no_target_environment(monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the 0.1 default store was ~/.cache/spectra-hf/hub
    capsys.readouterr()
    assert cli_main(["publish", str(suite), "--org", "nowhere", "--models", "TriLM_99M", "--no-progress"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spectra-hf publish: error: no publish target given")
    for way in ("--endpoint URL", "HF_ENDPOINT", "HF_TOKEN", "hf auth login", "--hub-root DIR"):
        assert way in lines[0]
    assert _snapshot(suite) == before and not (tmp_path / "home").exists()  # no staging, no store


def test_cli_hub_root_publishes_into_that_local_store(tmp_path, tokenizer, monkeypatch, capsys):
    suite = _small_suite(tmp_path / "suite", tokenizer, ("QuantLM_99M_8bit",))
    _no_target_environment(monkeypatch)
    root = tmp_path / "store"
    argv = ["publish", str(suite), "--org", "embedded", "--models", "QuantLM_99M_8bit", "--hub-root", str(root)]
    assert cli_main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1 repos and 0 branches created" in out and f"spectra-hf hub serve --root {root}" in out
    with LocalHub(root) as hub:  # the store outlives the run: serve it again and read the repo back
        assert "model.safetensors" in HfApi(endpoint=hub.url).list_repo_files("embedded/QuantLM_99M_8bit")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert cli_main([*argv, "--endpoint", "http://127.0.0.1:9"]) == 2  # two targets named: refused
    assert "name two targets" in capsys.readouterr().err


def test_target_is_the_first_explicit_one_and_is_logged(tmp_path, caplog, monkeypatch):
    from spectra_hf.errors import HubError
    from spectra_hf.hub.plan import HF_HUB_URL, choose_target

    root = tmp_path / "store"
    env = {"HF_ENDPOINT": "http://127.0.0.1:7/"}
    assert choose_target(endpoint="http://h:1", hub_root=None, token="t", environ=env).endpoint == "http://h:1"
    assert choose_target(endpoint=None, hub_root=root, token="t", environ=env).hub_root == root
    from_env = choose_target(endpoint=None, hub_root=None, token="t", environ=env)
    assert (from_env.endpoint, from_env.chosen_by) == ("http://127.0.0.1:7", "HF_ENDPOINT")
    assert (
        choose_target(endpoint=None, hub_root=None, token="t", environ={}).endpoint
        == HF_HUB_URL
        == "https://huggingface.co"
    )
    with pytest.raises(HubError, match="no publish target"):
        choose_target(endpoint=None, hub_root=None, token=None, environ={})
    # The CLI logs the target it took from the environment (transformers' logging), then refuses the empty suite.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with caplog.at_level("WARNING"):
        assert cli_main(["publish", str(tmp_path), "--org", "x"]) == 2
    assert "publishing to http://127.0.0.1:9 (chosen by HF_ENDPOINT)" in caplog.text


@pytest.mark.slow  # publishes or plans the whole 54-model stand-in suite
def test_dry_run_prints_the_plan_without_network(suite_dir, capsys):
    assert cli_main(["publish", str(suite_dir), "--org", ORG, "--dry-run", "--endpoint", "http://127.0.0.1:9"]) == 0
    out = capsys.readouterr().out
    assert "total: 63 repos, 99 branches, 99 commits at most" in out and f"{ORG}/TriLM_3.9B_Unpacked" in out
    assert cli_main(["publish", str(suite_dir), "--org", ORG, "--dry-run", "--json", "--models", "TriLM_99M"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    assert totals["repos"] == 2 and totals["branches"] == 4 and totals["bytes"] > 0


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under `root`: (mtime_ns, sha256 of the bytes; "" for a folder)."""
    if not root.exists():
        return {}
    return {
        path.relative_to(root).as_posix(): (
            path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        )
        for path in sorted(root.rglob("*"))
    }


@pytest.mark.slow
def test_dry_run_touches_nothing_and_estimates_the_unpacked_sizes(tmp_path, tokenizer):
    """`publish --dry-run` as a user runs it, in a fresh process: the suite dir, the hub store, the temp dir and
    HF_HOME are byte-for-byte unchanged; the unpacked TriLM it did not convert is planned with estimated sizes."""
    models = ["TriLM_99M", "FloatLM_99M"]
    suite = _small_suite(tmp_path / "suite", tokenizer, tuple(models))
    with LocalHub(tmp_path / "hub") as hub:  # an existing store, with a repo in it
        HfApi(endpoint=hub.url).create_repo("dry/existing")
    temp, hf_home = tmp_path / "tmp", tmp_path / "hf_home"
    temp.mkdir(), hf_home.mkdir()
    before = {name: _snapshot(tmp_path / name) for name in ("suite", "hub", "tmp", "hf_home")}
    env = {**os.environ, "TMPDIR": str(temp), "HF_HOME": str(hf_home)}
    command = [sys.executable, "-m", "spectra_hf.cli", "publish", str(suite), "--org", "dry", "--models", *models,
               "--dry-run"]
    outputs = []
    for target in (["--hub-root", str(tmp_path / "hub")], ["--json"]):
        result = subprocess.run([*command, *target], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert {name: _snapshot(tmp_path / name) for name in before} == before
        outputs.append(result.stdout)
    assert f"target: the local Hub store {tmp_path / 'hub'}" in outputs[0] and "estimated: " in outputs[0]
    document = json.loads(outputs[1])
    assert document["totals"]["repos"] == 3 and document["target"].startswith("http://127.0.0.1")  # HF_ENDPOINT
    assert "dry/TriLM_99M_Unpacked/model.safetensors" in document["estimated_files"]

    dry = build_plan(suite, org="dry", models=models, convert=False)
    with pytest.raises(SpectraError, match="only estimates"):
        publish(dry, endpoint="http://127.0.0.1:9", progress=False)
    real = build_plan(suite, org="dry", models=models)  # converts: the estimate is within the header of the real size
    estimated = {f.path_in_repo: f.size for r in dry.repos if r.variant == "unpacked" for f in r.branches[0].files}
    actual = {f.path_in_repo: f.size for r in real.repos if r.variant == "unpacked" for f in r.branches[0].files}
    assert estimated.keys() == actual.keys()
    assert abs(estimated["model.safetensors"] - actual["model.safetensors"]) < 0.01 * actual["model.safetensors"]
    assert build_plan(suite, org="dry", models=models, convert=False).estimated_files == []  # staged: real files now


def test_dry_run_in_process_writes_nothing_in_the_suite_or_the_store(tmp_path, tokenizer, capsys):
    suite = _small_suite(tmp_path / "suite", tokenizer, ("TriLM_1.1B",))
    with LocalHub(tmp_path / "hub"):
        pass
    before = {name: _snapshot(tmp_path / name) for name in ("suite", "hub")}
    argv = [
        "publish",
        str(suite),
        "--org",
        "dry",
        "--models",
        "TriLM_1.1B",
        "--dry-run",
        "--hub-root",
        str(tmp_path / "hub"),
    ]
    assert cli_main(argv) == 0
    assert "dry/TriLM_1.1B_Unpacked" in capsys.readouterr().out
    assert {name: _snapshot(tmp_path / name) for name in before} == before
