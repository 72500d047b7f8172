"""Tests for loading data files into Records, including the error messages users will read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trimtab.data.loaders import load_records, parse_field_mapping
from trimtab.data.records import Record
from trimtab.errors import TrimtabError

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def shared_file(name: str) -> Path:
    path = DATA_DIR / name
    if not path.is_file():
        pytest.skip(f"shared data file {path} is absent")
    return path


# --- formats -------------------------------------------------------------------------------


def test_jsonl_defaults_and_metadata(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "p1", "response": "r1", "kind": "task", "source": "x"},
            {"prompt": "p2", "response": "r2", "score": [1, 2]},
        ],
    )
    records = load_records(path)
    assert records == [
        Record("p1", "r1", "task", {"source": "x"}),
        Record("p2", "r2", "general", {"score": [1, 2]}),
    ]


def test_jsonl_skips_blank_lines_but_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n  \n{"prompt": "c"}\n', encoding="utf-8")
    with pytest.raises(TrimtabError) as info:
        load_records(path)
    assert "row 2 (line 4)" in str(info.value)


def test_json_list(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"prompt": "p", "response": "r"}]), encoding="utf-8")
    assert load_records(path) == [Record("p", "r")]


def test_json_object_with_one_list(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    data = {"version": 2, "tags": ["a"], "data": [{"prompt": "p", "response": "r"}]}
    path.write_text(json.dumps(data), encoding="utf-8")
    assert load_records(path) == [Record("p", "r")]


def test_csv_with_header(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('prompt,response,note\n"hi, there","multi\nline",n1\n', encoding="utf-8")
    assert load_records(path) == [Record("hi, there", "multi\nline", metadata={"note": "n1"})]


def test_tsv_with_header(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text("prompt\tresponse\na, b\tc\n", encoding="utf-8")
    assert load_records(path) == [Record("a, b", "c")]


def test_csv_with_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbfprompt,response\r\np,r\r\n")
    assert load_records(path) == [Record("p", "r")]


def test_headerless_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('"3","Title","Body text"\n"1","T2","B2"\n', encoding="utf-8")
    records = load_records(
        path,
        csv_header=["class", "title", "description"],
        fields={"prompt": "description", "response": "class"},
    )
    assert records == [
        Record("Body text", "3", metadata={"title": "Title"}),
        Record("B2", "1", metadata={"title": "T2"}),
    ]


def test_file_format_overrides_suffix(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.txt", [{"prompt": "p", "response": "r"}])
    assert load_records(path, file_format="jsonl") == [Record("p", "r")]
    assert load_records(str(path), file_format="JSONL") == [Record("p", "r")]


def test_suffix_is_case_insensitive(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "D.JSONL", [{"prompt": "p", "response": "r"}])
    assert load_records(path) == [Record("p", "r")]


# --- mapping, kind, responses, limit -------------------------------------------------------


def test_field_mapping_and_unmapped_columns_to_metadata(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"goal": "g", "target": "t", "prompt": "ignored", "category": "c", "n": 3}],
    )
    [record] = load_records(path, fields={"prompt": "goal", "response": "target"})
    assert (record.prompt, record.response) == ("g", "t")
    assert record.metadata == {"prompt": "ignored", "category": "c", "n": 3}


def test_kind_column_mapping(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r", "cat": "harmful"}])
    [record] = load_records(path, fields={"kind": "cat"})
    assert record.kind == "harmful"
    assert record.metadata == {}


def test_kind_argument_overrides_column(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r", "kind": "task"}])
    [record] = load_records(path, kind="harmful")
    assert record.kind == "harmful"
    assert record.metadata == {"kind": "task"}  # not lost


def test_null_default_kind_column_means_general(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r", "kind": None}])
    assert load_records(path)[0].kind == "general"


def test_numbers_become_strings(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": 12, "response": 1.5}])
    assert load_records(path) == [Record("12", "1.5")]


def test_prompt_only_data(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": "a"}, {"prompt": "b", "response": None}, {"prompt": "c", "response": ""}],
    )
    records = load_records(path, require_response=False)
    assert [(r.prompt, r.response) for r in records] == [("a", ""), ("b", ""), ("c", "")]
    assert all(r.metadata == {} for r in records)


def test_limit_keeps_first_rows_and_ignores_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"prompt": f"p{i}", "response": "r"}) for i in range(3)]
    path.write_text("\n".join([*lines, "not json"]), encoding="utf-8")
    assert [r.prompt for r in load_records(path, limit=2)] == ["p0", "p1"]
    assert len(load_records(path, limit=3)) == 3
    with pytest.raises(TrimtabError, match="line 4"):
        load_records(path, limit=4)


@pytest.mark.parametrize("limit", [0, -1, True, 2.5])
def test_bad_limit(tmp_path: Path, limit: Any) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}])
    with pytest.raises(TrimtabError, match="limit must be a positive"):
        load_records(path, limit=limit)


def test_to_dict_output_round_trips(tmp_path: Path) -> None:
    records = [Record("p", "r", "harmful", {"category": "x"}), Record("q", "s")]
    path = write_jsonl(tmp_path / "d.jsonl", [r.to_dict() for r in records])
    assert load_records(path) == records


def test_parse_field_mapping() -> None:
    specs = ["prompt=goal", " response = target ", "kind=a=b"]
    assert parse_field_mapping(specs) == {"prompt": "goal", "response": "target", "kind": "a=b"}
    assert parse_field_mapping([]) == {}


@pytest.mark.parametrize(
    ("specs", "needle"),
    [
        (["prompt"], "write FIELD=COLUMN"),
        (["prompt="], "write FIELD=COLUMN"),
        (["=goal"], "write FIELD=COLUMN"),
        (["question=goal"], "prompt, response, kind"),
        (["prompt=a", "prompt=b"], "mapped twice"),
    ],
)
def test_parse_field_mapping_errors(specs: list[str], needle: str) -> None:
    with pytest.raises(TrimtabError, match=needle):
        parse_field_mapping(specs)


def test_unknown_field_key(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}])
    with pytest.raises(TrimtabError) as info:
        load_records(path, fields={"instruction": "x"})
    assert "'instruction'" in str(info.value)
    assert "prompt, response, kind" in str(info.value)


# --- errors --------------------------------------------------------------------------------


def error_of(path: Path, **kwargs: Any) -> str:
    with pytest.raises(TrimtabError) as info:
        load_records(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    message = error_of(tmp_path / "nope.jsonl")
    assert "no such file" in message and "check the path" in message


def test_directory(tmp_path: Path) -> None:
    assert "is a directory" in error_of(tmp_path)


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_text("x", encoding="utf-8")
    message = error_of(path)
    assert ".parquet" in message and "file_format" in message
    assert all(s in message for s in (".jsonl", ".json", ".csv", ".tsv"))


def test_unknown_file_format(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}])
    with pytest.raises(TrimtabError, match="unknown file_format 'xml'.*jsonl, json, csv, tsv"):
        load_records(path, file_format="xml")


def test_csv_header_on_json_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}])
    assert "csv_header only applies" in error_of(path, csv_header=["a"])


def test_malformed_jsonl_names_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "response": "r"}\n{"prompt": oops}\n', encoding="utf-8")
    message = error_of(path)
    assert "line 2" in message and "not valid JSON" in message


def test_jsonl_row_not_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}, ["p", "r"]])
    message = error_of(path)
    assert "row 2 (line 2)" in message and "a list" in message


def test_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[\n  {"prompt": "p",}\n]', encoding="utf-8")
    message = error_of(path)
    assert "line 2" in message and "invalid JSON" in message


def test_jsonl_named_json_gets_a_hint(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.json", [{"prompt": "p", "response": "r"}] * 2)
    assert "file_format='jsonl'" in error_of(path)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"a": [{"prompt": "p"}], "b": [{"prompt": "q"}]}, "several lists of objects ('a', 'b')"),
        ({"a": 1, "b": ["x"]}, "no list of objects in it (keys: 'a', 'b')"),
        ("just a string", "a str at the top level"),
        ([{"prompt": "p", "response": "r"}, 3], "row 2: expected a JSON object"),
    ],
)
def test_json_shape_errors(tmp_path: Path, data: Any, needle: str) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert needle in error_of(path)


def test_missing_mapped_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("goal,target\ng,t\n", encoding="utf-8")
    message = error_of(path, fields={"prompt": "question", "response": "target"})
    assert "'question'" in message and "row 1 (line 2)" in message
    assert "'goal', 'target'" in message
    assert "--field prompt=COLUMN" in message


def test_missing_default_column_later_row(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": "p", "response": "r"}, {"prompt": "p", "output": "r"}],
    )
    message = error_of(path)
    assert "no column 'response'" in message and "row 2 (line 2)" in message
    assert "'prompt', 'output'" in message
    assert "--field response=COLUMN" in message and "require_response=False" in message


def test_mapped_response_must_exist_even_for_prompt_only(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "target": "t"}])
    message = error_of(path, fields={"response": "targt"}, require_response=False)
    assert "'targt'" in message


def test_mapped_kind_must_exist(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": "r"}])
    assert "--field kind=COLUMN" in error_of(path, fields={"kind": "cat"})


@pytest.mark.parametrize(
    ("bad", "described"),
    [(None, "null"), (["a"], "a list"), ({"a": 1}, "an object"), (float("nan"), "nan")],
)
@pytest.mark.parametrize("field", ["prompt", "response"])
def test_non_text_values(tmp_path: Path, field: str, bad: Any, described: str) -> None:
    row = {"prompt": "p", "response": "r", field: bad}
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "ok", "response": "ok"}, row])
    message = error_of(path)
    assert "row 2 (line 2)" in message and field in message and described in message


def test_empty_prompt(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,response\na,b\n  ,c\n", encoding="utf-8")
    message = error_of(path)
    assert "row 2 (line 3)" in message and "prompt" in message and "is empty" in message


def test_empty_response_when_required(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "response": ""}])
    message = error_of(path)
    assert "response" in message and "is empty" in message and "require_response=False" in message


def test_ragged_csv_row(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,response\na,b\nc,d,e\n", encoding="utf-8")
    message = error_of(path)
    assert "row 2 (line 3)" in message and "3 fields" in message and "names 2" in message


def test_duplicate_csv_header(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,prompt\na,b\n", encoding="utf-8")
    assert "appears twice" in error_of(path)


def test_bad_csv_quoting(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('prompt,response\n"a"b,c\n', encoding="utf-8")
    assert "line 2" in error_of(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("d.jsonl", ""),
        ("d.jsonl", "\n\n"),
        ("d.json", "[]"),
        ("d.json", '{"data": []}'),
        ("d.csv", "prompt,response\n"),
        ("d.tsv", ""),
    ],
)
def test_empty_dataset(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert "is empty" in error_of(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes("prompt,response\ncaf\u00e9,r\n".encode("latin-1"))
    message = error_of(path)
    assert "UTF-8" in message and "line 2" in message


# --- property ------------------------------------------------------------------------------


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(prompt=st.text(), response=st.text(min_size=1), ascii_only=st.booleans())
@example(prompt="a\u2028b\x85c\r", response="\ufeffd\u2029\n", ascii_only=False)  # line breaks
def test_jsonl_round_trip(tmp_path: Path, prompt: str, response: str, ascii_only: bool) -> None:
    path = tmp_path / "prop.jsonl"
    row = {"prompt": prompt, "response": response}
    path.write_text(json.dumps(row, ensure_ascii=ascii_only) + "\n", encoding="utf-8")
    if not prompt.strip():
        with pytest.raises(TrimtabError, match="prompt"):
            load_records(path)
        return
    if not response.strip():
        with pytest.raises(TrimtabError, match="response"):
            load_records(path)
        assert load_records(path, require_response=False) == [Record(prompt, response)]
        return
    assert load_records(path) == [Record(prompt, response)]


# --- real files ----------------------------------------------------------------------------


def test_real_advbench() -> None:
    path = shared_file("advbench_harmful_behaviors.csv")
    records = load_records(path, fields=parse_field_mapping(["prompt=goal", "response=target"]))
    assert len(records) == 520
    assert records[0].response.startswith("Sure, here is")
    assert all(r.metadata == {} for r in records)


def test_real_beavertails() -> None:
    records = load_records(shared_file("beavertails_harmful_qa_1500.jsonl"), kind="harmful")
    assert len(records) == 1500
    assert all(r.kind == "harmful" and r.prompt and r.response for r in records)
    assert "category" in records[0].metadata


def test_real_refusals_json() -> None:
    path = shared_file("refusals_1035.json")
    records = load_records(path, fields={"prompt": "input", "response": "output"})
    assert len(records) == 1035
    assert set(records[0].metadata) == {"guard_decision"}


def test_real_sst2_tsv() -> None:
    path = shared_file("sst2_dev.tsv")
    records = load_records(path, fields={"prompt": "sentence", "response": "label"}, kind="task")
    assert len(records) == 872
    assert {r.response for r in records} == {"0", "1"}


def test_real_agnews_headerless() -> None:
    records = load_records(
        shared_file("agnews_test.csv"),
        csv_header=["class", "title", "description"],
        fields={"prompt": "description", "response": "class"},
        limit=100,
    )
    assert len(records) == 100
    assert records[0].response == "3"
    assert records[0].metadata == {"title": "Fears for T N pension after talks"}


def test_real_agnews_full_count() -> None:
    records = load_records(
        shared_file("agnews_test.csv"),
        csv_header=["class", "title", "description"],
        fields={"prompt": "description", "response": "class"},
    )
    assert len(records) == 7600
