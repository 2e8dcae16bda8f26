"""lightning_sft.data.sources: every suffix and a load_dataset dict, values as written, places from 1, and
errors that name the file and line."""

import json

import pandas as pd
import pytest

from lightning_sft.data import read_rows
from tests.data_helpers import write_jsonl


def test_read_rows_reads_every_suffix_and_a_load_dataset_dict(tmp_path):
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(5)]
    files = [write_jsonl(tmp_path / "a.jsonl", rows), tmp_path / "b.json", tmp_path / "c.parquet", tmp_path / "d.csv"]
    files[1].write_text(json.dumps(rows, indent=2))
    pd.DataFrame(rows).to_parquet(files[2])
    pd.DataFrame(rows).to_csv(files[3], index=False)
    for file in files:
        assert read_rows(file).records == rows
        assert read_rows(str(file)).records == rows
    assert read_rows({"path": "json", "data_files": str(files[0]), "split": "train"}).records == rows
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.jsonl", "b.json", "c.parquet", "d.csv"]


def test_read_rows_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no file .*nothere.jsonl.*; for a Hugging Face Hub dataset pass"):
        read_rows(tmp_path / "nothere.jsonl")


def test_read_rows_unknown_suffix_lists_accepted(tmp_path):
    (tmp_path / "rows.txt").write_text("hello\n")
    with pytest.raises(ValueError, match=r"'\.txt'; accepted: \.jsonl, \.json, \.parquet, \.csv"):
        read_rows(tmp_path / "rows.txt")


def test_read_rows_names_the_malformed_jsonl_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"\n{"text": "d"}\n')
    with pytest.raises(ValueError, match=rf"^{path}:3: Expecting ',' delimiter.*; fix or remove that line$"):
        read_rows(path)


def test_read_rows_names_the_malformed_line_of_a_json_document(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b" "c"}\n]\n')
    with pytest.raises(ValueError, match=rf"^{path}:3: .*; fix or remove that line$"):
        read_rows(path)


@pytest.mark.parametrize(("name", "content"), [("empty.jsonl", ""), ("blank.jsonl", "\n \n"), ("header.csv", "a,b\n")])
def test_read_rows_empty_file(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=rf"{tmp_path / name} (is empty|has no rows)"):
        read_rows(tmp_path / name)


def test_read_rows_dict_needs_path_and_split():
    with pytest.raises(ValueError, match="needs `path` and `split`"):
        read_rows({"path": "openai/gsm8k", "name": "main"})
