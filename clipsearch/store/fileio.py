"""Writing a file so that readers see the old content or the new, never a part of it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe later.
_UMASK = _process_umask()


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` through a temp file in the same folder and a rename.

    The file gets the permissions a plain ``open(path, "wb")`` would give it (0o666 less the
    umask), not the owner-only ones of the temp file behind it.

    Args:
        path: the file to write; its folder must exist.
        data: the whole new content.
        durable: also fsync the file and the folder, so that the new content survives a power
            cut once this returns (index files); caches can skip it.

    Raises:
        OSError: the temp file could not be made or written (nothing is left behind) or the
            rename failed; the old file is untouched either way.
    """
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
