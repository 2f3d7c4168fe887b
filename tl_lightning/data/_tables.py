"""Reading CSV / TSV / JSON-lines tables cell by cell, as written.

pandas' readers guess: ``01`` becomes the number 1, the texts ``NA`` / ``None`` / ``null``
become missing values, a row with one field too many silently turns the first column into the
index, a short row is padded with empty cells, and a decoding error reports a position inside
an internal buffer. :func:`read_table` parses the file itself (Python's ``csv`` and ``json``),
keeps every cell as the string written in the file, and reports any malformed row, a wrong
encoding or a wrong separator as a one-line :class:`~tl_lightning.errors.DataError` with the fix.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import lzma
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from tl_lightning.errors import ConfigurationError, DataError

__all__ = ["read_table", "check_encoding", "check_separator", "TABLE_FORMATS", "COMPRESSIONS"]

COMPRESSIONS = (".bz2", ".gz", ".xz", ".zip", ".zst")
TABLE_FORMATS = (".csv", ".tsv", ".jsonl", ".json")
_DEFAULT_SEPARATORS = {".csv": ",", ".tsv": "\t"}
# separators a CSV export commonly uses instead (Excel in many locales writes ";")
_CANDIDATE_SEPARATORS = (";", "\t", "|", ",")
_SEPARATOR_NAMES = {"\t": "'\\t'", ",": "','", ";": "';'", "|": "'|'"}


def check_encoding(encoding: Any) -> str:
    """``encoding`` if Python knows it (``"utf-8"``, ``"latin-1"``, ``"cp1252"``, ...), else a ConfigurationError."""
    if not isinstance(encoding, str) or not encoding:
        raise ConfigurationError(f"encoding must be a text encoding name such as 'utf-8' or 'cp1252', got {encoding!r}")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigurationError(
            f"unknown encoding {encoding!r}; use a Python codec name such as 'utf-8', 'latin-1' or 'cp1252'"
        ) from None
    return encoding


def check_separator(separator: Any) -> str | None:
    """``separator`` as one character (``"\\t"`` written out as backslash-t or ``"tab"`` means a tab), or None."""
    if separator is None:
        return None
    if separator in ("\\t", "tab"):
        return "\t"
    if not isinstance(separator, str) or len(separator) != 1 or separator in ('"', "\n", "\r"):
        raise ConfigurationError(
            f"separator must be one character such as ',', ';', '|' or '\\t' (or None: by file extension), got {separator!r}"
        )
    return separator


def _format_of(p: Path) -> tuple[str, str]:
    """``(format, compression)`` from the file name, e.g. ``(".csv", ".gz")``."""
    suffixes = [s.lower() for s in p.suffixes]
    compression = ""
    if suffixes and suffixes[-1] in COMPRESSIONS:
        compression = suffixes.pop()
    return (suffixes[-1] if suffixes else ""), compression


@contextmanager
def _open_binary(p: Path, compression: str) -> Iterator[IO[bytes]]:
    if compression == ".gz":
        handle: Any = gzip.open(p, "rb")
    elif compression == ".bz2":
        handle = bz2.open(p, "rb")
    elif compression == ".xz":
        handle = lzma.open(p, "rb")
    elif compression == ".zip":
        archive = zipfile.ZipFile(p)
        members = [n for n in archive.namelist() if not n.endswith("/")]
        if len(members) != 1:
            archive.close()
            raise DataError(f"zip archive {str(p)!r} must hold exactly one file, it holds {members[:5]}")
        handle = archive.open(members[0])
    elif compression == ".zst":
        try:
            import zstandard
        except ImportError:
            raise DataError(
                f"{str(p)!r} is zstd-compressed and the 'zstandard' package is not installed. "
                "Fix: pip install zstandard, or decompress the file"
            ) from None
        handle = zstandard.open(p, "rb")
    else:
        handle = open(p, "rb")  # noqa: SIM115 - closed below
    try:
        yield handle
    finally:
        handle.close()


@contextmanager
def _open_text(p: Path, compression: str, encoding: str) -> Iterator[IO[str]]:
    # "utf-8-sig" also reads files without a byte-order mark, and drops the one Excel writes
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    with _open_binary(p, compression) as raw:
        yield io.TextIOWrapper(raw, encoding=codec, newline="")


def _decoding_error(p: Path, compression: str, encoding: str, err: UnicodeDecodeError) -> DataError:
    """A DataError with the absolute byte position and line of the first byte that does not decode.

    The decoder's own position is relative to an internal buffer, so the file is decoded again here.
    """
    with _open_binary(p, compression) as raw:
        data = raw.read()
    position, byte = None, None
    try:
        data.decode(encoding)
    except UnicodeDecodeError as again:
        position, byte = again.start, data[again.start : again.start + 1]
    if position is not None and byte:
        line = data.count(b"\n", 0, position) + 1
        where = f"byte 0x{byte.hex()} at byte position {position} (line {line})"
    else:
        where = str(err)
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        fix = "the file starts with a UTF-16 byte-order mark: pass encoding='utf-16' (data.encoding=utf-16)"
    else:
        fix = "pass encoding='cp1252' or encoding='latin-1' (data.encoding=cp1252 with tl-train), or re-save the file as UTF-8"
    return DataError(f"data file {str(p)!r} is not valid {encoding}: {where} cannot be decoded. Fix: {fix}")


@contextmanager
def _large_csv_fields() -> Iterator[None]:
    # csv's default limit (131072 characters) would reject long documents
    previous = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_csv(p: Path, compression: str, encoding: str, separator: str) -> tuple[list[str], list[list[Any]]]:
    with _open_text(p, compression, encoding) as handle, _large_csv_fields():
        reader = csv.reader(handle, delimiter=separator)
        header = next(reader, None)
        while header == []:  # blank lines before the header
            header = next(reader, None)
        if header is None:
            raise DataError(f"data file {str(p)!r} is empty; expected a header row and one row per sample")
        _check_separator_fits(p, header, separator)
        rows: list[list[Any]] = []
        bad: list[str] = []
        for row in reader:
            if not row:  # a blank line; an empty single-column cell is written as "" and reads as [""]
                continue
            if len(row) != len(header):
                bad.append(f"line {reader.line_num} has {len(row)}")
                continue
            rows.append(row)
    if bad:
        sep = _SEPARATOR_NAMES.get(separator, repr(separator))
        raise DataError(
            f"{str(p)!r}: rows with a different number of fields than the {len(header)}-column header "
            f"({len(bad)} row(s); {', '.join(bad[:5])}). Fix: quote texts that contain the separator {sep} "
            f"or a line break (\"a, b\"), or set the right separator (data.separator=...)"
        )
    return header, rows


def _check_separator_fits(p: Path, header: list[str], separator: str) -> None:
    """A ';'-separated file read with ',' has one column named like 'text;label': say so."""
    if len(header) != 1:
        return
    found = [s for s in _CANDIDATE_SEPARATORS if s != separator and s in header[0]]
    if found:
        used, guess = _SEPARATOR_NAMES.get(separator, repr(separator)), _SEPARATOR_NAMES.get(found[0], repr(found[0]))
        raise DataError(
            f"{str(p)!r} read with separator {used} has a single column {header[0]!r}: the file looks "
            f"{guess}-separated. Fix: pass separator={guess} (data.separator={guess} with tl-train)"
        )


def _json_value(value: Any) -> Any:
    """JSON cells as written: numbers keep their text (parsed as str), true / false stay lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def _read_json(p: Path, compression: str, encoding: str) -> tuple[list[str], list[list[Any]]]:
    with _open_text(p, compression, encoding) as handle:
        text = handle.read()
    decode = json.JSONDecoder(parse_int=str, parse_float=str, parse_constant=str).decode
    records: list[Any]
    if text.lstrip().startswith("["):  # a JSON array of objects
        try:
            records = decode(text)
        except json.JSONDecodeError as err:
            raise DataError(f"cannot parse {str(p)!r} as a JSON array: {err}. Fix: check the JSON syntax") from err
        numbered = list(enumerate(records, start=1))
        where = "element"
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((number, decode(line)))
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{str(p)!r} line {number} is not valid JSON ({err.msg} at column {err.colno}). "
                    "Fix: one JSON object per line ({\"text\": ..., \"label\": ...})"
                ) from err
        where = "line"
    if not numbered:
        raise DataError(f"data file {str(p)!r} is empty; expected one JSON object per row")
    not_objects = [n for n, record in numbered if not isinstance(record, dict)]
    if not_objects:
        raise DataError(
            f"{str(p)!r}: {where}(s) {not_objects[:5]} are not JSON objects. "
            "Fix: one object per row, e.g. {\"text\": \"...\", \"label\": \"...\"}"
        )
    columns: dict[str, None] = {}
    for _, record in numbered:
        columns.update(dict.fromkeys(record))
    header = list(columns)
    # a key absent from a row is a missing cell (None), like null
    rows = [[_json_value(record.get(c)) for c in header] for _, record in numbered]
    return header, rows


