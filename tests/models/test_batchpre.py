"""The model's preprocessing as tensor ops: the same pixels and vectors as open_clip's PIL path."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from clipsearch.media.batchdecode import as_input, batch_decodable, decode_jpegs
from clipsearch.media.files import decode_image
from clipsearch.models.batchpre import TensorPreprocess
from clipsearch.models.identity import ModelSpec
from clipsearch.models.loading import load_spec
from tests.helpers import draw_image


def photo(seed: int, w: int, h: int) -> Image.Image:
    """Smooth colour fields, edges and noise: resampling differences show as in a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([np.sin(x * 7 + seed), np.cos(y * 5), np.sin((x + y) * 3)], -1) * 90 + 128
    base[h // 3 : h // 2, w // 4 : w // 2] = rng.integers(0, 255, 3)
    base += rng.normal(0, 6, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("mode", ["shortest", "squash"])
def test_tensor_preprocess_matches_the_pil_transform(mode):
    pp = image_transform_v2(PreprocessCfg(size=64, resize_mode=mode), is_train=False)
    images = [photo(i, w, h) for i, (w, h) in enumerate([(300, 200), (120, 260), (64, 64)])]
    tensors = [torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1) for img in images]
    got = TensorPreprocess(pp)(tensors)
    ref = torch.stack([pp(img) for img in images])
    assert got.shape == ref.shape == (3, 3, 64, 64)
    assert (got - ref).abs().mean() < 0.02  # a few uint8 levels after normalisation


def test_a_transform_that_needs_pil_is_refused():
    longest = image_transform_v2(PreprocessCfg(size=64, resize_mode="longest"), is_train=False)
    assert not TensorPreprocess.supports(longest)
    with pytest.raises(ValueError, match="ResizeKeepRatio"):
        TensorPreprocess(longest)
    assert TensorPreprocess.supports(image_transform_v2(PreprocessCfg(size=64), is_train=False))


def test_batched_path_embeds_as_the_pil_path(tiny_model_dir, tmp_path):
    """Decode with torchvision, preprocess as tensors, encode: cosine >= 0.999 to the PIL
    path's fp32 vectors on the tiny model, for photo-sized and small pictures."""
    enc = load_spec(ModelSpec.from_user(f"local-dir:{tiny_model_dir}", None), device="cpu")
    datas = [jpeg_bytes(photo(i, 640 + 40 * i, 480)) for i in range(4)]
    datas.append(draw_image(tmp_path / "d.jpg", "blue", "square", size=40, fmt="JPEG").read_bytes())
    heads = [batch_decodable(d) for d in datas]
    decoded = decode_jpegs([as_input(d) for d in datas], [h.orientation for h in heads], "cpu")
    batched = enc.encode_pixels(TensorPreprocess(enc.preprocess)(decoded))
    reference = enc.encode_images([decode_image(d, "x.jpg") for d in datas])
    assert cosines(batched, reference).min() >= 0.999


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_path_is_within_cosine_0999_of_cpu_fp32(tmp_path):
    """nvJPEG decode + resize on the GPU + fp16 ViT-B/32 against PIL + fp32 on the CPU, on
    12-megapixel photo-like JPEGs, with the same random weights."""
    from clipsearch.index.devices import replicate

    cpu = load_spec(ModelSpec.from_user("ViT-B-32", "random"), device="cpu", precision="fp32")
    gpu = replicate(cpu, "cuda")
    gpu.model.half()
    gpu.precision = "fp16"
    datas = [jpeg_bytes(photo(i, 4000, 3000)) for i in range(6)]
    heads = [batch_decodable(d) for d in datas]
    pinned = [as_input(d, pin=True) for d in datas]
    decoded = decode_jpegs(pinned, [h.orientation for h in heads], "cuda")
    assert all(img is not None and img.is_cuda for img in decoded)
    on_gpu = gpu.encode_pixels(TensorPreprocess(gpu.preprocess)(decoded))
    on_cpu = cpu.encode_images([decode_image(d, "x.jpg") for d in datas])
    assert cosines(on_gpu, on_cpu).min() >= 0.999
