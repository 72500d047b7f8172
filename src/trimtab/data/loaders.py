"""Read instruction data from JSONL, JSON, CSV or TSV files into `Record`s.

Every problem with a file is raised as a `TrimtabError` naming the file, the row and the
fix, because a bad row found mid-training costs far more than one found at load time.
No row is ever dropped silently: a row that cannot become a record stops the load.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from trimtab.data.hub import hub_file, is_hub_path
from trimtab.data.records import Record
from trimtab.errors import TrimtabError

FORMATS = ("jsonl", "json", "csv", "tsv")
RECORD_FIELDS = ("prompt", "response", "kind")

_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}
_DELIMITERS = {"csv": ",", "tsv": "\t"}

# A row as read from a file: where it is ("row 3 (line 4)") and its columns.
_Row = tuple[str, dict[str, Any]]


def parse_field_mapping(specs: Sequence[str]) -> dict[str, str]:
    """Turn command-line specs like ``["prompt=goal", "response=target"]`` into a mapping.

    Splits on the first ``=`` only, so column names may themselves contain ``=``.
    """
    mapping: dict[str, str] = {}
    for spec in specs:
        key, sep, column = spec.partition("=")
        key, column = key.strip(), column.strip()
        if not sep or not key or not column:
            raise TrimtabError(
                f"bad field mapping {spec!r}; write FIELD=COLUMN, e.g. prompt=goal "
                f"(FIELD is one of {', '.join(RECORD_FIELDS)})"
            )
        if key in mapping:
            raise TrimtabError(
                f"field {key!r} is mapped twice ({key}={mapping[key]} and {spec}); keep one"
            )
        mapping[key] = column
    _check_fields(mapping)
    return mapping


def load_records(
    path: str | os.PathLike[str],
    *,
    fields: Mapping[str, str] | None = None,
    kind: str | None = None,
    file_format: str | None = None,
    require_response: bool = True,
    limit: int | None = None,
    csv_header: Sequence[str] | None = None,
    field_flag: str = "--field",
) -> list[Record]:
    """Load every row of a data file as a `Record`, or raise a `TrimtabError` saying why not.

    `fields` maps record fields (prompt, response, kind) to the file's column names; columns
    left unmapped are kept in `metadata` so judges can still use them. `kind` sets the kind of
    every record. With `require_response=False` prompt-only data loads with response "".
    `limit` keeps the first N rows. `csv_header` names the columns of a header-less CSV/TSV.
    `path` may also be a Hub file, hf://datasets/OWNER/NAME/FILE (`trimtab.data.hub`).
    `field_flag` is the command-line flag a missing column's message tells the user to map
    it with.
    """
    if is_hub_path(path):
        path = hub_file(str(path))
    path = Path(path)
    if not path.exists():
        raise TrimtabError(f"no such file {path}; check the path")
    if path.is_dir():
        raise TrimtabError(
            f"{path} is a directory; pass a data file inside it "
            f"({', '.join('.' + f for f in FORMATS)})"
        )
    fmt = _resolve_format(path, file_format)
    mapping = _check_fields(dict(fields or {}))
    if kind is not None and (not isinstance(kind, str) or not kind.strip()):
        raise TrimtabError(f"kind must be a non-empty string, got {kind!r}; pass e.g. kind='task'")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TrimtabError(
            f"limit must be a positive whole number, got {limit!r}; pass None to keep every row"
        )
    if csv_header is not None and fmt not in _DELIMITERS:
        raise TrimtabError(
            f"{path}: csv_header only applies to CSV/TSV files, not {fmt}; leave it out"
        )

    text = _read_text(path)
    if not text.strip():
        raise TrimtabError(f"{path} is empty; add rows or pick another file")
    if fmt == "jsonl":
        rows = _jsonl_rows(path, text)
    elif fmt == "json":
        rows = _json_rows(path, text)
    else:
        rows = _csv_rows(path, text, fmt, csv_header)

    records = [
        _to_record(path, where, row, mapping, kind, require_response, field_flag)
        for where, row in itertools.islice(rows, limit)
    ]
    if not records:
        raise TrimtabError(f"{path} is empty; it has no data rows, add some or pick another file")
    return records


def _check_fields(mapping: dict[str, str]) -> dict[str, str]:
    """Reject unknown record fields early, before a typo turns into a confusing row error."""
    unknown = sorted(set(mapping) - set(RECORD_FIELDS))
    if unknown:
        raise TrimtabError(
            f"cannot map field(s) {', '.join(map(repr, unknown))}; the fields that can be "
            f"mapped are {', '.join(RECORD_FIELDS)} (other columns go into metadata by themselves)"
        )
    for key, column in mapping.items():
        if not isinstance(column, str) or not column:
            raise TrimtabError(
                f"field {key!r} is mapped to {column!r}; map it to a column name, e.g. {key}=text"
            )
    return mapping


def _resolve_format(path: Path, file_format: str | None) -> str:
    if file_format is not None:
        fmt = file_format.lower().lstrip(".")
        if fmt not in FORMATS:
            raise TrimtabError(
                f"unknown file_format {file_format!r}; use one of {', '.join(FORMATS)}"
            )
        return fmt
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise TrimtabError(
            f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}; supported "
            f"are {', '.join(_SUFFIXES)}. Rename the file or pass file_format= one of "
            f"{', '.join(FORMATS)}"
        )
    return _SUFFIXES[suffix]


def _read_text(path: Path) -> str:
    """Read the whole file as UTF-8, dropping a byte-order mark some editors write."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TrimtabError(f"cannot read {path}: {err.strerror}; check its permissions") from err
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise TrimtabError(
            f"{path}: line {line} is not valid UTF-8 (byte {err.start}); the file must be "
            f"UTF-8, re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from err


def _jsonl_rows(path: Path, text: str) -> Iterator[_Row]:
    number = 0
    # Split on "\n" only: str.splitlines() would also split on U+2028 and friends,
    # which json.dumps leaves unescaped inside strings.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip(" \t\r"):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise TrimtabError(
                f"{path}: line {line_no} is not valid JSON ({err.msg} at column {err.colno}); "
                f"fix that line, each line must hold one JSON object (for one JSON array "
                f"use a .json file or file_format='json')"
            ) from err
        number += 1
        yield _object_row(path, f"row {number} (line {line_no})", value)


