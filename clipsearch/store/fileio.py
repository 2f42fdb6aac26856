"""Writing a file so that readers see the old content or the new, never a part of it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` through a temp file in the same folder and a rename.

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
