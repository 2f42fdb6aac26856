"""The cache records of towers that run without open_clip: where they live, what keys them,
and when they stop applying. Torch-free.

A record is a small JSON file under ``$XDG_CACHE_HOME/clipsearch/<kind>/`` (``text-towers``
for the NumPy text tower, ``image-towers`` for the torch image tower), named by a digest of
the model's identity key and of where its weights come from (the weights file of a local
checkpoint; the Hugging Face cache of a pretrained tag or hub model, so that two caches with
different files under one tag never share a record). It names the weights file the tower
reads (the checkpoint itself where it holds the tower exactly, else a float32 copy beside the
record) with the ``stat`` that says it is unchanged, the checkpoint whose checksum is the
identity, and for a hub snapshot the ref that must still name it. :func:`read_record` gives a
record back only while all of that holds; ``random`` weights are never recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from clipsearch.models.identity import (
    ModelIdentity,
    ModelSpec,
    cache_home,
    hf_cache_dir,
    weights_file,
)
from clipsearch.store.fileio import atomic_write


def cache_root(kind: str) -> Path:
    """Where the records of one kind of tower live: ``$XDG_CACHE_HOME/clipsearch/<kind>``."""
    return cache_home() / kind


def record_path(
    spec: ModelSpec, identity_key: str, kind: str, cache_dir: str | None = None
) -> Path:
    """The record of a model: keyed by its identity and by where its weights come from."""
    source = weights_file(spec)
    if source is None:
        source = hf_cache_dir(cache_dir)
    digest = hashlib.sha256(f"{identity_key}\n{source}".encode()).hexdigest()[:32]
    return cache_root(kind) / f"{digest}.json"


def file_stat(path: str | os.PathLike[str]) -> list[int]:
    """What says a file is unchanged: device, inode, size, modification and change times."""
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def read_record(
    spec: ModelSpec, key: str, kind: str, version: int, cache_dir: str | None = None
) -> dict[str, Any] | None:
    """The record of the model with this identity key if it is valid now, else None."""
    if spec.random_weights:
        return None
    try:
        record = json.loads(record_path(spec, key, kind, cache_dir).read_text())
        if record.get("version") != version or record["identity"].get("key") != key:
            return None
        for file_key, stat_key in (("weights", "weights_stat"), ("source", "source_stat")):
            if record.get(file_key) and file_stat(record[file_key]) != record[stat_key]:
                return None
        ref = record.get("hub_ref")  # a hub snapshot: still the one the cache resolves to?
        if ref and Path(ref[0]).read_text().strip() != ref[1]:
            return None
        return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None


def write_record(
    path: Path,
    spec: ModelSpec,
    identity: ModelIdentity,
    version: int,
    weights: str,
    **extra: Any,
) -> None:
    """Write a record: the identity, the weights file the tower reads and the checkpoint
    whose checksum is the identity (both with their ``stat``), the hub ref, and ``extra``."""
    source = weights_file(spec)
    record = {
        "version": version,
        "identity": {**identity.to_dict(), "key": identity.key},
        "weights": weights,
        "weights_stat": file_stat(weights),
        # For a local checkpoint, the file whose checksum is the identity: it must not change.
        "source": source,
        "source_stat": file_stat(source) if source else None,
        "hub_ref": hub_ref(weights),
        **extra,
    }
    atomic_write(path, json.dumps(record, indent=1).encode(), durable=False)


def hub_ref(path: str) -> list[str] | None:
    """For a file in a Hugging Face cache snapshot (``models--org--name/snapshots/REV/...``):
    the ref file that names the snapshot in use and its content, so that a record stops
    applying once the cache moves to a newer revision."""
    parts = Path(path).parts
    if "snapshots" not in parts:
        return None
    at = len(parts) - 1 - parts[::-1].index("snapshots")
    if at + 1 >= len(parts) or not parts[at - 1].startswith("models--"):
        return None
    ref = Path(*parts[:at]) / "refs" / "main"
    with contextlib.suppress(OSError):
        if ref.read_text().strip() == parts[at + 1]:
            return [str(ref), parts[at + 1]]
    return None