def _json_rows(path: Path, text: str) -> Iterator[_Row]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        hint = ""
        if err.msg == "Extra data":
            hint = " (it looks like JSON Lines: name it .jsonl or pass file_format='jsonl')"
        raise TrimtabError(
            f"{path}: invalid JSON at line {err.lineno}, column {err.colno} ({err.msg}); "
            f"fix the file{hint}"
        ) from err
    for number, item in enumerate(_json_items(path, data), start=1):
        yield _object_row(path, f"row {number}", item)


def _json_items(path: Path, data: Any) -> list[Any]:
    """Find the rows: a top-level list, or the one list of objects inside a top-level object."""
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise TrimtabError(
            f"{path} holds {_describe(data)} at the top level; it must hold a list of objects, "
            f'or an object with one such list, e.g. {{"data": [{{"prompt": ...}}]}}'
        )
    lists = [
        key
        for key, value in data.items()
        if isinstance(value, list) and all(isinstance(item, dict) for item in value)
    ]
    chosen = [key for key in lists if data[key]] or lists
    if len(chosen) == 1:
        return data[chosen[0]]
    keys = ", ".join(map(repr, data)) or "(none)"
    if not chosen:
        problem = f"an object with no list of objects in it (keys: {keys})"
    else:
        problem = f"several lists of objects ({', '.join(map(repr, chosen))})"
    raise TrimtabError(
        f"{path} holds {problem}; it must hold a list of objects, or an object with exactly "
        f"one such list. Extract the rows you want into a file of their own"
    )


def _object_row(path: Path, where: str, value: Any) -> _Row:
    if not isinstance(value, dict):
        raise TrimtabError(
            f'{path}, {where}: expected a JSON object like {{"prompt": ...}}, found '
            f"{_describe(value)}; make every row an object"
        )
    return where, value


