"""Where trimtab keeps what it builds: `$TRIMTAB_CACHE`, else `$XDG_CACHE_HOME/trimtab`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """The cache folder; one that cannot be a folder (a file, or under one) is a user error
    here, before minutes of work that would then fail to be kept."""
    from trimtab.errors import TrimtabError

    env = os.environ.get("TRIMTAB_CACHE")
    if env:
        root = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(xdg) / "trimtab"
    blocker = next((p for p in (root, *root.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        where = "$TRIMTAB_CACHE" if env else "the cache folder"
        what = "a file" if blocker == root else f"under the file {blocker}"
        raise TrimtabError(f"{where} {root} is {what}; point TRIMTAB_CACHE at a folder.")
    return root


def artifacts_root() -> Path:
    """Where objectives cache what they build (probes, token sets, signals): `finetune` hands
    it to them, and benchmarks that build the same artifacts outside training read it too."""
    return cache_root() / "artifacts"


def config_key(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable config parts: the cache key."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
