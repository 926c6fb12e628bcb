"""Where a job's model comes from: a folder, or a Hugging Face hub id resolved to its snapshot in the local
cache at submit (never downloaded: the daemon may run where the user's shell settings are not)."""

from __future__ import annotations

import re
from pathlib import Path


def hub_snapshot(repo_id: str, revision: str | None = None) -> str | None:
    """The local snapshot folder of a hub model (HF_HUB_CACHE, else HF_HOME/hub), without the network;
    None when it is not in the cache (or not a valid repo id)."""
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, an incomplete snapshot, an invalid id: not usable offline
        return None


def hub_cache() -> str:
    """Where hub models are looked for (HF_HUB_CACHE; its default is HF_HOME/hub)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


SNAPSHOT = re.compile(r"/models--(?P<org>[^/]+?)(?:--(?P<name>[^/]+))?/snapshots/[^/]+/?$")


def hub_id_of(model: str) -> str | None:
    """The hub id a snapshot folder was resolved from (`.../models--org--name/snapshots/REV`), else None."""
    match = SNAPSHOT.search(model)
    if match is None:
        return None
    return f"{match['org']}/{match['name']}" if match["name"] else match["org"]


def looks_like_path(name: str) -> bool:
    """A hub id is `name` or `org/name`; anything else is meant as a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def model_outside_job_folder(model: str, job_file: str | Path) -> bool:
    """A model folder that is not inside the job file's folder: accepted, but logged and shown by `mtld show`.
    A hub id's snapshot folder is not such a folder."""
    path = Path(model)
    if not path.is_absolute() or hub_id_of(model):  # a hub id, as given or resolved
        return False
    return not path.resolve().is_relative_to(Path(job_file).resolve().parent)


def is_hub_id(name: str) -> bool:
    return not Path(name).is_absolute() and not looks_like_path(name)
