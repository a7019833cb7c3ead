"""Training data: text from local files or a Hub dataset, tokenized and packed into blocks of the context length.

Documents are tokenized, each followed by the end-of-text token (GPT-NeoX's convention; id 0 in the suite), then
concatenated and cut into `block_size`-token sequences; a tail shorter than a block is dropped (per batch of 1000
documents). The order is deterministic, so reruns and resumed runs see the same sequences.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, IterableDataset
from transformers import PreTrainedTokenizerBase

from spectra_hf.errors import ConfigError, DataError
from spectra_hf.texts import text_dataset

from .arguments import DataArguments


def load_text(data_args: DataArguments) -> Dataset | IterableDataset:
    """The raw documents (one `text_column` column) of `data_files`, else of the dataset `dataset_name`.

    Read with `spectra_hf.texts.text_dataset`, the reader calibration and evaluation use too.
    """
    if not data_args.data_files and not data_args.dataset_name:
        raise DataError("no training data: set data_files (local files) or dataset_name (a Hub dataset)")
    return text_dataset(
        list(data_args.data_files) if data_args.data_files else data_args.dataset_name,
        text_column=data_args.text_column,
        split=data_args.dataset_split,
        config=data_args.dataset_config,
        streaming=data_args.streaming,
    )


def pack_documents(
    dataset: Dataset | IterableDataset, tokenizer: PreTrainedTokenizerBase, *, text_column: str, block_size: int
) -> Dataset | IterableDataset:
    """Tokenize and pack into rows `{"input_ids": [block_size], "labels": [block_size]}` (labels = inputs).

    Raises `SpectraError` when a prepared (non-streaming) dataset yields no full block.
    """
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no eos token: packing needs one to separate documents")
    eos = tokenizer.eos_token_id

    def pack(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        ids = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
        stream = [token for document in ids for token in (*document, eos)]
        blocks = [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
        return {"input_ids": blocks, "labels": [list(block) for block in blocks]}

    # The columns are named: a streamed local file reports column_names None (datasets 5.2), so removing
    # `dataset.column_names` would keep the text column and the batch would not match the packed rows.
    packed = dataset.map(pack, batched=True, batch_size=1000, remove_columns=[text_column])
    if isinstance(packed, Dataset) and len(packed) == 0:
        raise DataError(
            f"the training data holds fewer than block_size={block_size} tokens: add data or lower block_size"
        )
    return packed
