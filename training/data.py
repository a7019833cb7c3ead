"""Training data: text from local files or a Hub dataset, tokenized and packed into blocks of the context length.

Documents are tokenized, each followed by the end-of-text token (GPT-NeoX's convention; id 0 in the suite), then
concatenated and cut into `block_size`-token sequences; a tail shorter than a block is dropped (per batch of 1000
documents). The order is deterministic, so reruns and resumed runs see the same sequences.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset, IterableDataset, load_dataset
from transformers import PreTrainedTokenizerBase

from spectra_hf.errors import SpectraError

from .arguments import DataArguments

_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _local_builder(files: list[str]) -> str:
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise SpectraError(f"data file(s) not found: {', '.join(missing)}; fix data_files in the recipe or override")
    builders = {_BUILDERS.get(Path(f).suffix.lower()) for f in files}
    if None in builders or len(builders) > 1:
        raise SpectraError(
            f"data_files must all be one of {sorted(_BUILDERS)} (got {files}); convert them or use dataset_name"
        )
    return builders.pop()


def load_text(data_args: DataArguments) -> Dataset | IterableDataset:
    """The raw documents (a `text_column` column) of `data_files`, else of the Hub dataset `dataset_name`."""
    if not data_args.data_files and not data_args.dataset_name:
        raise SpectraError("no training data: set data_files (local files) or dataset_name (a Hub dataset)")
    if data_args.data_files:
        builder, kwargs = _local_builder(data_args.data_files), {"data_files": list(data_args.data_files)}
    else:
        builder, kwargs = data_args.dataset_name, {"name": data_args.dataset_config}
    try:
        dataset = load_dataset(builder, split=data_args.dataset_split, streaming=data_args.streaming, **kwargs)
    except (FileNotFoundError, ValueError, ConnectionError) as error:
        raise SpectraError(f"cannot load the training data ({builder}): {error}") from error
    columns = dataset.column_names
    if columns is not None and data_args.text_column not in columns:
        raise SpectraError(f"the data has no column {data_args.text_column!r} (columns: {columns}); set text_column")
    return dataset


def pack_documents(
    dataset: Dataset | IterableDataset, tokenizer: PreTrainedTokenizerBase, *, text_column: str, block_size: int
) -> Dataset | IterableDataset:
    """Tokenize and pack into rows `{"input_ids": [block_size], "labels": [block_size]}` (labels = inputs).

    Raises `SpectraError` when a prepared (non-streaming) dataset yields no full block.
    """
    if tokenizer.eos_token_id is None:
        raise SpectraError("the tokenizer has no eos token: packing needs one to separate documents")
    eos = tokenizer.eos_token_id

    def pack(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        ids = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
        stream = [token for document in ids for token in (*document, eos)]
        blocks = [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
        return {"input_ids": blocks, "labels": [list(block) for block in blocks]}

    packed = dataset.map(pack, batched=True, batch_size=1000, remove_columns=dataset.column_names)
    if isinstance(packed, Dataset) and len(packed) == 0:
        raise SpectraError(f"the training data holds fewer than block_size={block_size} tokens: add data or lower block_size")
    return packed
