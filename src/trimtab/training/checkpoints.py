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


# Files above this are hashed by their size and three samples of SAMPLE_BYTES (start, middle,
# end), not read whole: a judge's weights can be gigabytes, and every rank hashes at every
# start. Sampled, not timestamped, so a copy of the same judge (another node's) matches.
HASH_MAX_BYTES = 256 * 2**20
SAMPLE_BYTES = 4 * 2**20


def _folder_files(root: Path) -> list[Path]:
    """Every file under `root`, through symlinked folders (once each), skipping hidden entries:
    `.git`, `.cache/huggingface` download metadata and the like change without the judge."""
    def unreadable(err: OSError) -> None:  # else os.walk leaves the folder out, silently
        raise err

    out, seen = [], set()
    for folder, dirs, names in os.walk(root, onerror=unreadable, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symlink loop, or a folder linked twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(folder, n) for n in sorted(names) if not n.startswith(".")]
    return [f for f in out if f.is_file()]


def file_digest(path: Path) -> str:
    """A short content hash of `path` ("missing" when nothing is there, as for a hub name);
    of a folder, the hash of every file's name and digest under it, so a file added, removed
    or changed anywhere inside changes it."""
    if not path.exists():
        return "missing"
    if path.is_dir():
        listing = [f"{f.relative_to(path).as_posix()} {file_digest(f)}"
                   for f in _folder_files(path)]
        return hashlib.sha256("\n".join(listing).encode()).hexdigest()[:16]
    size = path.stat().st_size
    digest = hashlib.sha256()  # of the contents alone below the limit, as recorded before
    try:
        with path.open("rb") as f:
            if size <= HASH_MAX_BYTES:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            else:
                digest.update(f"{size} bytes, sampled".encode())
                for start in (0, (size - SAMPLE_BYTES) // 2, size - SAMPLE_BYTES):
                    f.seek(start)
                    digest.update(f.read(SAMPLE_BYTES))
    except OSError as err:  # a read error carries no file name: give it one
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    return digest.hexdigest()[:16]


def _input_digest(path: Path) -> str:
    """`file_digest` of a file the method reads, with an error that names it: a file that
    cannot be read here would otherwise stop the run with a bare OSError."""
    try:
        return file_digest(path)
    except OSError as err:
        inside = "" if err.filename in (None, str(path)) else f" (in {path})"
        raise TrimtabError(
            f"cannot read {err.filename or path}{inside}: {err.strerror or err}. It is an input "
            "of the method, which a run with checkpoints hashes so that a resume notices a "
            "change. Make it readable, or point the method at a copy that is.") from err


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
    files = {str(f): _input_digest(Path(f)) for f in objective.input_files()}
    return {"model": where(model_path), "reference": where(reference_path or model_path),
            "base": where(base_path) if base_path is not None else None,
            "method": objective.name, "method_config": _plain(objective.config),
            "train": train, "data": data.hexdigest()[:16],
            **({"input_files": files} if files else {})}


_NOT_A_SETTING = object()


def setting_defaults(objective: Objective) -> dict[str, Any]:
    """The defaults of the settings a fingerprint records, shaped like it (a composite's
    method config by part), for `prepare_checkpoints`."""
    parts = getattr(objective, "parts", None)
    method = ({p.name: _plain(p.config_class()) for p in parts} if parts is not None
              else _plain(objective.config_class()))
    return {"method_config": method, "train": config_to_dict(TrainConfig())}


def _without_new_defaults(old: dict[str, Any], new: dict[str, Any],
                          defaults: dict[str, Any]) -> dict[str, Any]:
    """`new` less the settings `old` never recorded that sit at their defaults: a setting
    added to trimtab after the checkpoints were written (pact's mass_positions, 2026-11-24)
    changes nothing there, so it does not refuse the resume. Set to anything else, it does."""
    out = {}
    for key, value in new.items():
        default = defaults.get(key, _NOT_A_SETTING)
        if key not in old and value == default:
            continue
        if isinstance(value, dict) and isinstance(old.get(key), dict) and isinstance(default,
                                                                                     dict):
            value = _without_new_defaults(old[key], value, default)
        out[key] = value
    return out


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} -> {b!r}" if key != "data" else "the data")
    return out


def _without_unrecorded_files(folder: Path, previous: dict[str, Any],
                              fingerprint: dict[str, Any]) -> dict[str, Any]:
    """`fingerprint` less the input files `previous` has no hash of: checkpoints written
    before those were hashed (a token file or probe before 2026-11-23, a signal's folder
    before 2026-11-24) resume with a warning instead of being refused. A recorded file that
    changed, or went missing, still counts."""
    recorded = previous.get("input_files") or {}
    files = fingerprint.get("input_files") or {}
    unrecorded = [f for f in files if f not in recorded]
    if not unrecorded:
        return fingerprint
    log.warning("%s: its checkpoints predate hashes of %s, so they cannot be checked against "
                "them; resuming anyway.", folder, ", ".join(unrecorded))
    kept = {f: h for f, h in files.items() if f in recorded}
    out = {k: v for k, v in fingerprint.items() if k != "input_files"}
    return {**out, "input_files": kept} if kept else out


def prepare_checkpoints(folder: Path, fingerprint: dict[str, Any], resume: bool,
                        defaults: dict[str, Any] | None = None) -> Path | None:
    """The checkpoint to resume from, if any, after checking it is this run's.

    Checkpoints of another run (other data, method or settings) are refused: resuming them
    would silently train the wrong model. Without `resume` an earlier run's checkpoints are
    removed, so they cannot mix with this run's. The main process records the fingerprint.
    `defaults` (`setting_defaults`) lets settings newer than the checkpoints sit at their
    defaults without refusing them.
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
        if isinstance(previous, dict):
            compared = _without_unrecorded_files(folder, previous, fingerprint)
            compared = _without_new_defaults(previous, compared, defaults or {})
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
