"""Search results as a folder of symbolic links, named by rank, for any image viewer to browse.

The folder holds nothing but the links and a hidden record of their names
(:data:`RECORD_NAME`). A later call replaces the links that the record names and nothing else:
it refuses a folder that holds anything clipsearch did not put there, and never deletes or
overwrites a real file.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clipsearch.errors import LinkFolderError
from clipsearch.store.fileio import atomic_write

RECORD_NAME = ".clipsearch-links"
"""The hidden file that names the links clipsearch made in a folder."""

_MAX_STEM = 100  # characters kept of a file's stem: names stay far below 255 bytes
# Characters that Windows, macOS (HFS+/APFS), FAT and SMB shares reject or treat specially.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')


@dataclass(frozen=True)
class LinkReport:
    """What :func:`link_results` did."""

    folder: Path
    links: tuple[str, ...]  # the new link names, best result first
    removed: int  # links of an earlier call that were replaced


def link_name(rank: int, path: str | os.PathLike[str], width: int = 3) -> str:
    """The link name of the result at ``rank`` (1 for the best): ``001-beach.jpg``.

    The rank keeps names unique and in order; the rest is the file's name made safe on every
    filesystem (no separators, control or reserved characters, no trailing dots or spaces,
    NFC, at most ``_MAX_STEM`` characters of stem), with its extension kept.
    """
    name = os.path.basename(os.fsdecode(path))
    stem, ext = os.path.splitext(name)
    stem = _safe(stem)[:_MAX_STEM].rstrip(". ") or "image"
    ext = _safe(ext)[:16].rstrip(". ")
    ext = ext if len(ext) > 1 else ""
    return f"{rank:0{width}d}-{stem}{ext}"


def _safe(text: str) -> str:
    # Undecodable bytes arrive as lone surrogates (surrogateescape): no filesystem takes them.
    text = text.encode("utf-8", "replace").decode("utf-8").replace("\ufffd", "_")
    return _UNSAFE.sub("_", unicodedata.normalize("NFC", text))


def link_results(
    paths: Sequence[str | os.PathLike[str]], folder: str | os.PathLike[str]
) -> LinkReport:
    """Fill ``folder`` with symbolic links to ``paths``, named by rank (:func:`link_name`).

    Creates the folder if missing. In a folder that holds links of an earlier call, those are
    replaced (a second search refreshes the folder). Link targets are absolute.

    Args:
        paths: the result files, best first.
        folder: where the links go.

    Returns:
        A :class:`LinkReport`.

    Raises:
        LinkFolderError: ``folder`` is not a folder, holds anything other than links that
            clipsearch made there, or a link cannot be made (the message says why).
    """
    folder = Path(folder).expanduser()
    old = _own_links(folder)
    width = max(3, len(str(len(paths))))
    names = [link_name(rank, p, width) for rank, p in enumerate(paths, 1)]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Record old and new names before touching either: after a crash at any point, every
        # link in the folder is still one the record names, so the next call can replace it.
        _write_record(folder, sorted(set(old) | set(names)))
        removed = _remove_links(folder, old)
        for name, target in zip(names, paths, strict=True):
            os.symlink(os.path.abspath(os.fsdecode(target)), folder / name)
        _write_record(folder, names)
    except FileExistsError as e:
        raise LinkFolderError(f"{folder}: {e.filename} exists and is not clipsearch's link") from e
    except OSError as e:
        raise LinkFolderError(f"{folder}: cannot make the result links: {e.strerror or e}") from e
    return LinkReport(folder, tuple(names), removed)


def check_link_folder(folder: str | os.PathLike[str]) -> None:
    """Raise :class:`LinkFolderError` now if :func:`link_results` would refuse ``folder``:
    for callers that would rather learn it before a search than after."""
    _own_links(Path(folder).expanduser())


def _own_links(folder: Path) -> list[str]:
    """The names of clipsearch's links in ``folder``; refuses a folder that holds anything else."""
    if not folder.exists() and not folder.is_symlink():
        return []
    if not folder.is_dir():
        raise LinkFolderError(f"{folder} is not a folder; give a new or empty folder for the links")
    recorded = set(_read_record(folder))
    try:
        entries = sorted(os.listdir(folder))
    except OSError as e:
        raise LinkFolderError(f"{folder}: cannot list it: {e.strerror or e}") from e
    foreign = [
        n
        for n in entries
        if n != RECORD_NAME and not (n in recorded and os.path.islink(folder / n))
    ]
    if foreign:
        raise LinkFolderError(
            f"{folder} holds files clipsearch did not put there ({foreign[0]!s}"
            f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}); "
            "give a new or empty folder for the links"
        )
    return [n for n in entries if n != RECORD_NAME]


def _remove_links(folder: Path, names: list[str]) -> int:
    removed = 0
    for name in names:
        path = folder / name
        if os.path.islink(path):  # checked again just before: never unlink a real file
            path.unlink()
            removed += 1
    return removed


def _read_record(folder: Path) -> list[str]:
    try:
        data = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
        return [str(n) for n in data["links"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LinkFolderError(
            f"{folder / RECORD_NAME} is unreadable ({e}); give a new or empty folder for the links"
        ) from e


def _write_record(folder: Path, names: list[str]) -> None:
    data = {"made_by": "clipsearch", "links": names}
    atomic_write(folder / RECORD_NAME, json.dumps(data, indent=1).encode(), durable=False)
