"""atomic_write: whole files only, and the permissions an ordinary write would give."""

from __future__ import annotations

import os
import stat

import pytest

from clipsearch.store.fileio import atomic_write


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("durable", [True, False])
def test_written_file_has_the_modes_of_a_plain_write(tmp_path, durable):
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    path = tmp_path / "atomic"
    atomic_write(path, b"new content", durable=durable)
    assert path.read_bytes() == b"new content"
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic", "plain"]  # no temp left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "f"
    atomic_write(path, b"old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
