"""Evaluation: perplexity against a float64 token-by-token reference, the evaluate module, lm-eval on a local task,
`spectra-hf eval` and its errors."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from spectra_hf.checkpoints.exports import ExportInfo, atomic_directory, checkpoint_dir, model_dir, write_export_info
from spectra_hf.cli import main
from spectra_hf.errors import SpectraError
from spectra_hf.evaluation.text_perplexity import load_perplexity_metric, load_texts, perplexity, sliding_windows
from spectra_hf.modeling import FloatLMForCausalLM, TriLMForCausalLM
from spectra_hf.suite import config_for

MAX_LENGTH, STRIDE = 24, 10


def _sharp_model(name: str, tokenizer):
    """A tiny untrained model whose predictions depend strongly on context (large init: far from uniform)."""
    model_class = TriLMForCausalLM if name.startswith("TriLM") else FloatLMForCausalLM
    config = config_for(name, tiny=True, vocab_size=len(tokenizer), initializer_range=0.3)
    return model_class(config).eval()


@pytest.fixture(scope="module")
def documents(corpus_texts):
    # one document longer than MAX_LENGTH tokens (several windows), two short ones, one empty (skipped)
    return [corpus_texts[0][:300], "The quick brown fox.", corpus_texts[1][:90], ""]


def _reference_nll(model, ids: list[int], *, max_length: int, stride: int) -> float:
    """Float64 NLL of ids[1:], token by token: token i sees the context its first covering window gives it."""
    model64 = copy.deepcopy(model).double()
    total = 0.0
    with torch.no_grad():
        for i in range(1, len(ids)):
            # windows start at k * stride and end at k * stride + max_length; the first that reaches past i scores i
            k = max(0, math.ceil((i + 1 - max_length) / stride))
            context = torch.tensor([ids[k * stride : i]])
            logits = model64(input_ids=context).logits[0, -1]
            total -= torch.log_softmax(logits, dim=-1)[ids[i]].item()
    return total


@pytest.mark.parametrize(("name", "stride"), [("TriLM_1.1B", STRIDE), ("FloatLM_99M", None)])
def test_perplexity_matches_float64_reference(tokenizer, documents, name, stride):
    model = _sharp_model(name, tokenizer)
    result = perplexity(model, tokenizer, documents, max_length=MAX_LENGTH, stride=stride, batch_size=3)
    stride = stride or MAX_LENGTH - 1  # the default: consecutive windows share one token

    bos = tokenizer.bos_token_id
    total_nll = num_tokens = num_bytes = 0
    full_context_nll = 0.0
    for text in documents[:3]:
        ids = [bos, *tokenizer(text, add_special_tokens=False)["input_ids"]]
        total_nll += _reference_nll(model, ids, max_length=MAX_LENGTH, stride=stride)
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
        full_context_nll -= log_probs[torch.arange(len(ids) - 1), ids[1:]].sum().item()
        num_tokens += len(ids) - 1
        num_bytes += len(text.encode("utf-8"))

    assert result["num_tokens"] == num_tokens and result["num_bytes"] == num_bytes
    assert result["num_documents"] == 3
    assert result["perplexity"] == pytest.approx(math.exp(total_nll / num_tokens), rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(total_nll / (math.log(2) * num_bytes), rel=1e-5)
    # the window matters: with the whole document as context the reference differs well beyond the tolerance
    assert abs(full_context_nll - total_nll) / total_nll > 1e-3


def test_sliding_windows_score_every_token_once():
    ids = list(range(50))
    windows = sliding_windows(ids, max_length=16, stride=5)
    targets = [t for w in windows for t in w.input_ids[len(w.input_ids) - w.num_targets :]]
    assert targets == ids[1:]
    assert all(len(w.input_ids) <= 16 for w in windows)
    assert all(len(w.input_ids) > w.num_targets for w in windows)  # every target has at least one token of context
    with pytest.raises(SpectraError, match="stride"):
        sliding_windows(ids, max_length=16, stride=16)  # the second window's first target would have no context


def test_load_texts_from_local_files_and_saved_datasets(tmp_path):
    import datasets

    documents = ["First document.", "Second one, longer.", "Third."]
    (tmp_path / "docs.txt").write_text("\n".join(documents) + "\n\n", encoding="utf-8")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in documents), encoding="utf-8")
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x"]}),
                                   "test": datasets.Dataset.from_dict({"text": documents})})
    splits.save_to_disk(str(tmp_path / "saved"))

    assert load_texts(str(tmp_path / "docs.txt")) == documents
    assert load_texts(str(tmp_path / "docs.jsonl"), text_column="body", max_documents=2) == documents[:2]
    assert load_texts(str(tmp_path / "saved"), split="test") == documents
    with pytest.raises(SpectraError, match="pick one with --split"):
        load_texts(str(tmp_path / "saved"))
    with pytest.raises(SpectraError, match=r"no column 'text'.*--text-column"):
        load_texts(str(tmp_path / "docs.jsonl"))


def test_evaluate_module_and_batching_agree(tokenizer, documents):
    model = _sharp_model("TriLM_99M", tokenizer)
    one_by_one = perplexity(model, tokenizer, documents, max_length=MAX_LENGTH, stride=STRIDE, batch_size=1)
    metric = load_perplexity_metric()
    via_evaluate = metric.compute(
        predictions=documents, model=model, tokenizer=tokenizer, max_length=MAX_LENGTH, stride=STRIDE, batch_size=4
    )
    assert via_evaluate["num_tokens"] == one_by_one["num_tokens"]
    assert via_evaluate["perplexity"] == pytest.approx(one_by_one["perplexity"], rel=1e-5)


# ---- `spectra-hf eval` on a saved model ------------------------------------------------------------------------

QUESTIONS = [
    {"question": "The capital of France is", "choices": ["Paris", "a number", "green"], "label": 0},
    {"question": "Return the value of", "choices": ["the object", "blue water", "seven"], "label": 1},
    {"question": "This function returns", "choices": ["a string", "the list", "None"], "label": 2},
    {"question": "If the argument is omitted,", "choices": ["it defaults", "the cat", "raise"], "label": 0},
    {"question": "A new dictionary is", "choices": ["created", "eaten", "sorted"], "label": 0},
    {"question": "The file is opened in", "choices": ["binary mode", "the park", "text"], "label": 1},
]

TASK_YAML = """\
task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: questions.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tokenizer):
    """A tiny FloatLM export in the suite layout, with a checkpoint at step 10 holding different weights.

    Returns (final model, step-10 model, export directory).
    """
    suite = tmp_path_factory.mktemp("suite")
    torch.manual_seed(0)
    final = _sharp_model("FloatLM_99M", tokenizer)
    torch.manual_seed(1)
    step10 = _sharp_model("FloatLM_99M", tokenizer)
    for model, directory, step in (
        (final, model_dir(suite, "FloatLM_tiny"), 20),
        (step10, checkpoint_dir(suite, "FloatLM_tiny", 10), 10),
    ):
        with atomic_directory(directory) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            write_export_info(staging, ExportInfo(name="FloatLM_tiny", family="floatlm", step=step, format="float"))
    return final, step10, model_dir(suite, "FloatLM_tiny")


