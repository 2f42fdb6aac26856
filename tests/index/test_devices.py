"""Decoding JPEGs in batches where the model runs, several devices, and halving on OOM.

The device is varied only at its boundary: everything here runs on the CPU (torchvision's
decode_jpeg decodes there too), with the real tiny open_clip model.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipsearch import ImageIndex
from clipsearch.errors import ClipsearchError, ModelLoadError
from clipsearch.index import devices
from clipsearch.media import batchdecode
from clipsearch.models.encoder import Encoder
from tests.helpers import draw_image, stored_for_orientation
from tests.models.test_batchpre import photo


@pytest.fixture
def mixed(tmp_path) -> Path:
    """Six photo JPEGs (one rotated by EXIF, one grey) and the files the batched decoder must
    not take: a CMYK JPEG, a truncated JPEG and a PNG."""
    root = tmp_path / "mixed"
    root.mkdir()
    for i in range(4):
        photo(i, 200 + 30 * i, 150).save(root / f"photo{i}.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored_for_orientation(photo(7, 180, 120), 6).save(root / "rotated.jpg", exif=exif)
    photo(8, 160, 160).convert("L").save(root / "grey.jpg")
    Image.new("CMYK", (64, 48), (0, 200, 200, 0)).save(root / "cmyk.jpg")
    good = io.BytesIO()
    photo(9, 200, 150).save(good, "JPEG")
    (root / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    draw_image(root / "shape.png", "green", "triangle")
    return root


def index_vectors(folder: Path, tiny_model: str, root: Path, **add) -> tuple[dict, dict]:
    """Index ``root``; returns name -> unit vector, and the report."""
    with ImageIndex.create(folder, tiny_model, device="cpu", precision="fp32") as index:
        report = index.add([root], exact_decode=True, **add)
        records = index.catalog.images(index.catalog.ids().tolist())
        vectors = {
            rec.rel: (index.catalog.vector(i), (rec.width, rec.height))
            for i, rec in records.items()
        }
    return vectors, report


def test_device_decoding_indexes_a_mixed_folder_like_the_cpu_path(
    tmp_path, tiny_model, mixed, monkeypatch
):
    batched: list[int] = []
    real = batchdecode._decode

    def counting(inputs, device):
        batched.extend(len(t) for t in inputs)
        return real(inputs, device)

    monkeypatch.setattr(batchdecode, "_decode", counting)
    cpu, cpu_report = index_vectors(tmp_path / "a", tiny_model, mixed, decode="cpu")
    assert batched == []
    dev, dev_report = index_vectors(tmp_path / "b", tiny_model, mixed, decode="device")
    assert len(batched) == 6  # the photos, the rotated and the grey JPEG; not CMYK, truncated
    assert (
        sorted(dev)
        == sorted(cpu)
        == sorted(
            [
                "cmyk.jpg",
                "grey.jpg",
                "photo0.jpg",
                "photo1.jpg",
                "photo2.jpg",
                "photo3.jpg",
                "rotated.jpg",
                "shape.png",
            ]
        )
    )
    assert dev_report.errors == cpu_report.errors
    assert [Path(p).name for p, _ in dev_report.errors] == ["truncated.jpg"]
    for name, (vec, size) in dev.items():
        assert size == cpu[name][1]  # upright sizes, the rotated one too
        assert float(vec @ cpu[name][0]) >= 0.999, name
    assert dev["rotated.jpg"][1] == (180, 120)


def test_a_jpeg_the_decoder_refuses_falls_back_alone(tmp_path, tiny_model, mixed, monkeypatch):
    refused = (mixed / "photo2.jpg").read_bytes()
    real = batchdecode._decode

    def refusing(inputs, device):  # as nvJPEG refuses some progressive or odd files
        if any(t.numpy().tobytes() == refused for t in inputs):
            raise RuntimeError("nvjpegDecode failed: unsupported")
        return real(inputs, device)

    monkeypatch.setattr(batchdecode, "_decode", refusing)
    dev, report = index_vectors(tmp_path / "b", tiny_model, mixed, decode="device")
    monkeypatch.setattr(batchdecode, "_decode", real)
    cpu, _ = index_vectors(tmp_path / "a", tiny_model, mixed, decode="cpu")
    assert report.failed == 1 and report.added == 8
    assert float(dev["photo2.jpg"][0] @ cpu["photo2.jpg"][0]) >= 0.999


def test_out_of_memory_halves_the_batch_and_goes_on(tmp_path, tiny_model, mixed, monkeypatch):
    plain, _ = index_vectors(tmp_path / "a", tiny_model, mixed, decode="device", batch_size=8)
    calls: list[tuple[int, bool]] = []
    real = Encoder.encode_pixels

    def small_memory(self, pixels):
        fits = len(pixels) <= 2
        calls.append((len(pixels), fits))
        if not fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, pixels)

    monkeypatch.setattr(Encoder, "encode_pixels", small_memory)
    halved, report = index_vectors(tmp_path / "b", tiny_model, mixed, decode="device", batch_size=8)
    assert report.added == 8 and report.failed == 1
    assert calls[:3] == [(8, False), (4, False), (2, True)]
    assert all(n <= 2 for n, _ in calls[3:])  # the smaller size stays for the next batches
    for name, (vec, _) in plain.items():
        np.testing.assert_allclose(halved[name][0], vec, atol=1e-5)


def test_out_of_memory_on_one_image_stops_the_run(tmp_path, tiny_model, mixed, monkeypatch):
    def no_memory(self, pixels):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(Encoder, "encode_pixels", no_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        index_vectors(tmp_path / "b", tiny_model, mixed, decode="device")


def test_two_devices_share_each_batch_and_merge_in_order(tmp_path, tiny_model, mixed, monkeypatch):
    one, _ = index_vectors(tmp_path / "a", tiny_model, mixed, decode="device")
    shares: list[tuple[int, int]] = []
    real = devices.DeviceWorker.run

    def recording(self, items):
        shares.append((id(self), len(items)))
        return real(self, items)

    monkeypatch.setattr(devices.DeviceWorker, "run", recording)
    two, report = index_vectors(
        tmp_path / "b", tiny_model, mixed, decode="device", devices="cpu,cpu"
    )
    assert report.added == 8
    assert len({worker for worker, _ in shares}) == 2
    assert sum(n for _, n in shares) == 9  # every prepared file once, the failed one too
    for name, (vec, size) in one.items():
        assert two[name][1] == size
        np.testing.assert_allclose(two[name][0], vec, atol=1e-5)


def test_pil_decoding_on_two_devices(tmp_path, tiny_model, mixed):
    one, _ = index_vectors(tmp_path / "a", tiny_model, mixed, decode="cpu")
    two, _ = index_vectors(tmp_path / "b", tiny_model, mixed, decode="cpu", devices=["cpu", "cpu"])
    for name, (vec, _) in one.items():
        np.testing.assert_allclose(two[name][0], vec, atol=1e-5)


def test_parse_devices():
    assert devices.parse_devices("0,1") == ("cuda:0", "cuda:1")
    assert devices.parse_devices(" cpu, cuda:2 ") == ("cpu", "cuda:2")
    assert devices.parse_devices(["cpu", "cpu"]) == ("cpu", "cpu")
    assert devices.parse_devices("") == devices.parse_devices(None) == ()
    with pytest.raises(ClipsearchError, match="unknown device 'gpu1'"):
        devices.parse_devices("gpu1")


def test_resolve_decode():
    assert devices.resolve_decode("auto", "cuda") == "device"
    assert devices.resolve_decode("auto", "cuda:1") == "device"
    assert devices.resolve_decode("auto", "cpu") == "cpu"
    assert devices.resolve_decode("auto", "mps") == "cpu"
    assert devices.resolve_decode("device", "cpu") == "device"
    with pytest.raises(ClipsearchError, match="unknown decode"):
        devices.resolve_decode("nvjpeg", "cuda")


def test_batch_size_from_free_memory():
    per_image = 80 * 2**20
    assert devices.memory_batch_size(100 * 2**30, per_image) == 512  # capped
    assert devices.memory_batch_size(16 * 2**30, per_image) == 128  # 153 fit: 128
    assert devices.memory_batch_size(8 * 2**30, per_image) == 64
    assert devices.memory_batch_size(100 * 2**20, per_image) == 1  # never below one
    assert devices.memory_batch_size(0, per_image) == 1
    sizes = [devices.memory_batch_size(g * 2**30, per_image) for g in range(1, 64)]
    assert sizes == sorted(sizes) and all(n & (n - 1) == 0 for n in sizes)


def test_out_of_memory_is_recognised():
    assert devices.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    cpu_oom = RuntimeError(
        "[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"
    )
    assert devices.is_out_of_memory(cpu_oom)
    assert not devices.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not devices.is_out_of_memory(ValueError("out of memory"))


def test_gpus_that_are_not_there_are_refused(tmp_path, tiny_model, mixed):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with (
        ImageIndex.create(tmp_path / "i", tiny_model, device="cpu") as index,
        pytest.raises(ModelLoadError, match="no CUDA GPU"),
    ):
        index.add([mixed], devices="0,1")


def test_the_loaded_model_serves_its_own_device_and_copies_serve_the_others(tiny_model):
    from clipsearch.models.identity import ModelSpec
    from clipsearch.models.loading import load_spec

    enc = load_spec(ModelSpec.from_user(tiny_model, None), device="cpu", precision="fp32")
    one = devices.DeviceStage(enc)
    assert [w.encoder for w in one.workers] == [enc]
    two = devices.DeviceStage(enc, ("cpu", "cpu"))
    assert two.workers[0].encoder is enc and two.workers[1].encoder is not enc
    assert two.workers[1].encoder.model is not enc.model
    assert two.batch_size == 2 * one.batch_size
    one.close()
    two.close()


def test_out_of_memory_while_decoding_halves_too(tmp_path, tiny_model, mixed, monkeypatch):
    """OOM in the batched decoder is no refusal: no file falls back to PIL, fewer decode at
    a time."""
    plain, _ = index_vectors(tmp_path / "a", tiny_model, mixed, decode="device", batch_size=8)
    real = batchdecode._decode
    sizes: list[int] = []

    def small_memory(inputs, device):
        sizes.append(len(inputs))
        if len(inputs) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(inputs, device)

    def no_fallback(self, p):
        raise AssertionError(f"{p.cand.found.path} fell back to PIL")

    monkeypatch.setattr(batchdecode, "_decode", small_memory)
    monkeypatch.setattr(devices.DeviceWorker, "_fallback", no_fallback)
    halved, report = index_vectors(tmp_path / "b", tiny_model, mixed, decode="device", batch_size=8)
    assert report.added == 8 and report.failed == 1
    assert sizes[:2] == [6, 3]  # the JPEGs among the first 8 files, then among 4
    for name, (vec, _) in plain.items():
        np.testing.assert_allclose(halved[name][0], vec, atol=1e-5)


def test_a_video_beside_jpegs_on_two_devices_gives_the_cpu_paths_frames(tmp_path, tiny_model):
    pytest.importorskip("av")
    from tests.helpers import make_video

    root = tmp_path / "photos"
    make_video(root / "clip.mp4", seconds=2.0)
    for i in range(3):
        photo(i, 120, 90).save(root / f"photo{i}.jpg")

    def frames(folder: Path, **add) -> list[tuple[str, float | None, np.ndarray]]:
        with ImageIndex.create(folder, tiny_model, device="cpu", precision="fp32") as index:
            report = index.add([root], exact_decode=True, video_interval=1.0, **add)
            assert report.failed == 0
            records = index.catalog.images(index.catalog.ids().tolist())
            rows = [(r.rel, r.frame_time, index.catalog.vector(i)) for i, r in records.items()]
        return sorted(rows, key=lambda row: (row[0], row[1] or 0.0))

    cpu = frames(tmp_path / "a", decode="cpu")
    dev = frames(tmp_path / "b", decode="device", devices="cpu,cpu", batch_size=4)
    assert [(rel, t) for rel, t, _ in dev] == [(rel, t) for rel, t, _ in cpu]
    assert sum(rel == "clip.mp4" for rel, _, _ in cpu) >= 2  # a video gives several rows
    for (_, _, a), (_, _, b) in zip(cpu, dev, strict=True):
        assert float(a @ b) >= 0.999
