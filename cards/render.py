"""Model cards of the published suite, rendered from templates/*.md with huggingface_hub's ModelCard.

A card describes the model in its repository. Its parameters and size in bits come from the repo's own config.json,
its step, tokens and training data from the export's own metadata (`spectra_export.json`, `ExportInfo`). The suite's
facts (sizes, bits, the paper's recipe and data) come from the registry, and the card claims them for the model only
when the stored architecture is the registry's for that name: a scaled-down model published under a suite name (the
demo, tests) says so and states its own figures instead. Nothing here repeats a number the registry knows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from spectra_hf import suite
from spectra_hf.checkpoints.exports import TRAINING_DATA_KEY, ExportInfo
from spectra_hf.checkpoints.info import suite_size
from spectra_hf.errors import ConfigError
from spectra_hf.quantization.gptq import FROM_PRETRAINED_BITS
from spectra_hf.quantization.hf_quantizer import SPECTRA_GPTQ_METHOD, remote_code_auto_map
from spectra_hf.suite import SuiteModel

TEMPLATES = Path(__file__).parent / "templates"
REVISIONS_FILE = "revisions.json"
VARIANTS = ("release", "unpacked")
_FAMILY_TAGS = {"trilm": ["ternary", f"{suite.TERNARY_BITS}-bit"], "floatlm": ["fp16"], "quantlm": ["gptq"]}


@dataclass(frozen=True)
class Revision:
    """One intermediate checkpoint: its Hub branch, optimizer step and training tokens consumed."""

    branch: str
    step: int
    tokens_seen: int

    def as_dict(self) -> dict[str, Any]:
        return {"branch": self.branch, "step": self.step, "tokens_seen": self.tokens_seen}


def human_count(value: int) -> str:
    """`1_048_576_000` -> "1.05B" (tokens, parameters)."""
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return str(value)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ConfigError(f"card variant must be one of {VARIANTS}, got {variant!r}")


def card_data(
    *,
    model: SuiteModel,
    repo_name: str,
    org: str,
    variant: str = "release",
    evals: Mapping[str, Any] | None = None,
    datasets: Sequence[str] | None = (suite.DATASET_ID,),
) -> ModelCardData:
    """The YAML metadata of a repo's cards (main and checkpoint branches share it); `datasets`: the Hub datasets the
    model was trained on (None when not known to be any)."""
    _check_variant(variant)
    tags = ["spectra-suite", model.family, *_FAMILY_TAGS[model.family], "llama"]
    if model.bits is not None:
        tags.append(f"{model.bits}-bit")
    if variant == "unpacked":
        tags.append("unpacked")
    extra: dict[str, Any] = {}
    if model.base_model is not None:
        # The Hub reads base_model_relation from the card; ModelCardData passes unknown keys through.
        extra = {"base_model": f"{org}/{model.base_model}", "base_model_relation": "quantized"}
    return ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="text-generation",
        language="en",
        datasets=list(datasets) if datasets else None,
        tags=tags,
        # model_name names the model-index entry; without eval results it would be a stray YAML key.
        model_name=repo_name if evals else None,
        eval_results=eval_results(evals) if evals else None,
        **extra,
    )


def eval_results(evals: Mapping[str, Any]) -> list[EvalResult]:
    """model-index entries from either form `spectra_hf.evaluation` produces.

    - a plain mapping `{"arc_easy/acc": 0.41, "wikitext/perplexity": 31.2, "piqa": 0.6}`: a key is `task` or
      `task/metric` (metric defaults to "acc");
    - a `spectra-hf eval` results document (`spectra_hf.evaluation.results`), whose "model_index" rows are EvalResult
      keyword arguments.
    """
    if "model_index" in evals:
        return [EvalResult(**row) for row in evals["model_index"]]
    results = []
    for key, value in sorted(evals.items()):
        task, _, metric = key.partition("/")
        results.append(
            EvalResult(
                task_type="text-generation",
                dataset_type=task,
                dataset_name=task,
                metric_type=metric or "acc",
                metric_value=float(value),
            )
        )
    return results


@dataclass(frozen=True)
class ModelFacts:
    """What a card states about the weights in its own repository, from its config.json and export metadata.

    Attributes:
        params: the real parameter count from the stored architecture (ternary weights counted once each, whatever
            their storage: a packed checkpoint's safetensors header holds ~1/5 of them as uint8 bytes).
        size_bits: the size in bits as the paper counts it, for this architecture.
        suite_scale: the stored architecture is the registry's for the model's size (else: a scaled-down model
            published under a suite name).
        step, tokens_seen: the export's optimizer step and training tokens (None: not from training, or not recorded).
        datasets, files: what the export says it was trained on (Hub dataset ids, local file names); None for
            either when not recorded.
        from_training: the export was written by a training run (it has a step).
    """

    params: int
    size_bits: int
    suite_scale: bool
    step: int | None = None
    tokens_seen: int | None = None
    datasets: list[str] | None = None
    files: list[str] | None = None
    from_training: bool = False

    @property
    def claims_suite_data(self) -> bool:
        """Whether the card may say the model saw the suite's data: a suite-scale model that no training run of
        ours produced (the release and its conversions), or one whose export records the suite's dataset."""
        if self.datasets is not None:
            return list(self.datasets) == [suite.DATASET_ID]
        return self.suite_scale and not self.from_training


def model_facts(*, model: SuiteModel, config: Mapping[str, Any], export: ExportInfo | None = None) -> ModelFacts:
    """The facts of the model whose config.json is `config` (and whose export metadata is `export`, if any)."""
    record = (export.extra.get(TRAINING_DATA_KEY) if export is not None else None) or {}
    return ModelFacts(
        params=suite.linear_params(config) + suite.float_params(config),
        size_bits=suite.size_bits(config, bits_per_linear_weight=model.bits_per_linear_weight),
        suite_scale=suite_size(dict(config)) == model.size,
        step=export.step if export is not None else None,
        tokens_seen=export.tokens_seen if export is not None else None,
        datasets=list(record["datasets"]) if "datasets" in record else None,
        files=list(record["files"]) if "files" in record else None,
        from_training=export is not None and export.step is not None,
    )


def _facts_rows(model: SuiteModel, facts: ModelFacts, export: ExportInfo | None) -> list[tuple[str, str]]:
    rows = [
        ("parameters", f"{facts.params:,} ({human_count(facts.params)}; ternary weights counted once each)"
         if model.family == "trilm" else f"{facts.params:,} ({human_count(facts.params)})"),
        ("size as the paper counts it", f"{facts.size_bits / 1e6:,.3f} Mbit ({model.bits_per_linear_weight:g} bits per "
         "decoder linear weight, 16 for the rest)"),
    ]
    if facts.step is not None:
        rows.append(("optimizer steps", f"{facts.step:,}"))
    if facts.from_training or facts.tokens_seen is not None:
        rows.append(("training tokens", human_count(facts.tokens_seen) if facts.tokens_seen else "not recorded"))
    data = [*(facts.datasets or []), *(facts.files or [])]
    if data:
        rows.append(("training data", ", ".join(data)))
    elif facts.claims_suite_data and model.family != "quantlm":
        rows.append(("training data", f"{suite.DATASET_ID} (the suite's)"))
    elif facts.from_training:
        rows.append(("training data", "not recorded in this export"))
    calibration = (export.extra.get("calibration") if export is not None else None) or {}
    if calibration:
        rows.append((
            "GPTQ calibration",
            f"{calibration.get('samples')} samples x {calibration.get('length')} tokens of {calibration.get('source')}",
        ))
    return rows


def _card_datasets(facts: ModelFacts) -> list[str] | None:
    """The card metadata's `datasets`: what the export records, else the suite's where the card may claim it."""
    if facts.datasets is not None:
        return facts.datasets or None
    return [suite.DATASET_ID] if facts.claims_suite_data else None


def _siblings(model: SuiteModel) -> list[dict[str, str]]:
    rows = []
    for other in suite.all_models():
        if other.size != model.size:
            continue
        name = f"**{other.name}**" if other == model else other.name
        rows.append(
            {
                "name": name,
                "bits": f"{other.bits_per_linear_weight:g}",
                "gbits": f"{other.size_bits / 1e9:.3f}",
                "gbytes": f"{other.size_bits / 8e9:.3f}",
            }
        )
    return rows


def _architecture(config: Mapping[str, Any]) -> list[tuple[str, Any]]:
    rope = config.get("rope_parameters") or {}
    rows = [
        ("model_type", config.get("model_type")),
        ("hidden size", config.get("hidden_size")),
        ("GLU (intermediate) size", config.get("intermediate_size")),
        ("attention heads", config.get("num_attention_heads")),
        ("key/value heads", config.get("num_key_value_heads")),
        ("head dim", config.get("head_dim")),
        ("layers", config.get("num_hidden_layers")),
        ("context length", config.get("max_position_embeddings")),
        ("vocabulary", config.get("vocab_size")),
        ("RMSNorm eps", config.get("rms_norm_eps")),
        ("RoPE theta", rope.get("rope_theta", config.get("rope_theta"))),
        ("tied embeddings", config.get("tie_word_embeddings")),
        ("ternary scale shards (pretraining_model_parallel)", config.get("pretraining_model_parallel")),
        ("weight format", config.get("weight_format")),
    ]
    quant = config.get("quantization_config") or {}
    if quant:
        group = quant.get("group_size")
        grouping = "per channel" if group in (None, -1) else f"group size {group}"
        rows.append(("quantization", f"{quant.get('quant_method')} {quant.get('bits')}-bit, {grouping}"))
    return [(key, value) for key, value in rows if value is not None]


def _training(model: SuiteModel, *, with_recipe: bool) -> tuple[str, list[tuple[str, str]]]:
    """The card's training text and recipe table; `with_recipe=False` (a scaled-down model under a suite name)
    gives no table, and the text does not point at one."""
    spec = model.spec
    trained = suite.get_model(model.base_model) if model.base_model is not None else model
    recipe = [
        ("training tokens", human_count(suite.TOKENS)),
        ("tokens per optimizer step", human_count(trained.batch_tokens)),
        ("sequence length", str(suite.CONTEXT_LENGTH)),
        ("peak learning rate", f"{trained.peak_lr:g}"),
    ]
    if model.family == "trilm":
        recipe.append(("peak learning rate after the halfway drop", f"{spec.trilm_lr_after_drop:g}"))
        text = (
            "Trained from scratch with ternary weights in the seven linear layers of every decoder block "
            "(straight-through estimator on latent float weights; embedding, LM head and norms in floating point). "
            "Schedule: warmup, then linear decay; at about half of training the peak learning rate drops, and at "
            "about two thirds weight decay is removed."
        )
    elif model.family == "floatlm":
        text = "Trained from scratch in fp16 mixed precision. Schedule: warmup, cosine decay, weight decay."
    else:
        assert model.bits is not None, "a QuantLM has a bit width"
        group = suite.QUANT_GROUP_SIZE[model.bits]
        recipe.append(("GPTQ bits", str(model.bits)))
        recipe.append(("GPTQ group size", "per channel" if group < 0 else str(group)))
        recipe.append(("effective bits per weight", f"{model.bits_per_linear_weight:g}"))
        text = (
            f"Post-training GPTQ quantization of {model.base_model} (symmetric, no zero point) of every linear "
            "layer in the decoder blocks; embedding, LM head and activations stay unquantized."
        )
        if with_recipe:
            text += f" The recipe below is the one {model.base_model} was trained with."
    return (text, recipe) if with_recipe else (text, [])


def _summary(model: SuiteModel, *, variant: str, org: str) -> str:
    if variant == "unpacked":
        return (
            f"TriLM {model.size} in the original release format: every ternary weight stored as the fp16 value "
            "g * T (T in {-1, 0, +1}, one scale g per scale shard) in a plain `LlamaForCausalLM` checkpoint that "
            f"stock transformers loads without extra code. The compact spectra-hf format is in "
            f"[{org}/{model.name}](/{org}/{model.name})."
        )
    if model.family == "trilm":
        return (
            f"TriLM {model.size}: a LLaMA-style language model whose decoder linear layers are ternary, "
            f"W = g * T with T in {{-1, 0, +1}} and one absmean scale g per scale shard "
            f"({model.spec.model_parallel} per matrix), {suite.TERNARY_BITS} bits per weight."
        )
    if model.family == "floatlm":
        return (
            f"FloatLM {model.size}: the fp16 LLaMA-style baseline of the Spectra suite, trained like its TriLM sibling."
        )
    return (
        f"QuantLM {model.size} {model.bits}-bit: {model.base_model} quantized with GPTQ at {model.bits} bits "
        f"({model.bits_per_linear_weight:g} effective bits per weight)."
    )


def _quickstart(
    *, repo_id: str, revision: str | None, remote_code: bool, tokenizer: bool, native: bool = False
) -> str:
    """A runnable snippet: load `repo_id` (at `revision`) with the Auto classes and generate 20 tokens."""
    lines = []
    if native:
        lines.append("import spectra_hf  # registers TriLM and FloatLM with the transformers Auto classes")
    lines.append("from transformers import AutoModelForCausalLM" + (", AutoTokenizer" if tokenizer else ""))
    if not tokenizer:
        lines.append("import torch")
    lines.append("")
    args = [f'"{repo_id}"']
    if revision is not None:
        args.append(f'revision="{revision}"')
    if remote_code and not native:
        args.append("trust_remote_code=True")
    if tokenizer:
        # AutoTokenizer reads config.json too: without trust_remote_code it stops at a [y/N] prompt on a remote-code
        # model type (15 s, then an error) before it looks at the tokenizer files.
        remote = ", trust_remote_code=True" if remote_code and not native else ""
        lines.append(f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{remote})')
    lines.append(f"model = AutoModelForCausalLM.from_pretrained({', '.join(args)})")
    lines += _generate_lines(tokenizer)
    return "\n".join(lines)


def _generate_lines(tokenizer: bool) -> list[str]:
    if tokenizer:
        return [
            'inputs = tokenizer("Ternary language models", return_tensors="pt")',
            "output = model.generate(**inputs, max_new_tokens=20, do_sample=False)",
            "print(tokenizer.decode(output[0], skip_special_tokens=True))",
        ]
    return [
        "output = model.generate(torch.tensor([[model.config.bos_token_id]]), max_new_tokens=20, do_sample=False)",
        "print(output[0].tolist())",
    ]


def _gptq_quickstart(repo_id: str) -> str:
    """spectra-hf's loader, which reads packed GPTQ at every width (transformers' GPTQConfig stops at 2/3/4/8)."""
    lines = [
        "from huggingface_hub import snapshot_download",
        "import torch",
        "",
        "from spectra_hf.quantization import load_quantlm",
        "",
        f'model = load_quantlm(snapshot_download("{repo_id}"))',
    ]
    return "\n".join(lines + _generate_lines(False))


def _registered_gptq_quickstart(repo_id: str) -> str:
    """The Auto class after `import spectra_hf`, which registers the spectra_gptq quantization method."""
    lines = [
        "import spectra_hf  # registers the spectra_gptq quantization method with transformers",
        "import torch",
        "from transformers import AutoModelForCausalLM",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
    ]
    return "\n".join(lines + _generate_lines(False))


def _ships_spectra_gptq_code(config: Mapping[str, Any]) -> bool:
    """Whether config.json's auto_map names the spectra_gptq module the export carries (quantlm_gptq.py)."""
    auto_map = config.get("auto_map") or {}
    return all(auto_map.get(auto) == target for auto, target in remote_code_auto_map().items())


def _quickstarts(
    *, config: Mapping[str, Any], repo_id: str, native_repo: str, revision: str | None, has_tokenizer: bool
) -> tuple[str, str | None, str]:
    """(note, stock-transformers snippet or None, spectra-hf snippet) for a repo holding `config`."""
    quant = config.get("quantization_config") or {}
    if quant:
        native = _gptq_quickstart(repo_id)
        if quant.get("quant_method") == SPECTRA_GPTQ_METHOD:
            registered = _registered_gptq_quickstart(repo_id)
            if _ships_spectra_gptq_code(config):
                note = (
                    f"transformers' own GPTQConfig stops at 2/3/4/8 bits: this {quant.get('bits')}-bit repository "
                    "records `quant_method: spectra_gptq` and ships the code of that method: stock transformers "
                    "loads it with `trust_remote_code=True` once `optimum` and `gptqmodel` are installed, and "
                    "after `import spectra_hf` (`pip install spectra-hf[gptq]`) the plain call does. Without "
                    "either, transformers does not load these weights."
                )
                stock = _quickstart(repo_id=repo_id, revision=None, remote_code=True, tokenizer=has_tokenizer)
                return note, stock, registered
            note = (
                f"transformers' own GPTQConfig stops at 2/3/4/8 bits: this {quant.get('bits')}-bit repository records "
                "`quant_method: spectra_gptq`, which `import spectra_hf` registers with transformers "
                "(`pip install spectra-hf[gptq]`); `AutoModelForCausalLM.from_pretrained` then loads it as below. "
                "Without spectra-hf, transformers does not load these weights."
            )
            return note, None, registered
        if quant.get("bits") not in FROM_PRETRAINED_BITS:
            note = (
                f"transformers' GPTQConfig does not load {quant.get('bits')}-bit GPTQ weights (gptqmodel runs them): "
                "load this repository with spectra-hf (`pip install spectra-hf[gptq]`) as below."
            )
            return note, None, native
        note = (
            "Stock transformers loads these GPTQ weights once `optimum` and `gptqmodel` are installed "
            "(`pip install spectra-hf[gptq]`)."
        )
        return note, _quickstart(repo_id=repo_id, revision=None, remote_code=False, tokenizer=has_tokenizer), native
    remote_code = "auto_map" in config
    if remote_code:
        note = (
            "The model code ships in this repository; `trust_remote_code=True` runs it without installing anything "
            "else."
        )
    else:
        note = "Stock transformers loads this repository as `LlamaForCausalLM`; no extra code runs."
    stock = _quickstart(repo_id=repo_id, revision=None, remote_code=remote_code, tokenizer=has_tokenizer)
    native = _quickstart(repo_id=native_repo, revision=revision, remote_code=True, tokenizer=False, native=True)
    return note, stock, native


def render_model_card(
    *,
    model: SuiteModel,
    org: str,
    config: Mapping[str, Any],
    revisions: Sequence[Revision] = (),
    evals: Mapping[str, Any] | None = None,
    variant: str = "release",
    has_tokenizer: bool = True,
    export: ExportInfo | None = None,
) -> str:
    """The README.md of a repo's `main` branch.

    Args:
        model: the suite model the repo holds.
        org: Hub namespace the suite is published under.
        config: the repo's config.json as a dict (the architecture table shows what is actually stored).
        revisions: the checkpoint branches of this repo, ascending by step.
        evals: metric -> value, or a `spectra-hf eval` results document (see `eval_results`); shown in the body
            and the model-index.
        variant: "release" (the model's own repo) or "unpacked" (the TriLM release format, plain Llama).
        has_tokenizer: whether the repo ships tokenizer files (the quickstart uses them when it does).
        export: the export's own metadata (`spectra_export.json`): its step, tokens and training data are stated
            as this model's. Without it the card states only what config.json and the registry say.
    """
    repo_name = model.unpacked_name if variant == "unpacked" else model.name
    repo_id = f"{org}/{repo_name}"
    _check_variant(variant)
    facts = model_facts(model=model, config=config, export=export)
    data = card_data(
        model=model, repo_name=repo_name, org=org, variant=variant, evals=evals, datasets=_card_datasets(facts)
    )
    # the paper's recipe is for the suite's architecture: a scaled-down model gets none
    training, recipe = _training(model, with_recipe=facts.suite_scale)
    note, stock, native = _quickstarts(
        config=config,
        repo_id=repo_id,
        native_repo=f"{org}/{model.name}",  # the unpacked variant points at the packed sibling
        revision=revisions[-1].branch if revisions and variant == "release" else None,
        has_tokenizer=has_tokenizer,
    )
    card = ModelCard.from_template(
        data,
        template_path=str(TEMPLATES / "model.md"),
        title=repo_name,
        summary=_summary(model, variant=variant, org=org),
        suite_count=len(suite.all_models()),
        size_count=len(suite.SIZES),
        quant_bits="/".join(str(b) for b in suite.QUANT_BITS),
        tokens_billions=suite.TOKENS // 10**9,
        size=model.size,
        suite_params=human_count(model.params),
        scaled_down=not facts.suite_scale,
        facts=_facts_rows(model, facts, export),
        siblings=_siblings(model),
        architecture=_architecture(config),
        training=training,
        recipe=recipe,
        revisions=[{"branch": r.branch, "step": r.step, "tokens": human_count(r.tokens_seen)} for r in revisions],
        revisions_file=REVISIONS_FILE,
        evals=[
            {"task": r.dataset_name, "metric": r.metric_name or r.metric_type, "value": f"{r.metric_value:.4g}"}
            for r in (data.eval_results or [])
        ],
        quickstart_note=note,
        quickstart=stock,
        quickstart_native=native,
    )
    return str(card)


def render_checkpoint_card(
    *, model: SuiteModel, org: str, revision: Revision, config: Mapping[str, Any] | None = None,
    export: ExportInfo | None = None,
) -> str:
    """The README.md of a `step<N>` branch: what the checkpoint is, and how to load it at this revision.

    It does not list the other branches, so adding a checkpoint never rewrites the branches already published.
    With the branch's `config` (and `export` metadata) it states the checkpoint's own parameters and data.
    """
    repo_id = f"{org}/{model.name}"
    facts = model_facts(model=model, config=config, export=export) if config is not None else None
    datasets = _card_datasets(facts) if facts is not None else (suite.DATASET_ID,)
    data = card_data(model=model, repo_name=model.name, org=org, datasets=datasets)
    card = ModelCard.from_template(
        data,
        template_path=str(TEMPLATES / "checkpoint.md"),
        title=model.name,
        repo_id=repo_id,
        repo_url=f"/{repo_id}",
        step=revision.step,
        tokens=human_count(revision.tokens_seen),
        revisions_file=REVISIONS_FILE,
        facts=_facts_rows(model, facts, export) if facts is not None else [],
        quickstart=_quickstart(repo_id=repo_id, revision=revision.branch, remote_code=True, tokenizer=False),
    )
    return str(card)
