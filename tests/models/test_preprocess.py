"""Preprocessing in PIL and NumPy gives open_clip's (torchvision's) pixels bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipsearch.models.preprocess import ImagePreprocess

SIZES = [(640, 480), (480, 640), (224, 224), (225, 300), (31, 17), (1001, 999), (4000, 3000)]
CONFIGS = [
    {"size": 224},
    {"size": 32, "interpolation": "bilinear"},
    {"size": (64, 64), "resize_mode": "squash"},
    {"size": 256, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_pixels_equal_open_clip_transform(cfg):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    reference = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    ours = ImagePreprocess.from_config(cfg)
    assert ours is not None
    rng = np.random.default_rng(0)
    for w, h in SIZES:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        want = reference(img).numpy()
        got = ours(img).numpy()
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got, want), (w, h)


def test_other_modes_are_converted_like_open_clip():
    from open_clip.transform import PreprocessCfg, image_transform_v2

    reference = image_transform_v2(PreprocessCfg(size=32), is_train=False)
    grey = Image.fromarray(np.arange(40 * 50, dtype=np.uint32).reshape(40, 50).astype(np.uint8))
    ours = ImagePreprocess.from_config({"size": 32})
    assert np.array_equal(ours(grey).numpy(), reference(grey).numpy())


@pytest.mark.parametrize(
    "cfg",
    [
        {"size": 224, "resize_mode": "longest"},
        {"size": (224, 256)},
        {"size": 224, "interpolation": "nearest"},
    ],
)
def test_configs_it_does_not_reproduce_are_refused(cfg):
    assert ImagePreprocess.from_config(cfg) is None


@pytest.mark.parametrize("cfg", CONFIGS[:3], ids=["shortest", "bilinear", "squash"])
def test_device_batches_take_the_same_steps_as_open_clip_transform(cfg):
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from clipsearch.models.batchpre import TensorPreprocess

    ours = TensorPreprocess(ImagePreprocess.from_config(cfg))
    reference = TensorPreprocess(image_transform_v2(PreprocessCfg(**cfg), is_train=False))
    assert ours.mean == reference.mean and ours.std == reference.std
    rng = np.random.default_rng(1)
    images = [
        torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for w, h in SIZES[:5]
    ]
    assert torch.equal(ours(images), reference(images))
