"""Reliability: bad input never stops a run and is always explained; a damaged index is
detected and repaired; every input is validated with a clear error.

The crash, concurrency and locking tests, which need other processes, are in
test_reliability_processes.py.
"""

from __future__ import annotations

import functools
import io
import json
import os
import sqlite3
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

import clipsearch.index.pipeline as indexer_mod
from clipsearch import ClipsearchError, CorruptIndexError, ImageIndex, Query, QueryError, Term
from clipsearch.cli.main import main
from clipsearch.index.query import MAX_QUERY_CHARS, path_filter
from clipsearch.store.catalog import CATALOG_FILE, Catalog
from clipsearch.store.repair import quick_check
from clipsearch.store.vectors import INDEX_FILE, STATE_FILE, VectorIndex
from tests.helpers import WriteCrash, crashing_writer, draw_image, stored_for_orientation

PR_CAPBSET_DROP = 24  # from <linux/prctl.h>
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2

# --- helpers -------------------------------------------------------------------------------


def picture(seed: int = 0, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A small picture, different for every seed."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(c) for c in rng.integers(150, 256, 3)))
    d = ImageDraw.Draw(img)
    w, h = size
    d.rectangle((2, 2, w // 2, h // 3), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    d.ellipse((w // 2, h // 2, w - 2, h - 2), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def bomb_png(w: int = 100_000, h: int = 100_000) -> bytes:
    """A 100-byte PNG that declares w x h pixels."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def bomb_gif(w: int = 65535, h: int = 65535) -> bytes:
    """A GIF header (and one tiny frame) declaring w x h pixels."""
    frame = b"\x2c" + struct.pack("<HHHH", 0, 0, w, h) + b"\x00\x02\x02\x44\x01\x00"
    return b"GIF89a" + struct.pack("<HH", w, h) + b"\x00\x00\x00" + frame + b"\x3b"


def with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """A JPEG with an extra APP1 (EXIF) segment right after its start marker."""
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def animation(fmt: str) -> bytes:
    frames = [picture(40 + i) for i in range(3)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _without_dac_override() -> None:
    """In a child before exec: give up root's power to ignore permission bits."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@functools.cache
def permission_mode() -> str | None:
    """How these tests can make a file unreadable to the indexer.

    "chmod" when they do not run as root. Root reads files whatever their permission bits,
    so as root, "capabilities": the indexer runs in a subprocess that has dropped the
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH capabilities (it stays root, so it can still run
    the Python under /root). None when neither works.
    """
    if os.geteuid() != 0:
        return "chmod"
    with tempfile.TemporaryDirectory() as tmp:
        secret = Path(tmp) / "secret"
        secret.write_text("x")
        secret.chmod(0)
        try:
            run = subprocess.run(
                [sys.executable, "-c", f"open({str(secret)!r}).read()"],
                preexec_fn=_without_dac_override,
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.SubprocessError):
            return None
    return "capabilities" if b"PermissionError" in run.stderr else None


def cli(*args, index_dir: Path | None = None):
    prefix = ["--index", str(index_dir)] if index_dir else []
    return CliRunner().invoke(main, [*prefix, *map(str, args)], catch_exceptions=False)


def catalog_paths(index: ImageIndex) -> list[str]:
    return sorted(r.path for r in index.catalog.images(index.catalog.ids().tolist()).values())


def assert_consistent(path: Path) -> None:
    """The catalog and the FAISS index hold the same ids, and no path appears twice."""
    with ImageIndex.open(path) as index:
        assert quick_check(index.catalog) == "ok"
        ids = index.catalog.ids()
        assert sorted(index.vectors.ids().tolist()) == sorted(ids.tolist())
        paths = catalog_paths(index)
        assert len(paths) == len(set(paths))


# --- the bad-input corpus ------------------------------------------------------------------


def build_corpus(root: Path, deny: bool) -> tuple[set[str], dict[str, str]]:
    """Write a messy photo folder. Returns the paths that must be indexed and, for each path
    that must be recorded as an error, a part of the expected reason."""
    root.mkdir(parents=True)
    good: set[str] = set()
    bad: dict[str, str] = {}

    def put(name: str | bytes, data: bytes, expect: str | None = None) -> str:
        path = os.path.join(os.fsencode(root), os.fsencode(name))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        p = os.fsdecode(path)
        if expect is None:
            good.add(p)
        else:
            bad[p] = expect
        return p

    jpeg = encode(picture(1, (64, 48)), "JPEG", quality=90)
    png = encode(picture(2, (64, 48)), "PNG")
    # Good files, in every mode and shape a camera, phone or editor writes.
    put("photo.jpg", jpeg)
    put("photo.png", png)
    put("photo.webp", encode(picture(3), "WEBP"))
    put("one_pixel.png", encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"))
    put("cmyk.jpg", encode(picture(4).convert("CMYK"), "JPEG"))
    gray16 = (np.arange(48 * 40, dtype=np.uint16).reshape(40, 48) * 33).astype(np.uint16)
    put("gray16.png", encode(Image.fromarray(gray16), "PNG"))
    la = picture(5).convert("LA")
    la.putalpha(Image.linear_gradient("L").resize(la.size))
    put("la.png", encode(la, "PNG"))
    pal = picture(6).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    put("p_transparent.png", encode(pal, "PNG", transparency=0))
    put("p_alpha.png", encode(pal, "PNG", transparency=bytes(range(0, 256, 16))))
    put("animated.gif", animation("GIF"))
    put("animated.webp", animation("WEBP"))
    put(
        "exif_rotated.jpg",
        encode(picture(7).transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif_bytes(6)),
    )
    put("exif_orientation_9.jpg", encode(picture(8), "JPEG", exif=exif_bytes(9)))
    put("corrupt_exif.jpg", with_app1(jpeg, b"Exif\x00\x00" + b"\x13\x37" * 20))
    put("exif_bad_offset.jpg", with_app1(jpeg, b"Exif\x00\x00II*\x00" + b"\xf0\xff\xff\xff"))
    put("n" * 251 + ".png", encode(picture(9), "PNG"))  # 255 bytes: the longest name allowed
    put("é" * 125 + ".jpg", encode(picture(10), "JPEG"))  # 254 bytes of UTF-8
    put(b"caf\xe9.png", encode(picture(11), "PNG"))  # Latin-1 name: not UTF-8
    put(b"d\xfcr/inner.png", encode(picture(12), "PNG"))  # a folder whose name is not UTF-8
    put("new\nline.png", encode(picture(13), "PNG"))
    os.symlink("photo.jpg", root / "link_to_photo.jpg")
    good.add(str(root / "link_to_photo.jpg"))
    os.symlink(".", root / "loop_dir")  # links to folders are not followed: no endless walk
    os.mkfifo(root / "pipe.jpg")  # not a regular file: skipped, and the run must not block

    # Bad files, each with the reason it must be recorded with.
    put("empty.jpg", b"", "empty file (0 bytes)")
    put("truncated.jpg", jpeg[: len(jpeg) * 2 // 3], "truncated image data")
    put("truncated_header.jpg", jpeg[:20], "truncated or corrupt JPEG header")
    put("truncated.png", png[: len(png) // 2], "truncated image data")
    put("truncated_header.png", png[:30], "truncated or corrupt PNG header")
    put("text.jpg", b"these are my holiday notes, not a photo\n", "not an image (a text file)")
    put("page.png", b"<!DOCTYPE html><html><body>404</body></html>", "not an image (an HTML page)")
    put("bomb.png", bomb_png(), "decompression bomb refused")
    put("bomb.gif", bomb_gif(), "decompression bomb refused")
    put(b"bad\xff.jpg", b"plain text under a name that is not UTF-8", "not an image (a text file)")
    os.symlink("nowhere.jpg", root / "broken_link.jpg")
    bad[str(root / "broken_link.jpg")] = "broken symbolic link"
    os.symlink("loop_b.jpg", root / "loop_a.jpg")
    os.symlink("loop_a.jpg", root / "loop_b.jpg")
    bad[str(root / "loop_a.jpg")] = bad[str(root / "loop_b.jpg")] = "symlink loop"
    bad[_deep_tree(root)] = "folder not readable: File name too long"
    if deny:
        put("unreadable.jpg", jpeg, "permission denied")
        os.chmod(root / "unreadable.jpg", 0)
        put("locked/inside.png", png)
        good.discard(str(root / "locked" / "inside.png"))
        os.chmod(root / "locked", 0)
        bad[str(root / "locked")] = "folder not readable: Permission denied"
    return good, bad


def _deep_tree(root: Path) -> str:
    """Nest folders until the path is longer than PATH_MAX, a photo at the bottom; returns
    the first folder the walk cannot list."""
    fd = os.open(root, os.O_RDONLY)
    path = str(root)
    first_too_long = None
    try:
        for _ in range(25):
            name = "d" * 200
            os.mkdir(name, dir_fd=fd)
            new = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
            path = os.path.join(path, name)
            if first_too_long is None and len(os.fsencode(path)) >= os.pathconf("/", "PC_PATH_MAX"):
                first_too_long = path
        out = os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, encode(picture(14), "PNG"))
        os.close(out)
    finally:
        os.close(fd)
    assert first_too_long is not None
    return first_too_long


@pytest.mark.slow
def test_bad_input_never_stops_a_run_and_is_always_explained(tmp_path, tiny_model):
    mode = permission_mode()
    corpus = tmp_path / "corpus"
    good, bad = build_corpus(corpus, deny=mode is not None)
    index_dir = tmp_path / "index"
    args = ["--index", index_dir, "index", corpus, "--model", tiny_model, "--batch-size", "4"]
    run = subprocess.run(
        [sys.executable, "-m", "clipsearch.cli.main", *map(str, args), "--json"],
        capture_output=True,
        timeout=300,
        preexec_fn=_without_dac_override if mode == "capabilities" else None,
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    summary = json.loads(run.stdout)
    assert (summary["added"], summary["failed"]) == (len(good), len(bad)), summary

    errors = json.loads(cli("errors", "--json", index_dir=index_dir).stdout_bytes)
    reasons = {e["path"]: e["reason"] for e in errors}
    assert set(reasons) == set(bad)
    for path, expected in bad.items():
        assert expected in reasons[path], (path, reasons[path])
    with ImageIndex.open(index_dir) as index:
        assert catalog_paths(index) == sorted(good)
    assert_consistent(index_dir)

    # Names that are not UTF-8 print as their bytes on disk, and as JSON that Python reads
    # back into the same path.
    text = cli("errors", index_dir=index_dir)
    assert text.exit_code == 0
    assert os.fsencode(corpus) + b"/bad\xff.jpg: not an image" in text.stdout_bytes
    found = cli("search", "a photo", "-k", "100", "--json", index_dir=index_dir)
    assert found.exit_code == 0
    assert found.stdout_bytes.isascii()
    hits = {h["path"] for h in json.loads(found.stdout_bytes)}
    assert hits == good
    assert all(os.path.lexists(os.fsencode(p)) for p in hits)
    plain = cli("search", "a photo", "-k", "100", index_dir=index_dir)
    assert os.fsencode(corpus) + b"/caf\xe9.png" in plain.stdout_bytes


def test_unreadable_files_and_folders_are_covered():
    if permission_mode() is None:
        pytest.skip(
            "tests run as root, which reads files whatever their permission bits, and cannot "
            "drop CAP_DAC_OVERRIDE in a subprocess: unreadable files and folders not covered"
        )


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientations_give_the_upright_embedding(tmp_path, tiny_model, orientation):
    """Through the real indexer and the tiny model: an EXIF-rotated JPEG gets the embedding
    of the upright picture, while the same pixels without the tag do not."""
    upright = Image.new("RGB", (96, 64), (255, 255, 255))
    d = ImageDraw.Draw(upright)
    d.rectangle((4, 4, 40, 24), fill=(220, 30, 30))
    d.ellipse((50, 30, 92, 60), fill=(30, 60, 220))
    d.polygon([(8, 60), (30, 34), (44, 60)], fill=(30, 160, 60))
    stored = stored_for_orientation(upright, orientation)
    photos = tmp_path / "photos"
    photos.mkdir()
    upright.save(photos / "upright.jpg", quality=95)
    stored.save(photos / "tagged.jpg", quality=95, exif=exif_bytes(orientation))
    stored.save(photos / "untagged.jpg", quality=95)
    with ImageIndex.open_or_create(tmp_path / "idx", model=tiny_model, device="cpu") as index:
        assert index.add([photos]).added == 3
        vec = {}
        for rec in index.catalog.images(index.catalog.ids().tolist()).values():
            vec[Path(rec.path).stem] = index.catalog.vector(rec.id)
            if Path(rec.path).name == "tagged.jpg":
                assert (rec.width, rec.height) == (96, 64)
    assert float(vec["upright"] @ vec["tagged"]) > 0.9995
    if orientation != 1:  # the check can tell: ignoring the tag moves the vector
        assert float(vec["upright"] @ vec["untagged"]) < 0.999


# --- files that change while a run is in progress ------------------------------------------


@pytest.fixture
def index(tmp_path, tiny_model):
    with ImageIndex.open_or_create(tmp_path / "idx", model=tiny_model, device="cpu") as idx:
        yield idx


def test_files_deleted_or_rewritten_during_a_run(index, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    for i in range(8):
        draw_image(photos / f"p{i}.png", ["red", "green", "blue", "yellow"][i % 4], size=40 + i)
    real_read = indexer_mod.read_file
    new_content = encode(picture(99, (50, 50)), "PNG")

    def read_and_meddle(path, *a, **k):
        name = os.path.basename(path)
        if name == "p2.png":
            (photos / "p3.png").unlink()  # deleted after the walk listed it
        if name == "p4.png":
            (photos / "p5.png").write_bytes(new_content)  # rewritten after the walk
        if name == "p6.png":
            (photos / "p7.png").write_bytes(b"\x89PNG\r\n")  # rewritten into a broken file
        return real_read(path, *a, **k)

    monkeypatch.setattr(indexer_mod, "read_file", read_and_meddle)
    report = index.add([photos], workers=1, batch_size=2)
    assert (report.added, report.failed) == (6, 2)
    reasons = {os.path.basename(e.path): e.reason for e in index.errors()}
    assert reasons == {
        "p3.png": "file not found (broken link or deleted)",
        "p7.png": "truncated or corrupt PNG header",
    }
    # What was stored for p5 is its new content, with the size and time of that content.
    rec = index.catalog.find_path(str(photos / "p5.png"))
    st_p5 = (photos / "p5.png").stat()
    assert (rec.size, rec.mtime_ns, rec.width) == (st_p5.st_size, st_p5.st_mtime_ns, 50)
    assert_consistent(index.path)
    monkeypatch.setattr(indexer_mod, "read_file", real_read)
    again = index.add([photos])
    assert (again.added, again.updated, again.unchanged, again.failed) == (0, 0, 6, 1)
    assert {os.path.basename(e.path) for e in index.errors()} == {"p7.png"}  # p3 is gone


def test_walk_errors_are_recorded_counted_and_cleared_when_fixed(index, tmp_path):
    photos = tmp_path / "photos"
    draw_image(photos / "ok.png")
    os.symlink("missing.png", photos / "broken.png")
    (photos / "notes.jpg").write_text("not a photo")
    result = cli("index", photos, index_dir=index.path)
    assert result.exit_code == 0
    assert "added 1, updated 0, moved 0, removed 0, unchanged 0, failed 2" in result.stdout
    assert "see `clipsearch errors`" in result.stderr
    assert {os.path.basename(e.path) for e in index.errors()} == {"broken.png", "notes.jpg"}
    draw_image(photos / "missing.png", "blue")  # the link works now
    (photos / "notes.jpg").unlink()
    report = index.add([photos])
    assert (report.added, report.failed) == (2, 0)
    assert index.errors() == []
    assert "no errors" in cli("errors", index_dir=index.path).stderr


def test_non_utf8_names_round_trip(index, tmp_path):
    """Names that are not UTF-8, in the indexed folder's own name too, are stored, found,
    filtered on and printed exactly."""
    root = tmp_path / os.fsdecode(b"f\xf6tos")
    raw = os.fsdecode(os.path.join(os.fsencode(root), b"\xff\xfe-caf\xe9.png"))
    sub = root / os.fsdecode(b"d\xfcr")
    draw_image(Path(raw), "purple")
    draw_image(root / "plain.png", "green")
    draw_image(sub / "inner.png", "blue")
    assert index.add([root]).added == 3
    again = index.add([root])
    assert (again.added, again.unchanged) == (0, 3)  # the stored names match the disk's
    hits = index.similar(raw, k=5)
    assert {h.path for h in hits} == {str(root / "plain.png"), str(sub / "inner.png")}
    assert [h.path for h in index.search("x", path_prefix=str(sub))] == [str(sub / "inner.png")]
    out = cli("similar", root / "plain.png", "--json", index_dir=index.path)
    assert out.exit_code == 0
    assert raw in {h["path"] for h in json.loads(out.stdout_bytes)}
    out = cli("search", "x", "--prefix", sub, index_dir=index.path)
    assert out.exit_code == 0 and out.stdout_bytes.count(b"\n") == 1
    assert b"  " + os.fsencode(sub / "inner.png") in out.stdout_bytes
    info = cli("info", index_dir=index.path)
    assert info.exit_code == 0 and os.fsencode(root) in info.stdout_bytes


def test_a_half_created_index_is_finished_by_the_next_run(tmp_path, tiny_model, photo_dir):
    """A run killed between creating the catalog and recording the model."""
    folder = tmp_path / "idx"
    folder.mkdir()
    Catalog.open(folder / CATALOG_FILE, create=True).close()
    result = cli("info", index_dir=folder)
    assert result.exit_code == 1 and "no finished index" in result.output
    with ImageIndex.open_or_create(folder, model=tiny_model, device="cpu") as index:
        assert index.add([photo_dir]).added == 12
    assert_consistent(folder)


# --- damaged index files -------------------------------------------------------------------


@pytest.fixture
def indexed(index, photo_dir):
    index.add([photo_dir])
    index.close()
    return index.path


def test_truncated_or_garbage_faiss_file_is_detected_and_repaired(indexed):
    faiss_file = indexed / INDEX_FILE
    good = faiss_file.read_bytes()
    for damaged in (good[: len(good) // 2], b"\0" * len(good)):
        faiss_file.write_bytes(damaged)
        with ImageIndex.open(indexed) as index, pytest.raises(CorruptIndexError) as err:
            index.search("x")
        assert "clipsearch repair" in str(err.value)
        result = cli("search", "x", index_dir=indexed)
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.output.startswith("clipsearch: error: vector index")
        result = cli("repair", index_dir=indexed)
        assert result.exit_code == 0, result.output
        assert "catalog check: ok" in result.stdout
        assert "vector file was unreadable" in result.stdout
        assert "rebuilt with 12 vectors" in result.stdout
        assert_consistent(indexed)
        assert faiss_file.read_bytes() == good  # the rebuilt file is the same index


def test_damaged_faiss_payload_is_caught_by_its_checksum(indexed, caplog):
    faiss_file = indexed / INDEX_FILE
    data = bytearray(faiss_file.read_bytes())
    data[-2048:-1024] = os.urandom(1024)  # same size, different vectors
    faiss_file.write_bytes(bytes(data))
    with ImageIndex.open(indexed) as index:
        assert index.vectors.ntotal == 12  # rebuilt from the catalog, with a warning
        for i in index.catalog.ids().tolist():
            assert np.array_equal(index.vectors.index.reconstruct(i), index.catalog.vector(i))
    assert "does not match its checksum" in caplog.text


def test_missing_or_stale_faiss_file_and_state_are_rebuilt(indexed):
    (indexed / STATE_FILE).write_text("{not json")
    with ImageIndex.open(indexed) as index:
        assert len(index.search("x", k=50)) == 12
    (indexed / INDEX_FILE).unlink()
    with ImageIndex.open(indexed) as index:
        assert len(index.search("x", k=50)) == 12
        report = index.repair()
    assert (report.vector_file, report.vectors, report.dropped) == ("missing", 12, 0)
    with ImageIndex.open(indexed) as index:
        assert index.repair().vector_file == "ok"


def test_repair_drops_images_without_a_usable_vector(indexed, photo_dir):
    with ImageIndex.open(indexed) as index:
        ids = sorted(index.catalog.ids().tolist())
        paths = {i: r.path for i, r in index.catalog.images(ids).items()}
    db = Catalog(indexed / CATALOG_FILE)
    with db.engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.exec_driver_sql(f"DELETE FROM vectors WHERE image_id = {ids[0]}")
        conn.exec_driver_sql(
            f"UPDATE vectors SET data = substr(data, 1, 100) WHERE image_id = {ids[1]}"
        )
        conn.exec_driver_sql(f"UPDATE vectors SET data = zeroblob(2048) WHERE image_id = {ids[2]}")
        conn.exec_driver_sql("INSERT INTO vectors (image_id, data) VALUES (9999, zeroblob(2048))")
    db.close()
    (indexed / INDEX_FILE).unlink()  # searches must rebuild from the damaged vectors
    with ImageIndex.open(indexed) as index, pytest.raises(CorruptIndexError, match="repair"):
        index.search("x")
    result = cli("repair", "--json", index_dir=indexed)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["missing_vectors"] == [paths[ids[0]]]
    assert report["bad_vectors"] == sorted([paths[ids[1]], paths[ids[2]]])
    assert (report["orphan_vectors"], report["vectors"], report["dropped"]) == (1, 9, 3)
    assert_consistent(indexed)
    with ImageIndex.open(indexed) as index:
        again = index.add([photo_dir])  # the dropped images are encoded again, nothing else
        assert (again.added, again.unchanged) == (3, 9)
    assert_consistent(indexed)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "header"])
def test_damaged_catalog_is_reported_clearly(indexed, damage):
    db = indexed / CATALOG_FILE
    data = db.read_bytes()
    if damage == "truncate":
        db.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        db.write_bytes(os.urandom(len(data)))
    else:
        db.write_bytes(data[:16] + b"\xff" * 84 + data[100:])
    with pytest.raises(CorruptIndexError, match="restore it from a backup"):
        ImageIndex.open(indexed).search("x")
    for command in (["info"], ["search", "x"], ["repair"], ["index", indexed.parent]):
        result = cli(*command, index_dir=indexed)
        assert result.exit_code == 1, (command, result.output)
        assert "restore it from a backup" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("damaged", ["vectors", "ix_images_sha256"])
def test_damage_inside_the_catalog_is_found_by_repair(indexed, photo_dir, damaged):
    """Damage that opening the catalog does not touch: repair's integrity check finds it, and
    a command that reads a damaged page says so instead of failing with a traceback."""
    db = indexed / CATALOG_FILE
    conn = sqlite3.connect(db)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = [n for (n,) in conn.execute("SELECT pageno FROM dbstat WHERE name = ?", [damaged])]
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat table to find the pages of a table")
    finally:
        conn.close()
    data = bytearray(db.read_bytes())
    for n in pages:
        data[(n - 1) * page_size : n * page_size] = b"\xa5" * page_size
    db.write_bytes(bytes(data))
    result = cli("repair", index_dir=indexed)
    assert result.exit_code == 1
    assert "SQLite integrity check" in result.output and "cannot be repaired" in result.output
    assert "restore it from a backup" in result.output
    image = photo_dir / "shapes" / "red_square.png"
    for command in (["search", "x"], ["similar", image], ["info"]):
        result = cli(*command, index_dir=indexed)
        assert "Traceback" not in result.output
        assert result.exit_code == 0 or "restore it from a backup" in result.output, command
    if damaged == "vectors":
        result = cli("similar", image, index_dir=indexed)
        assert result.exit_code == 1 and "is damaged" in result.output


def test_crash_during_a_save_leaves_a_usable_index(indexed, photo_dir, monkeypatch):
    """Stop save() after its first rename (FAISS file replaced, state file not), and before it
    (a temp file left behind): the next open is consistent, the next save cleans up."""
    import clipsearch.store.vectors as vectors_mod

    real = vectors_mod._atomic_write

    for allowed_writes in (0, 1):
        # Same number of images before and after: the new FAISS file has the old one's size.
        target = photo_dir / "shapes" / ["red_square.png", "green_circle.png"][allowed_writes]
        draw_image(target, "purple", "triangle", size=70)
        monkeypatch.setattr(vectors_mod, "_atomic_write", crashing_writer(real, allowed_writes))
        with ImageIndex.open(indexed) as index, pytest.raises(WriteCrash):
            index.add([photo_dir])
        monkeypatch.setattr(vectors_mod, "_atomic_write", real)
        assert_consistent(indexed)
        with ImageIndex.open(indexed) as index:
            assert index.add([photo_dir]).unchanged == 12
        assert not list(indexed.glob("*.tmp"))
        loaded, generation = VectorIndex.load(indexed, 512)
        assert loaded.ntotal == 12


# --- input validation ----------------------------------------------------------------------


weights = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-5, 10**6).map(str),
    st.from_regex(r"[+-]?[0-9]{0,3}\.?[0-9]{0,3}([eE][+-]?[0-9]{1,4})?", fullmatch=True),
)
raw_terms = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda w, sep, t: f"{w}{sep}{t}",
        weights,
        st.sampled_from([":", " : ", ":@"]),
        st.text(max_size=20),
    ),
    st.text(alphabet="@\\: 0.5e-1\t\n", max_size=12),
    st.text(min_size=MAX_QUERY_CHARS - 2, max_size=MAX_QUERY_CHARS + 2, alphabet="ab "),
    st.sampled_from(["\udcff", "a\udce9b", "\x00", "@", "\\", "2:", "0:x", "-1:x", "1e999:x"]),
)
not_strings = st.one_of(st.none(), st.integers(), st.floats(), st.binary(), st.lists(st.text()))


@given(raw_terms)
def test_term_parse_gives_a_valid_term_or_a_query_error(raw):
    try:
        term = Term.parse(raw)
    except QueryError as e:
        assert str(e)
        return
    assert term.kind in ("text", "image")
    assert np.isfinite(term.weight) and term.weight > 0
    assert term.value.strip() and len(term.value) <= MAX_QUERY_CHARS
    if term.kind == "text":
        assert term.value == " ".join(term.value.split())
        term.value.encode("utf-8")  # what the tokenizer needs


@given(
    st.one_of(raw_terms, not_strings),
    st.lists(st.one_of(raw_terms, not_strings), max_size=3),
    st.lists(st.one_of(raw_terms, not_strings), max_size=3),
)
def test_query_parse_gives_a_query_or_a_query_error(query, plus, minus):
    try:
        q = Query.parse(query, plus, minus)
    except QueryError as e:
        assert str(e)
        return
    assert any(not t.negative for t in q.terms)
    assert len(q.terms) == (query is not None) + len(plus) + len(minus)


@given(st.floats(min_value=1e-6, max_value=1e6), st.text(alphabet="abc xyz", min_size=1))
def test_a_weight_parses_back_to_itself(weight, text):
    if not text.strip():
        return
    term = Term.parse(f"{weight!r}:{text}")
    assert (term.kind, term.weight, term.value) == ("text", weight, " ".join(text.split()))


def test_a_string_given_as_plus_or_minus_is_one_term():
    q = Query.parse("beach", plus="2:sunset", minus="people")
    assert [(t.value, t.weight, t.negative) for t in q.terms] == [
        ("beach", 1.0, False),
        ("sunset", 2.0, False),
        ("people", 1.0, True),
    ]


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("-2:beach", "positive"),
        ("0:beach", "positive"),
        ("1e999:beach", "positive"),
        ("caf\udce9", "not valid text"),
        ("2:", "empty"),
        ("@", "empty"),
    ],
)
def test_invalid_terms_say_why(raw, match):
    with pytest.raises(QueryError, match=match):
        Term.parse(raw)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw_terms)
def test_searching_anything_gives_results_or_a_query_error(searchable, raw):
    try:
        hits = searchable.search(raw, k=3)
    except QueryError as e:
        assert str(e)
    else:
        assert 1 <= len(hits) <= 3


@pytest.fixture
def searchable(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("searchable")
    for i, color in enumerate(["red", "green", "blue", "yellow"]):
        draw_image(folder / "photos" / f"{color}.png", color, size=40 + i)
    with ImageIndex.open_or_create(folder / "idx", model=tiny_model, device="cpu") as idx:
        idx.add([folder / "photos"])
        yield idx


def test_path_filter_semantics(tmp_path):
    roots = [str(tmp_path / "photos")]
    (tmp_path / "photos" / "2023").mkdir(parents=True)
    assert path_filter(str(tmp_path / "photos" / "2023"), roots) == f"{tmp_path}/photos/2023"
    assert path_filter(str(tmp_path / "photos" / "20"), roots) == f"{tmp_path}/photos/20"
    assert path_filter(f"{tmp_path}/photos/2023/", roots) == f"{tmp_path}/photos/2023/"
    assert path_filter(str(tmp_path), roots) == str(tmp_path)  # above a root: all of it
    os.symlink(tmp_path / "photos", tmp_path / "link")
    assert path_filter(str(tmp_path / "link" / "2023"), roots) == f"{tmp_path}/photos/2023"
    for outside in (tmp_path / "elsewhere", tmp_path / "photos-old", Path("/etc")):
        with pytest.raises(QueryError, match="outside the indexed folders"):
            path_filter(str(outside), roots)
    with pytest.raises(QueryError, match="not a usable path"):
        path_filter("a\0b", roots)


def test_cli_path_arguments_are_checked(index, photo_dir, tmp_path, monkeypatch):
    index.add([photo_dir])
    idx = index.path
    image = photo_dir / "shapes" / "green_circle.png"
    outside = draw_image(tmp_path / "elsewhere" / "new.png", "orange", "square")
    (tmp_path / "elsewhere" / "notes.jpg").write_text("hello")
    cases = [
        (["index", photo_dir / "nope"], 2, "does not exist"),
        (["index", image], 2, "is a file"),
        (["similar", photo_dir / "nope.png"], 1, "no such file"),
        (["similar", photo_dir], 1, "is a folder"),
        (["similar", tmp_path / "elsewhere" / "notes.jpg"], 1, "not an image (a text file)"),
        (["search", "x", "--prefix", tmp_path / "elsewhere"], 1, "outside the indexed folders"),
        (["search", "caf\udce9"], 1, "not valid text"),
    ]
    for args, code, message in cases:
        result = cli(*args, index_dir=idx)
        assert result.exit_code == code, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
    assert cli("info", index_dir=image).exit_code == 2  # --index names a file
    assert "no index at" in cli("info", index_dir=tmp_path / "elsewhere").output
    # An image outside the indexed folders is encoded on the fly.
    hits = json.loads(cli("similar", outside, "-k", "50", "--json", index_dir=idx).stdout)
    assert len(hits) == 12
    # A prefix may be relative, go through a symlink, or end in the middle of a name.
    monkeypatch.chdir(photo_dir)
    os.symlink(photo_dir, tmp_path / "link")
    for prefix in ("shapes", "shapes/", str(tmp_path / "link" / "shapes"), "sha", "./more/"):
        result = cli("search", "x", "-k", "50", "--json", "--prefix", prefix, index_dir=idx)
        assert result.exit_code == 0, (prefix, result.output)
        assert len(json.loads(result.stdout)) == 6, prefix
    assert (
        json.loads(cli("search", "x", "--prefix", "shapes/zz", "--json", index_dir=idx).stdout)
        == []
    )


def test_a_full_disk_stops_the_run_clearly_and_loses_nothing(index, photo_dir):
    from sqlalchemy import event

    index.add([photo_dir / "shapes"])
    engine = index.catalog.engine
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

    def small_disk(dbapi_conn, _record):
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages + 4}")

    engine.dispose()
    event.listen(engine, "connect", small_disk)
    try:
        with pytest.raises(
            ClipsearchError, match="disk is full; what was committed before is kept"
        ):
            index.add([photo_dir], batch_size=1)
    finally:
        event.remove(engine, "connect", small_disk)
        engine.dispose()
    assert_consistent(index.path)
    committed = index.count
    assert 6 <= committed < 12
    report = index.add([photo_dir])
    assert (report.added, report.unchanged) == (12 - committed, committed)


def test_indexing_a_parent_folder_keeps_one_record_per_file(index, photo_dir):
    index.add([photo_dir / "shapes"])
    before = {r.path: r.id for r in index.catalog.images(index.catalog.ids().tolist()).values()}
    report = index.add([photo_dir])
    assert (report.added, report.unchanged, report.removed) == (6, 6, 0)
    assert index.info().roots == (str(photo_dir),)
    for path, image_id in before.items():  # the same records, not encoded again
        assert index.catalog.find_path(path).id == image_id
    assert_consistent(index.path)
    # A catalog that already has a file under two roots loses the second record.
    from clipsearch.store.catalog import NewImage

    child, _ = index.catalog.adopt_roots(str(photo_dir / "more"))
    twin = index.catalog.find_path(str(photo_dir / "more" / "nested" / "red_circle.png"))
    vec = index.catalog.vector(twin.id)
    new = NewImage(child, "nested/red_circle.png", twin.size, twin.mtime_ns, twin.sha256, 1, 1)
    [dup] = index.catalog.commit_batch([new], vec[None, :])
    index.vectors.add(np.asarray([dup]), vec[None, :])
    assert index.count == 13
    report = index.add([photo_dir])
    assert (report.added, report.unchanged, index.count) == (0, 12, 12)
    assert index.catalog.images([dup]) == {}
    assert_consistent(index.path)


def test_a_full_disk_while_saving_vectors_is_one_line_and_loses_nothing(
    tmp_path, tiny_model, photo_dir, monkeypatch
):
    import errno

    import clipsearch.store.vectors as vectors_mod

    folder, runner = tmp_path / "idx", CliRunner()
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vectors_mod.os, "fsync", full)
    args = ["--index", str(folder), "index", str(photo_dir), "--model", tiny_model]
    result = runner.invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output
    assert lines[-1].startswith("clipsearch: error: cannot write ")
    assert "No space left on device" in lines[-1] and "run the same command again" in lines[-1]
    assert not list(folder.glob("*.tmp"))  # no half-written file left behind

    # Room again: the same command finishes the job without encoding anything twice.
    monkeypatch.setattr(vectors_mod.os, "fsync", real_fsync)
    catalog = Catalog.open(folder / CATALOG_FILE)
    try:
        committed = len(catalog.ids())
    finally:
        catalog.close()
    result = runner.invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["added"] + committed == len(list(photo_dir.rglob("*.png")))
    with ImageIndex.open(folder) as index:
        assert sorted(index.vectors.ids().tolist()) == sorted(index.catalog.ids().tolist())
        assert len(index.search("a red circle", k=3)) == 3


def test_catalog_lookups_of_ids_no_image_can_have(index, photo_dir):
    index.add([photo_dir / "shapes"])
    impossible = [2**63, 2**64 + 5, -(2**63) - 1]  # beyond SQLite's 64-bit integers
    assert index.catalog.images(impossible) == {}
    assert all(index.catalog.vector(i) is None for i in impossible)
    some = index.catalog.ids().tolist()[:2]
    assert set(index.catalog.images(some + impossible)) == set(some)
    assert index.catalog.vector(some[0]) is not None
