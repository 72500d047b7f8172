"""Data files from the Hugging Face Hub, named the way `huggingface_hub` names them.

`hf://datasets/OWNER/NAME[@REVISION]/PATH/IN/REPO` (REVISION a branch, tag or commit
without "/") is fetched with `hf_hub_download` (into
the usual HF cache; `HF_HUB_OFFLINE=1` reads the cache only) and then read by the same loaders
as a local file, so a field mapping works the same on both. Anything else is a local path.
"""

from __future__ import annotations

import os
from pathlib import Path

from trimtab.errors import TrimtabError

PREFIX = "hf://datasets/"


def is_hub_path(path: str | os.PathLike[str]) -> bool:
    return str(path).startswith(PREFIX)


def parse_hub_path(url: str) -> tuple[str, str | None, str]:
    """`hf://datasets/o/n@rev/a/b.csv` -> (`o/n`, `rev`, `a/b.csv`)."""
    parts = url[len(PREFIX):].split("/")
    if len(parts) < 3 or not all(parts[:3]):
        raise TrimtabError(f"{url!r} is not a Hub data file; write hf://datasets/OWNER/NAME/FILE "
                           "(optionally NAME@REVISION), e.g. hf://datasets/owner/advbench/"
                           "harmful_behaviors.csv.")
    name, _, revision = parts[1].partition("@")
    return f"{parts[0]}/{name}", revision or None, "/".join(parts[2:])


def hub_file(url: str) -> Path:
    """The local path of a Hub dataset file, downloaded once into the HF cache."""
    repo_id, revision, filename = parse_hub_path(url)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision))
    except LocalEntryNotFoundError as err:
        raise TrimtabError(f"{url}: not in the Hugging Face cache and the Hub cannot be reached "
                           f"(offline, or HF_HUB_OFFLINE=1). Download the file on a machine "
                           f"with internet, or pass a local copy instead. ({err})") from None
    except EntryNotFoundError:
        raise TrimtabError(f"{url}: the dataset {repo_id} has no file {filename!r}; check the "
                           "path inside the repository.") from None
    except OSError as err:  # RepositoryNotFoundError, HTTP errors and the like
        raise TrimtabError(f"{url}: cannot fetch it from the Hugging Face Hub: {err}") from None
