"""One text reader for training, calibration and evaluation: every input kind gives the three the same documents."""

from __future__ import annotations

import csv
import json

import datasets
import pytest

from spectra_hf.errors import DataError
from spectra_hf.evaluation import load_texts
from spectra_hf.quantization.calibration import load_calibration_texts
from spectra_hf.training.arguments import DataArguments
from spectra_hf.training.data import load_text

# Written by hand: the documents every reader must return (blank rows dropped, text kept as written).
DOCUMENTS = ["The first document.", "  indented second, with a comma", 'third: {"json": "inside"}', "last one"]
ROWS_WITH_BLANKS = [DOCUMENTS[0], "", DOCUMENTS[1], "   ", DOCUMENTS[2], DOCUMENTS[3]]


def _write_sources(root):
    """Every input kind, holding ROWS_WITH_BLANKS, as a user would have them on disk."""
    (root / "docs.txt").write_text("\n".join(ROWS_WITH_BLANKS) + "\n", encoding="utf-8")
    (root / "docs.jsonl").write_text(
        "".join(json.dumps({"text": r, "id": i}) + "\n" for i, r in enumerate(ROWS_WITH_BLANKS))
    )
    (root / "docs.json").write_text(json.dumps([{"text": r} for r in ROWS_WITH_BLANKS]))
    with open(root / "docs.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows([i, r] for i, r in enumerate(ROWS_WITH_BLANKS))
    table = datasets.Dataset.from_dict({"text": ROWS_WITH_BLANKS, "id": list(range(len(ROWS_WITH_BLANKS)))})
    table.to_parquet(str(root / "docs.parquet"))
    table.save_to_disk(str(root / "saved"))
    (root / "hub_style").mkdir()  # a dataset repo's layout, loaded by name with datasets.load_dataset
    (root / "hub_style" / "train.jsonl").write_text((root / "docs.jsonl").read_text())
    return {
        "txt": root / "docs.txt",
        "jsonl": root / "docs.jsonl",
        "json": root / "docs.json",
        "csv": root / "docs.csv",
        "parquet": root / "docs.parquet",
        "save_to_disk": root / "saved",
        "datasets name": root / "hub_style",
    }


@pytest.mark.parametrize("streaming", [False, True])
def test_every_input_kind_gives_the_same_documents_to_train_quantize_and_eval(tmp_path, streaming):
    for kind, path in _write_sources(tmp_path).items():
        if streaming and kind == "save_to_disk":
            continue  # load_from_disk has no streaming mode
        training = load_text(
            DataArguments(
                data_files=[str(path)] if path.is_file() else None,
                dataset_name=None if path.is_file() else str(path),
                streaming=streaming,
            )
        )
        assert [row["text"] for row in training] == DOCUMENTS, kind
        assert load_calibration_texts(path).documents == DOCUMENTS, kind
        assert load_calibration_texts(str(path)).documents == DOCUMENTS, kind
        assert load_texts(str(path)) == DOCUMENTS, kind


def test_jsonl_calibration_reads_records_not_raw_lines(tmp_path):
    path = _write_sources(tmp_path)["jsonl"]
    documents = load_calibration_texts(path).documents
    assert not any(document.startswith("{") for document in documents)


def test_several_files_are_read_in_order_and_must_be_one_kind(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("one\ntwo\n")
    second.write_text("three\n")
    assert load_calibration_texts([first, second]).documents == ["one", "two", "three"]
    assert [r["text"] for r in load_text(DataArguments(data_files=[str(first), str(second)]))] == [
        "one",
        "two",
        "three",
    ]
    (tmp_path / "c.csv").write_text("text\nfour\n")
    with pytest.raises(DataError, match="must all be one of"):
        load_calibration_texts([first, tmp_path / "c.csv"])


def test_a_missing_file_or_column_or_split_is_one_clear_error(tmp_path):
    sources = _write_sources(tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_texts(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="no column 'body'"):
        load_texts(str(sources["jsonl"]), text_column="body")
    with pytest.raises(DataError, match="no column 'body'"):
        list(load_text(DataArguments(data_files=[str(sources["jsonl"])], text_column="body", streaming=True)))
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": ["a"]}), "test": datasets.Dataset.from_dict({"text": ["b"]})}
    ).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataError, match="pick one with --split"):
        load_texts(str(tmp_path / "dict"))
    assert load_texts(str(tmp_path / "dict"), split="test") == ["b"]
    assert load_texts(str(sources["txt"]), max_documents=2) == DOCUMENTS[:2]