def _choice_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Float64 log P(continuation | context), encoding as lm-eval does (the whole string, split at the context)."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole_ids = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([whole_ids])).logits[0].double(), dim=-1)
    positions = range(len(context_ids), len(whole_ids))
    return sum(log_probs[position - 1, whole_ids[position]].item() for position in positions)


@pytest.mark.slow  # lm-eval's task machinery in the CLI (15-20 s)
def test_cli_eval_local_task_and_perplexity(tmp_path, saved_model, tokenizer, documents, capsys):
    model, _, directory = saved_model
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8")
    (task_dir / "tiny_mc.yaml").write_text(TASK_YAML, encoding="utf-8")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(documents[:3]) + "\n", encoding="utf-8")
    output = tmp_path / "results.json"

    code = main(
        ["eval", str(directory), "--tasks", str(task_dir / "tiny_mc.yaml"), "--perplexity-data", str(texts),
         "--max-length", str(MAX_LENGTH), "--stride", str(STRIDE), "--output", str(output)]
    )
    assert code == 0, capsys.readouterr().err
    results = json.loads(output.read_text())

    model64 = copy.deepcopy(model).double()
    correct = [
        max(range(3), key=lambda c: _choice_loglikelihood(model64, tokenizer, q["question"], " " + q["choices"][c]))
        == q["label"]
        for q in QUESTIONS
    ]
    assert results["tasks"]["tiny_mc"]["acc"] == pytest.approx(sum(correct) / len(correct))
    expected = perplexity(model, tokenizer, documents, max_length=MAX_LENGTH, stride=STRIDE, show_progress=False)
    assert results["perplexity"]["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-6)

    from huggingface_hub import EvalResult

    rows = [EvalResult(**row) for row in results["model_index"]]
    assert {(r.task_name, r.metric_type) for r in rows} == {
        ("tiny_mc", "acc"),
        ("Language modeling", "perplexity"),
        ("Language modeling", "bits_per_byte"),
    }


def _step10_perplexity(saved_model, tokenizer, documents) -> float:
    final, step10, _ = saved_model
    scores = {
        name: perplexity(model, tokenizer, documents, max_length=MAX_LENGTH, show_progress=False)["perplexity"]
        for name, model in (("final", final), ("step10", step10))
    }
    assert scores["final"] != pytest.approx(scores["step10"], rel=1e-3)  # the revisions are distinguishable
    return scores["step10"]


def _assert_cli_scores_step10(model: str, extra_args: list[str], saved_model, tokenizer, tmp_path, documents) -> None:
    """`spectra-hf eval MODEL --revision step10` must score the step-10 weights, not main's."""
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(documents[:3]) + "\n", encoding="utf-8")
    output = tmp_path / "step10.json"
    argv = ["eval", model, "--revision", "step10", *extra_args, "--perplexity-data", str(texts)]
    assert main([*argv, "--max-length", str(MAX_LENGTH), "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    assert results["revision"] == "step10"
    expected = _step10_perplexity(saved_model, tokenizer, documents)
    assert results["perplexity"]["perplexity"] == pytest.approx(expected, rel=1e-6)


def test_cli_eval_revision_of_local_export(saved_model, tokenizer, tmp_path, documents):
    _assert_cli_scores_step10(str(saved_model[2]), [], saved_model, tokenizer, tmp_path, documents)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--tasks", "no_such_task_xyz"], "unknown task 'no_such_task_xyz'"),
        (["--revision", "step999", "--perplexity-data", "{texts}"], "revision 'step999' does not exist"),
        (["--tasks", "{missing}/task.yaml"], "task file"),
        ([], "nothing to evaluate"),
    ],
)
def test_cli_eval_bad_input(saved_model, tmp_path, capsys, arguments, message):
    directory = saved_model[2]
    texts = tmp_path / "texts.txt"
    texts.write_text("Some text.\n", encoding="utf-8")
    arguments = [a.format(texts=texts, missing=tmp_path / "missing") for a in arguments]
    assert main(["eval", str(directory), *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


def test_cli_eval_missing_model_path(tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("Some text.\n", encoding="utf-8")
    assert main(["eval", str(tmp_path / "no_such_model"), "--perplexity-data", str(texts)]) == 2
    error = capsys.readouterr().err
    assert "does not exist" in error and "no_such_model" in error


@pytest.fixture(scope="module")
def hub_repo(local_hub, saved_model):
    """The saved FloatLM on the local Hub: its export on main, its step-10 checkpoint on branch step10."""
    from huggingface_hub import HfApi

    directory = saved_model[2]
    api, repo_id = HfApi(), "eval-tests/FloatLM_tiny"
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=directory, ignore_patterns=["checkpoints/**"])
    api.create_branch(repo_id, branch="step10", exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=directory / "checkpoints" / "step10", revision="step10")
    return repo_id


def test_cli_eval_hub_model_at_a_revision(hub_repo, local_hub, saved_model, tokenizer, tmp_path, documents):
    _assert_cli_scores_step10(hub_repo, ["--endpoint", local_hub.url], saved_model, tokenizer, tmp_path, documents)


@pytest.mark.parametrize(
    ("repo", "revision", "message"),
    [
        ("eval-tests/FloatLM_tiny", "step999", "revision 'step999' does not exist in eval-tests/FloatLM_tiny"),
        ("eval-tests/no_such_model", None, "model 'eval-tests/no_such_model' does not exist on"),
    ],
)
def test_cli_eval_hub_bad_input(hub_repo, local_hub, tmp_path, capsys, repo, revision, message):
    texts = tmp_path / "texts.txt"
    texts.write_text("Some text.\n", encoding="utf-8")
    argv = ["eval", repo, "--endpoint", local_hub.url, "--perplexity-data", str(texts)]
    assert main(argv + (["--revision", revision] if revision else [])) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
