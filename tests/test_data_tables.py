"""read_table: cells as written, encodings, separators and malformed rows reported with the fix."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tl_lightning.data import read_table
from tl_lightning.errors import ConfigurationError, DataError


def test_csv_cells_are_kept_as_written(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text('text,label\nNA,01\nNone,1\nnull,007\nnan,NA\n"",x\n')
    df = read_table(tmp_path / "d.csv")
    assert df["text"].tolist() == ["NA", "None", "null", "nan", ""]
    assert df["label"].tolist() == ["01", "1", "007", "NA", "x"]


def test_json_lines_keep_numbers_as_written_and_lists(tmp_path: Path) -> None:
    rows = ['{"text": "NA", "label": ["a", "b"]}', "", '{"text": null, "label": 1.50, "ok": true}', '{"label": 007}']
    (tmp_path / "d.jsonl").write_text("\n".join(rows[:3]) + "\n")
    df = read_table(tmp_path / "d.jsonl")
    assert df["text"].tolist() == ["NA", None]
    assert df["label"].tolist() == [["a", "b"], "1.50"]
    assert df["ok"].tolist() == [None, "true"]
    (tmp_path / "bad.jsonl").write_text(rows[0] + "\n" + rows[3] + "\n")
    with pytest.raises(DataError, match=r"line 2 is not valid JSON"):
        read_table(tmp_path / "bad.jsonl")
    (tmp_path / "array.json").write_text(json.dumps([{"text": "hi", "label": "01"}]))
    assert read_table(tmp_path / "array.json")["label"].tolist() == ["01"]


def test_wrong_encoding_names_the_byte_position_and_the_fix(tmp_path: Path) -> None:
    body = "text,label\n" + "plain,pos\n" * 1000 + "café,neg\n"
    (tmp_path / "latin.csv").write_bytes(body.encode("latin-1"))
    position = len(body.encode("latin-1").split(b"\xe9")[0])
    with pytest.raises(DataError, match=rf"latin\.csv.*not valid utf-8: byte 0xe9 at byte position {position} "
                                        r"\(line 1002\).*encoding='cp1252'.*data\.encoding=cp1252"):
        read_table(tmp_path / "latin.csv")
    assert read_table(tmp_path / "latin.csv", encoding="latin-1")["text"].tolist()[-1] == "café"
    with gzip.open(tmp_path / "latin.csv.gz", "wb") as handle:
        handle.write(body.encode("latin-1"))
    with pytest.raises(DataError, match=rf"byte position {position}"):
        read_table(tmp_path / "latin.csv.gz")
    with pytest.raises(ConfigurationError, match="unknown encoding 'latin-9x'"):
        read_table(tmp_path / "latin.csv", encoding="latin-9x")


def test_utf8_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "bom.csv").write_bytes("\ufefftext,label\nhé,1\n".encode())
    assert read_table(tmp_path / "bom.csv").columns.tolist() == ["text", "label"]


def test_semicolon_file_read_as_csv_names_the_separator(tmp_path: Path) -> None:
    (tmp_path / "semi.csv").write_text("text;label\nhello, world;pos\nfine;neg\n")
    with pytest.raises(DataError, match=r"single column 'text;label'.*';'-separated.*data\.separator=';'"):
        read_table(tmp_path / "semi.csv")
    df = read_table(tmp_path / "semi.csv", separator=";")
    assert df["text"].tolist() == ["hello, world", "fine"] and df["label"].tolist() == ["pos", "neg"]


def test_tsv_by_extension_and_escaped_tab(tmp_path: Path) -> None:
    (tmp_path / "d.tsv").write_text("text\tlabel\na, b\t1\n")
    assert read_table(tmp_path / "d.tsv")["text"].tolist() == ["a, b"]
    (tmp_path / "tabs.csv").write_text("text\tlabel\na\t1\n")
    assert read_table(tmp_path / "tabs.csv", separator="\\t")["label"].tolist() == ["1"]


def test_rows_with_the_wrong_number_of_fields_are_named(tmp_path: Path) -> None:
    # pandas makes the first column the index (too many fields) or pads with empty cells (too few)
    (tmp_path / "d.csv").write_text("text,label\nok,pos\nhello, world,pos\nshort\n")
    with pytest.raises(DataError, match=r"2 row\(s\); line 3 has 3, line 4 has 1\). Fix: quote texts"):
        read_table(tmp_path / "d.csv")


def test_bad_arguments_and_files(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n')
    assert read_table(tmp_path / "d.jsonl", separator=";")["text"].tolist() == ["a"]  # JSON has no separator
    with pytest.raises(ConfigurationError, match="separator must be one character"):
        read_table(tmp_path / "d.jsonl", separator=";;")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        read_table(tmp_path / "empty.csv")
    (tmp_path / "dup.csv").write_text("text,text\na,b\n")
    with pytest.raises(DataError, match=r"duplicate column names \['text'\]"):
        read_table(tmp_path / "dup.csv")
    long_text = "word " * 40000  # 200k characters: over csv's default field limit
    (tmp_path / "long.csv").write_text(f'text,label\n"{long_text}",1\n')
    assert read_table(tmp_path / "long.csv")["text"].tolist() == [long_text]
