"""Where trimtab keeps what it builds: `$TRIMTAB_CACHE`, else `$XDG_CACHE_HOME/trimtab`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    env = os.environ.get("TRIMTAB_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "trimtab"


def config_key(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable config parts: the cache key."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