def read_table(path: str | Path, encoding: str = "utf-8", separator: str | None = None) -> Any:
    """Read a CSV, TSV, JSON-lines or JSON-array file (optionally ``.bz2`` / ``.gz`` / ``.xz`` / ``.zip`` / ``.zst``).

    Cells are kept as written: every CSV / TSV cell is the string in the file (``"01"``,
    ``"NA"``, ``"null"`` and the empty string stay what they are; nothing becomes NaN). JSON
    strings are kept, numbers keep their text (``1.50`` -> ``"1.50"``), ``true`` / ``false``
    become ``"true"`` / ``"false"``, lists stay lists (multi-label cells) and ``null`` or a
    missing key is ``None``.

    Args:
        path: The file. The format comes from the extension (``.csv``, ``.tsv``, ``.jsonl``,
            ``.json``), before any compression extension.
        encoding: Text encoding of the file (``"utf-8"`` default; a UTF-8 byte-order mark is
            dropped). Files from Excel on Windows are often ``"cp1252"``.
        separator: Field separator of CSV / TSV files: one character, ``None`` (default) for
            ``","`` (``.csv``) or ``"\\t"`` (``.tsv``). JSON files have no separator and ignore it
            (so one setting serves a CSV training file and a JSONL predict file).

    Returns:
        A ``pandas.DataFrame`` of object columns in file order.

    Raises:
        DataError: The file is missing or empty, has an unsupported extension, cannot be decoded
            with ``encoding`` (the message gives the byte position and line), looks separated by
            another character than ``separator``, or has malformed rows (named by line).
        ConfigurationError: ``encoding`` or ``separator`` is invalid.

    Example:
        >>> read_table("reviews.csv", separator=";")["label"].tolist()  # doctest: +SKIP
        ['01', '1', 'NA']
    """
    import pandas as pd

    encoding = check_encoding(encoding)
    separator = check_separator(separator)
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data file {str(p)!r} does not exist. Fix: check the path (relative paths start at {Path.cwd()})")
    fmt, compression = _format_of(p)
    if fmt not in TABLE_FORMATS:
        raise DataError(
            f"unsupported data file {str(p)!r}: extension {fmt or '(none)'!r}; supported: {list(TABLE_FORMATS)}, "
            f"optionally compressed with {list(COMPRESSIONS)}"
        )
    try:
        if fmt in (".jsonl", ".json"):
            header, rows = _read_json(p, compression, encoding)
        else:
            header, rows = _read_csv(p, compression, encoding, separator or _DEFAULT_SEPARATORS[fmt])
    except UnicodeDecodeError as err:
        raise _decoding_error(p, compression, encoding, err) from None
    except (OSError, EOFError, csv.Error, zipfile.BadZipFile, lzma.LZMAError) as err:
        raise DataError(f"cannot read data file {str(p)!r} as {fmt[1:].upper()}: {type(err).__name__}: {err}") from err
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise DataError(f"{str(p)!r} has duplicate column names {duplicated}. Fix: give every column its own name")
    frame = pd.DataFrame(rows, columns=pd.Index(header, dtype=object), dtype=object)
    return frame
