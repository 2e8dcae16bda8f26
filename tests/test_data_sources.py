"""lightning_sft.data.sources: every suffix and a load_dataset dict, values as written, places from 1, and
errors that name the file and line."""

import csv
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


@pytest.mark.parametrize(("name", "content"), [("empty.jsonl", ""), ("blank.jsonl", "\n \n"), ("header.csv", "a,b\n")])
def test_read_rows_empty_file(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=rf"{tmp_path / name} (is empty|has no rows)"):
        read_rows(tmp_path / name)


def test_read_rows_dict_needs_path_and_split():
    with pytest.raises(ValueError, match="needs `path` and `split`"):
        read_rows({"path": "openai/gsm8k", "name": "main"})


# ------------------------------------------------------------------------------- values as the file holds them


def write_csv(path, rows: list[list[str]]):
    with open(path, "w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows(rows)
    return path


AS_WRITTEN = ['"x"', "null", "023689", "NA", "", "16", "1e3", "True"]  # strings a type guesser would change


def test_csv_fields_are_the_strings_written(tmp_path):
    path = write_csv(tmp_path / "rows.csv", [["prompt", "response"], *([value, value] for value in AS_WRITTEN)])
    assert list(read_rows(path)) == [{"prompt": value, "response": value} for value in AS_WRITTEN]


def test_jsonl_strings_and_numbers_are_kept_per_row(tmp_path):
    rows = [{"prompt": f"q{i}", "response": "a"} for i in range(120)]
    rows[99]["response"] = 16  # line 100: a number where every other row has a string
    rows[5] = {"prompt": '"x"', "response": "null"}
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    assert list(read_rows(path)) == rows
    assert read_rows(path).places[99] == f"{path}:100"


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_lines_split_at_newline_only_and_keep_text_as_written(tmp_path, suffix):
    # Characters str.splitlines() breaks at, raw inside JSON strings (U+2028/9, U+0085 are valid there) or as
    # escapes (\r, \x1c...), and a CRLF line end: each line is still one row, its text exactly as written.
    texts = ["a\u2028b", "c\u2029d", "e\x85f", "g\rh", "i\x1cj\x1dk\x1el", "m\x0bn\x0co"]
    lines = [json.dumps({"text": text}, ensure_ascii=False) for text in texts]
    path = tmp_path / f"rows{suffix}"
    path.write_bytes(("\n".join(lines[:-1]) + "\r\n" + lines[-1] + "\n").encode("utf-8"))
    rows = read_rows(path)
    assert [row["text"] for row in rows] == texts
    assert rows.places == [f"{path}:{number}" for number in range(1, len(texts) + 1)]
    assert rows.lines == lines


def test_places_count_lines_from_one_in_every_format(tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert read_rows(jsonl).places == [f"{jsonl}:1", f"{jsonl}:3"]
    assert read_rows(jsonl).lines == ['{"text": "a"}', '{"text": "b"}']
    document = tmp_path / "rows.json"
    document.write_text('[\n  {"text": "a"},\n\n  {"text":\n "b"}, {"text": "c"}\n]\n')
    assert read_rows(document).places == [f"{document}:2", f"{document}:4", f"{document}:5"]
    table = write_csv(tmp_path / "rows.csv", [["text"], ["two\nlines"], ["c"]])  # header, then lines 2-3, then 4
    assert read_rows(table).places == [f"{table}:2", f"{table}:4"]
    parquet = tmp_path / "rows.parquet"
    pd.DataFrame({"text": ["a", "b"]}).to_parquet(parquet)
    assert read_rows(parquet).places == [f"{parquet} row 1", f"{parquet} row 2"]
    hub = read_rows({"path": "json", "data_files": str(jsonl), "split": "train"})
    assert hub.records == [{"text": "a"}, {"text": "b"}] and hub.places[1].endswith("row 2")


def test_select_keeps_places_and_lines(tmp_path):
    rows = read_rows(write_jsonl(tmp_path / "rows.jsonl", [{"text": str(i)} for i in range(4)]))
    chosen = rows.select([3, 1])
    assert (chosen.records, chosen.places) == ([{"text": "3"}, {"text": "1"}], [rows.places[3], rows.places[1]])
    assert [chosen.as_json(i) for i in range(2)] == ['{"text": "3"}', '{"text": "1"}']


# -------------------------------------------------------------------------------- errors that name the place


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", b'{"t": "a"}\n{"t": "b"}\n{"t": "c"\n{"t": "d"}\n', ":3: Expecting ',' delimiter"),
        ("first.jsonl", b'{"t": "a"\n{"t": "b"}\n', ":1: Expecting ',' delimiter.*; fix or remove that line$"),
        ("bad.json", b'[\n  {"t": "a"},\n  {"t": "b" "c"}\n]\n', ":3: .*; fix or remove that line$"),
        ("list.jsonl", b'{"t": "a"}\n[1, 2]\n', ":2: a JSON list, not an object"),
        ("number.jsonl", b'{"t": "a"}\n42\n', ":2: a JSON int, not an object"),
        ("string.jsonl", b'{"t": "a"}\n"t"\n', ":2: a JSON str, not an object"),
        ("item.json", b'[{"t": "a"},\n 7]', ":2: a JSON int, not an object"),
        ("object.json", b'{"data":\n [{"t": "a"}]}', r": one JSON value spread over several lines; pass an array"),
        ("latin1.jsonl", b'{"t": "a"}\n{"t": "caf\xe9"}\n', r":2: not UTF-8 text \(byte 0xe9.*save the file as UTF-8"),
        ("latin1.csv", b"t\na\ncaf\xe9\n", r":3: not UTF-8 text \(byte 0xe9"),
        ("text.parquet", b'{"t": "a"}\n', r": not a readable Parquet file \(.*\); pass a file written as Parquet"),
        ("fields.csv", b"prompt,response\na,b\nc,d,e\n", r":3: 3 fields where the header \(line 1\) has 2"),
        ("twice.jsonl", b'{"t": "a"}\n{"t": "b", "u": {"v": 1, "v": 2}}\n',
         r":2: an object names key\(s\) \['v'\] more"),
        ("twice.json", b'[\n  {"t": "a"},\n  {"t": "b",\n   "t": "c"}\n]\n',
         r":3: an object names key\(s\) \['t'\] more"),
        ("twice.csv", b"prompt,response,prompt\na,b,c\n",
         r":1: the header names column\(s\) \['prompt'\] more than once"),
    ],
)
def test_a_bad_file_is_named_with_its_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"^{path}{message}"):
        read_rows(path)
