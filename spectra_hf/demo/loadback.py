"""The demo's load-back process: a fresh Python whose HF_ENDPOINT is the local Hub loads every published repo with
`from_pretrained(repo, revision=...)`, as a user would, scores it and samples text (`python -m
spectra_hf.demo.loadback SPEC`, started by the loadback stage). Nothing else imports it, so that `-m` runs it
without a second copy."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from spectra_hf.suite import get_model
from spectra_hf.verbosity import quiet_http_logs

PROMPT = "The function returns"


def load_back(spec_path: Path) -> None:
    """Runs in a fresh process whose HF_ENDPOINT is the local Hub: from_pretrained(repo, revision=...) per target."""
    import torch
    from huggingface_hub import snapshot_download
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import spectra_hf  # noqa: F401  (registers trilm / floatlm)
    from spectra_hf.evaluation.results import write_results
    from spectra_hf.evaluation.text_perplexity import load_texts, perplexity
    from spectra_hf.quantization.gptq import FROM_PRETRAINED_BITS, load_quantlm

    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    texts = load_texts(spec["eval_text"], max_documents=spec["eval_documents"])
    rows = []
    for target in tqdm(spec["targets"], desc="load back from the local Hub", unit="model"):
        repo_id, revision = target["repo_id"], target["revision"]
        tokenizer = AutoTokenizer.from_pretrained(repo_id, revision=revision)
        bits = get_model(target["name"]).bits
        if bits is not None and bits not in FROM_PRETRAINED_BITS:
            # transformers' GPTQConfig refuses this width: download the revision, load with spectra_hf.quantization.gptq
            from transformers.utils import logging as transformers_logging

            transformers_logging.get_logger(__name__).info(
                f"{repo_id}: {bits}-bit GPTQ is not loadable by from_pretrained, loading with load_quantlm"
            )
            model = load_quantlm(snapshot_download(repo_id, revision=revision), dtype=torch.float32)
        else:
            model = AutoModelForCausalLM.from_pretrained(repo_id, revision=revision, dtype=torch.float32).eval()
        scores = perplexity(
            model, tokenizer, texts, max_length=spec["max_length"], batch_size=spec["batch_size"], show_progress=False
        )
        row = {**target, "perplexity": scores["perplexity"], "bits_per_byte": scores["bits_per_byte"]}
        if target.get("generate"):
            prompt = tokenizer(PROMPT, return_tensors="pt")
            torch.manual_seed(0)
            output = model.generate(
                **prompt,
                max_new_tokens=24,
                do_sample=True,
                top_k=40,
                temperature=0.8,
                pad_token_id=tokenizer.pad_token_id,
            )
            row["sample"] = tokenizer.decode(output[0], skip_special_tokens=True)
        rows.append(row)
    write_results(spec["out"], {"models": rows})


if __name__ == "__main__":
    from spectra_hf import verbosity

    # the demo's own verbosity: a quiet parent (no -v) set TRANSFORMERS_VERBOSITY=error for the processes it starts
    with verbosity.configure(verbose=os.environ.get("TRANSFORMERS_VERBOSITY") != "error"), quiet_http_logs():
        load_back(Path(sys.argv[1]))
