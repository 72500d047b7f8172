"""The real-text world's sources: public files in ../shared/data read as trimtab records."""

from __future__ import annotations

import pytest
from conftest import SHARED_DATA

from trimtab.errors import TrimtabError
from trimtab.worlds.real import AGNEWS_LABELS, SOURCES, load_source

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent")

ROWS = {"advbench": 520, "beavertails-qa": 1500, "beavertails-eval": 700, "refusals": 1035,
        "safety-tuned-llamas": 2483, "sst2-dev": 872, "agnews-test": 7600, "gsm8k-test": 1319}


@needs_data
@pytest.mark.parametrize(("name", "rows"), ROWS.items())
def test_every_source_loads_whole_with_its_kind(name, rows):
    records = load_source(name, SHARED_DATA)
    assert len(records) == rows
    assert all(r.prompt.strip() for r in records)
    assert {r.kind for r in records} == {SOURCES[name].kind}
    if SOURCES[name].require_response:
        assert all(r.response.strip() for r in records)


@needs_data
def test_tasks_become_instructions_answered_by_a_label_word():
    sst2 = load_source("sst2-dev", SHARED_DATA)
    assert {r.response for r in sst2} == {"positive", "negative"}
    assert all(r.metadata["answer"] == r.response for r in sst2)
    news = load_source("agnews-test", SHARED_DATA, limit=200)
    assert {r.response for r in news} <= set(AGNEWS_LABELS.values())
    assert "Article:" in news[0].prompt and news[0].prompt.count(".") >= 1
    gsm = load_source("gsm8k-test", SHARED_DATA, limit=50)
    assert all(r.response.endswith(f"The answer is {r.metadata['answer']}.") for r in gsm)
    assert all("<<" not in r.response and r.metadata["answer"].lstrip("-").isdigit()
               for r in gsm)


def test_missing_data_and_wrong_files_get_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("TRIMTAB_DATA", raising=False)
    with pytest.raises(TrimtabError, match="set TRIMTAB_DATA"):
        load_source("advbench")
    with pytest.raises(TrimtabError, match="unknown data source 'advbenc'"):
        load_source("advbenc", tmp_path)
    with pytest.raises(TrimtabError, match="advbench_harmful_behaviors.csv.*llm-attacks"):
        load_source("advbench", tmp_path)
    (tmp_path / "sst2_dev.tsv").write_text("sentence\tscore\ngood film\t1\n")
    with pytest.raises(TrimtabError, match="no usable 'label'"):
        load_source("sst2-dev", tmp_path)
    monkeypatch.setenv("TRIMTAB_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(TrimtabError, match="does not exist"):
        load_source("advbench")