def _csv_rows(path: Path, text: str, fmt: str, header: Sequence[str] | None) -> Iterator[_Row]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_DELIMITERS[fmt], strict=True)
    origin = "csv_header"
    try:
        if header is None:
            origin = "the header"
            header = next((row for row in reader if row), [])
        _check_header(path, list(header), origin)
        number = 0
        for row in reader:
            if not row:  # a blank line
                continue
            number += 1
            where = f"row {number} (line {reader.line_num})"
            if len(row) != len(header):
                raise TrimtabError(
                    f"{path}, {where}: has {len(row)} fields but {origin} names "
                    f"{len(header)} ({', '.join(map(repr, header))}); quote fields that "
                    f"contain {_DELIMITERS[fmt]!r} or fix the row"
                )
            yield where, dict(zip(header, row, strict=True))
    except csv.Error as err:
        raise TrimtabError(
            f"{path}: cannot parse {fmt.upper()} near line {reader.line_num} ({err}); "
            f"check the quoting there"
        ) from err


def _check_header(path: Path, header: list[str], origin: str) -> None:
    if not header:
        raise TrimtabError(f"{path}: {origin} is empty; give the column names")
    seen: set[str] = set()
    for name in header:
        if not isinstance(name, str):
            raise TrimtabError(f"{path}: column name {name!r} in {origin} is not a string")
        if name in seen:
            raise TrimtabError(
                f"{path}: column {name!r} appears twice in {origin}; rename one of them"
            )
        seen.add(name)


def _to_record(
    path: Path,
    where: str,
    row: dict[str, Any],
    mapping: Mapping[str, str],
    kind: str | None,
    require_response: bool,
    field_flag: str = "--field",
) -> Record:
    used: set[str] = set()

    def text_of(field: str, *, must_exist: bool, optional: bool) -> str | None:
        """The field's column as text; None for an optional field that is absent or null."""
        column = mapping.get(field, field)
        if column not in row:
            if must_exist:
                raise _missing_column(path, where, row, field, column,
                                      explicit=field in mapping, flag=field_flag)
            return None
        used.add(column)
        value = row[column]
        if value is None and optional:
            return None
        text = _as_text(path, where, field, column, value)
        if not text.strip() and not (optional and field == "response"):
            fix = "fill it in or remove the row"
            if field == "response":
                fix += ", or pass require_response=False for prompt-only data"
            raise TrimtabError(f"{path}, {where}: {field} (column {column!r}) is empty; {fix}")
        return text

    prompt = text_of("prompt", must_exist=True, optional=False)
    # An explicitly mapped column must exist even for prompt-only data: a typo in the
    # mapping should not quietly turn every response into "".
    response = text_of(
        "response",
        must_exist=require_response or "response" in mapping,
        optional=not require_response,
    )
    record_kind = kind
    if record_kind is None:
        explicit = "kind" in mapping
        record_kind = text_of("kind", must_exist=explicit, optional=not explicit)
    extra = {"kind": record_kind} if record_kind is not None else {}
    return Record(
        prompt=prompt or "", response=response or "", metadata=_metadata(row, used), **extra
    )


def _metadata(row: dict[str, Any], used: set[str]) -> dict[str, Any]:
    """Unused columns, as-is; a `metadata` object (as `Record.to_dict` writes) is unpacked."""
    nested = row.get("metadata")
    unpack = "metadata" not in used and isinstance(nested, dict)
    metadata: dict[str, Any] = dict(nested) if unpack else {}
    for column, value in row.items():
        if column not in used and not (unpack and column == "metadata"):
            metadata[column] = value
    return metadata


def _missing_column(
    path: Path, where: str, row: Mapping[str, Any], field: str, column: str, *, explicit: bool,
    flag: str = "--field",
) -> TrimtabError:
    available = ", ".join(map(repr, row)) or "(none)"
    how = f"mapped to {field}" if explicit else f"the default column for {field}"
    fix = f"name the right one with {flag} {field}=COLUMN (fields={{'{field}': COLUMN}} in "
    fix += "Python)"
    if field == "response":
        fix += ", or pass require_response=False for prompt-only data"
    return TrimtabError(
        f"{path}, {where}: no column {column!r} ({how}); available columns: {available}. "
        f"{fix[0].upper()}{fix[1:]}"
    )


def _as_text(path: Path, where: str, field: str, column: str, value: Any) -> str:
    """Strings pass; finite numbers (labels, numeric answers) become str(); the rest is an error."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and math.isfinite(value):
        return str(value)
    fix = f"give every row a string {field}"
    if field == "response" and value is None:
        fix += ", or pass require_response=False for prompt-only data"
    raise TrimtabError(
        f"{path}, {where}: {field} (column {column!r}) is {_describe(value)}, not text; {fix}"
    )


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"
