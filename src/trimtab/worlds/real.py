"""The real-text world's data: public prompt sets and tasks as trimtab records.

Each source is a file format plus a field mapping (DESIGN.md, Worlds 2), read with the same
loaders as user data, from a local folder (`TRIMTAB_DATA`, or a folder passed in), or from a
Hugging Face dataset repository holding the same files (hf://datasets/OWNER/NAME: downloaded
into the HF cache when online, read from it when offline). Task sets become instruction
records whose response is the label word, so task accuracy is an exact match on the first
word of a greedy answer. A source that is not in the folder is an error that names the file
and where it comes from.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trimtab.data.hub import is_hub_path
from trimtab.data.loaders import load_records
from trimtab.data.records import Record
from trimtab.errors import TrimtabError


@dataclass(frozen=True)
class Source:
    file: str
    fields: dict[str, str]
    kind: str
    origin: str  # where the file comes from (for the error when it is missing)
    require_response: bool = True
    csv_header: tuple[str, ...] | None = None
    to_record: Callable[[Record], Record] | None = None  # turn a raw row into an instruction


SST2_LABELS = {"0": "negative", "1": "positive"}
AGNEWS_LABELS = {"1": "world", "2": "sports", "3": "business", "4": "science"}


def _sst2(r: Record) -> Record:
    label = SST2_LABELS[str(r.metadata["label"]).strip()]
    return Record(f"Is the sentiment of this movie review positive or negative? Answer with "
                  f"one word.\nReview: {r.prompt.strip()}", label, "task", {"answer": label})


def _agnews(r: Record) -> Record:
    label = AGNEWS_LABELS[str(r.metadata["class"]).strip()]
    text = f"{r.prompt.strip()}. {str(r.metadata.get('description', '')).strip()}"
    return Record("Which topic is this news article about: world, sports, business or "
                  f"science? Answer with one word.\nArticle: {text}", label, "task",
                  {"answer": label})


def _gsm8k(r: Record) -> Record:
    final = r.response.rsplit("####", 1)[-1].strip().replace(",", "")
    reasoning = re.sub(r"<<[^>]*>>", "", r.response.rsplit("####", 1)[0]).strip()
    return Record(r.prompt, f"{reasoning}\nThe answer is {final}.", "task", {"answer": final})


SOURCES: dict[str, Source] = {
    "advbench": Source("advbench_harmful_behaviors.csv", {"prompt": "goal", "response": "target"},
                       "harmful", "llm-attacks: data/advbench/harmful_behaviors.csv"),
    "beavertails-qa": Source("beavertails_harmful_qa_1500.jsonl",
                             {"prompt": "prompt", "response": "response"}, "harmful",
                             "BeaverTails (unsafe QA pairs)"),
    "beavertails-eval": Source("beavertails_eval_700.jsonl", {"prompt": "prompt"}, "harmful",
                               "BeaverTails evaluation prompts", require_response=False),
    "refusals": Source("refusals_1035.json", {"prompt": "input", "response": "output"},
                       "refusal", "PACT: compute_safety_tokens/safe_direction.json"),
    "safety-tuned-llamas": Source("safety_tuned_llamas_safety_only.json",
                                  {"prompt": "instruction", "response": "output"}, "refusal",
                                  "safety-tuned-llamas: safety_only_data_Instructions.json"),
    "alpaca": Source("alpaca_instructions_refusal_direction.json", {"prompt": "instruction"},
                     "benign", "refusal_direction: dataset/processed/alpaca.json",
                     require_response=False),
    "sst2-train": Source("sst2_train.tsv", {"prompt": "sentence"}, "task", "GLUE SST-2 train",
                         require_response=False, to_record=_sst2),
    "sst2-dev": Source("sst2_dev.tsv", {"prompt": "sentence"}, "task", "GLUE SST-2 dev",
                       require_response=False, to_record=_sst2),
    "agnews-test": Source("agnews_test.csv", {"prompt": "title"}, "task", "AG News test",
                          require_response=False, csv_header=("class", "title", "description"),
                          to_record=_agnews),
    "gsm8k-train": Source("gsm8k_train.jsonl", {"prompt": "question", "response": "answer"},
                          "task", "openai/grade-school-math train", to_record=_gsm8k),
    "gsm8k-test": Source("gsm8k_test.jsonl", {"prompt": "question", "response": "answer"},
                         "task", "openai/grade-school-math test", to_record=_gsm8k),
}


def data_dir(folder: str | os.PathLike | None = None) -> Path | str:
    """The folder of the data files: the argument, else `$TRIMTAB_DATA`; a Hub dataset
    (hf://datasets/OWNER/NAME) holding the same files is returned as it is."""
    chosen = folder or os.environ.get("TRIMTAB_DATA")
    if chosen and is_hub_path(chosen):
        return str(chosen).rstrip("/")
    if not chosen:
        raise TrimtabError("no folder for the real-text data: pass one, or set TRIMTAB_DATA to "
                           "a folder holding the files (see trimtab.worlds.real.SOURCES).")
    path = Path(chosen)
    if not path.is_dir():
        raise TrimtabError(f"real-text data folder {path} does not exist; set TRIMTAB_DATA to "
                           "the folder holding the data files.")
    return path


def load_source(name: str, folder: str | os.PathLike | None = None, *,
                limit: int | None = None) -> list[Record]:
    """The records of source `name` (a key of SOURCES), from `folder` or `$TRIMTAB_DATA`."""
    if name not in SOURCES:
        raise TrimtabError(f"unknown data source {name!r}; known: {', '.join(SOURCES)}.")
    source = SOURCES[name]
    where = data_dir(folder)
    path = f"{where}/{source.file}" if isinstance(where, str) else where / source.file
    if isinstance(path, Path) and not path.is_file():
        raise TrimtabError(f"{path} is missing: source {name!r} is the file {source.file} "
                           f"({source.origin}); put it in that folder.")
    records = load_records(path, fields=source.fields, kind=source.kind, limit=limit,
                           require_response=source.require_response,
                           csv_header=list(source.csv_header) if source.csv_header else None)
    if source.to_record is None:
        return records
    try:
        return [source.to_record(r) for r in records]
    except KeyError as err:
        raise TrimtabError(f"{path}: a row has no usable {err} value; is this the {name} "
                           "file?") from None
