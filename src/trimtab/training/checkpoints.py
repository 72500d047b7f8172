"""Resumable checkpoints of a run: where they live, which one to resume, and the run's
fingerprint, so that a checkpoint is only ever resumed by the run that wrote it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

from trimtab.config import config_to_dict
from trimtab.errors import TrimtabError
from trimtab.objectives.base import Objective
from trimtab.training.config import TrainConfig

log = logging.getLogger(__name__)


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    """Where the resumable checkpoints of a run saving to `output_dir` live (a sibling)."""
    out = Path(output_dir).resolve()
    return out.with_name(out.name + ".checkpoints")


RUN_FILE = "trimtab_run.json"
# settings that change how a run is watched or saved, not what it trains
UNFINGERPRINTED = ("resume", "progress", "logging_steps", "save_steps")


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value if isinstance(value, str | int | float | bool | type(None)) else repr(value)


def run_fingerprint(model_path: str | os.PathLike, reference_path: str | os.PathLike | None,
                    base_path: str | os.PathLike | None, objective: Objective,
                    config: TrainConfig, features: Sequence[dict]) -> dict[str, Any]:
    """What a run trains: its models, method and settings, and a hash of its tokenized
    data. A checkpoint is resumed only by the run that wrote it."""
    def where(path: str | os.PathLike) -> str:
        return str(Path(path).resolve()) if Path(path).exists() else str(path)

    data = hashlib.sha256()
    for f in features:
        data.update(json.dumps([f["input_ids"], f["labels"]]).encode())
    train = {k: v for k, v in config_to_dict(config).items() if k not in UNFINGERPRINTED}
    files = {str(f): hashlib.sha256(Path(f).read_bytes()).hexdigest()[:16]
             for f in objective.input_files() if Path(f).is_file()}
    return {"model": where(model_path), "reference": where(reference_path or model_path),
            "base": where(base_path) if base_path is not None else None,
            "method": objective.name, "method_config": _plain(objective.config),
            "train": train, "data": data.hexdigest()[:16],
            **({"input_files": files} if files else {})}


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} -> {b!r}" if key != "data" else "the data")
    return out


def prepare_checkpoints(folder: Path, fingerprint: dict[str, Any], resume: bool) -> Path | None:
    """The checkpoint to resume from, if any, after checking it is this run's.

    Checkpoints of another run (other data, method or settings) are refused: resuming them
    would silently train the wrong model. Without `resume` an earlier run's checkpoints are
    removed, so they cannot mix with this run's. The main process records the fingerprint.
    """
    from trimtab.evaluation.results import write_json_atomic

    main = os.environ.get("RANK", "0") == "0"  # set by accelerate / torchrun
    latest = latest_checkpoint(folder) if resume else None
    if latest is not None:
        stored = folder / RUN_FILE
        try:
            previous = json.loads(stored.read_text())
        except (OSError, ValueError):
            previous = None
        compared = fingerprint
        if isinstance(previous, dict) and "input_files" not in previous \
                and "input_files" in fingerprint:  # written before files were hashed
            log.warning("%s: its checkpoints predate input-file hashes, so %s cannot be "
                        "checked against them; resuming anyway.", folder,
                        ", ".join(fingerprint["input_files"]))
            compared = {k: v for k, v in fingerprint.items() if k != "input_files"}
        if previous != compared:
            what = ("it records no run" if previous is None
                    else "; ".join(_differences(previous, compared)[:6]))
            raise TrimtabError(
                f"{folder} holds checkpoints of another run ({what}); resuming them would "
                f"train the wrong model. Delete {folder}, or pass --no-resume (resume: false) "
                "to start this run over.")
    elif main and folder.exists():
        shutil.rmtree(folder)
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / RUN_FILE, fingerprint)
    return latest


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` that was written completely (its trainer state comes last)."""
    try:  # another process may be clearing an earlier run's folder (`prepare_checkpoints`)
        done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").exists()
                and p.name.split("-")[-1].isdigit()]
    except FileNotFoundError:
        return None
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)
