"""`--precision int8`: the image tower with int8 weights on ONNX Runtime. Its vectors stay
close to fp32's (cosine, not bit parity: this is quantization), it is made once per model and
kept, it is what an int8 run takes whatever its size, and only on the CPU. Timings live in
benchmarks/bench_rclip.py, never here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipsearch import ImageIndex, ModelLoadError
from clipsearch.cli.main import main
from clipsearch.models import onnxint8
from clipsearch.models.engines import ONNX, TORCH, image_engine
from clipsearch.models.identity import ModelSpec
from clipsearch.models.loading import load_encoder, load_image_encoder
from clipsearch.models.onnxtower import OnnxImageEncoder
from clipsearch.models.runtime import pick_precision
from clipsearch.training.config import TrainConfig
from tests.helpers import save_tiny_model, vit_b32_config

COSINE = 0.995  # the least cosine an int8 vector may have to its fp32 one


@pytest.fixture
def recorded(tmp_path) -> str:
    """A tiny model loaded once through open_clip, so its image tower record exists."""
    name = f"local-dir:{save_tiny_model(tmp_path / 'tiny')}"
    load_encoder(name, device="cpu")
    return name


def test_int8_is_onnx_runtimes_on_the_cpu_whatever_the_run():
    b32 = vit_b32_config()
    for images in (1, 10_000, None):
        assert image_engine(images, b32, "cpu", "int8") == ONNX
        assert image_engine(images, b32, "auto", "int8") == ONNX
    assert image_engine(5, b32, "cuda", "int8") == TORCH
    assert image_engine(5, b32, "cpu", "int8", onnx=False) == TORCH
    assert pick_precision("int8", "cpu") == "fp32"  # what torch runs meanwhile
    with pytest.raises(ModelLoadError, match="int8 runs on the CPU"):
        pick_precision("int8", "cuda")


def test_int8_vectors_stay_close_to_fp32_and_the_model_is_kept(recorded, photo_dir, monkeypatch):
    spec = ModelSpec.from_user(recorded, None)
    encoder = load_image_encoder(spec, images=3, device="cpu", precision="int8")
    assert isinstance(encoder, OnnxImageEncoder) and encoder.precision == "int8"
    images = [Image.open(p).convert("RGB") for p in sorted(photo_dir.rglob("*.png"))]
    got = encoder.encode_images(images)
    want = load_encoder(recorded, device="cpu").encode_images(images)
    cosines = (got * want).sum(axis=1)
    assert cosines.min() >= COSINE and not np.array_equal(got, want)
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    (kept,) = onnxint8.cache_root(onnxint8.CACHE_KIND).glob("*.onnx")

    def no_quantizing(*args, **kwargs):
        raise AssertionError("the kept int8 model is read back, not made again")

    monkeypatch.setattr(onnxint8, "_quantize", no_quantizing)
    again = load_image_encoder(spec, images=3, device="cpu", precision="int8")
    assert np.array_equal(again.encode_images(images), got)
    kept.write_bytes(b"not a model")  # a damaged kept model: fp32 torch goes on, with a warning
    fallback = load_image_encoder(spec, images=3, device="cpu", precision="int8")
    assert not isinstance(fallback, OnnxImageEncoder) and fallback.precision == "fp32"


def test_index_precision_int8(recorded, photo_dir, tmp_path):
    index = tmp_path / "idx"

    def run(*args):
        result = CliRunner().invoke(main, ["--index", str(index), *map(str, args)])
        assert result.exit_code == 0, result.output
        return result.output

    out = run("index", photo_dir, "--model", recorded, "--precision", "int8", "--json")
    report = json.loads(out.strip().splitlines()[-1])
    assert report["added"] > 0 and report["engine"] == "onnx"
    with ImageIndex.open(index, device="cpu") as opened:
        # a copy outside the index, encoded in fp32, finds its int8 twin first
        green = photo_dir / "shapes" / "green_circle.png"
        outside = tmp_path / "copy.png"
        outside.write_bytes(green.read_bytes())
        assert opened.similar(outside, k=1)[0].path == str(green.resolve())
        hits = opened.search("a red circle", k=3)  # text queries in fp32 as ever
        assert len(hits) == 3


def test_training_refuses_int8(tmp_path):
    with pytest.raises(Exception, match="precision must be one of auto, fp32, bf16, fp16,"):
        TrainConfig(output_dir=tmp_path, precision="int8")
