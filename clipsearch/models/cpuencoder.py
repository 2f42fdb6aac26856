"""What the torch-free image encoders share: the interface of
:class:`~clipsearch.models.encoder.Encoder` with ``towers="image"``, fp32 on the CPU, NumPy
arrays in and out. :class:`~clipsearch.models.npimagetower.NumpyImageEncoder` and
:class:`~clipsearch.models.onnxtower.OnnxImageEncoder` differ only in the tower they are
given (a NumPy tower, an ONNX Runtime session), which turns preprocessed pixels into image
features."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.errors import ModelLoadError
from clipsearch.models.identity import ModelIdentity
from clipsearch.models.preprocess import ImagePreprocess
from clipsearch.models.runtime import BATCH_SIZES

if TYPE_CHECKING:
    from PIL import Image


class CpuImageEncoder:
    """Encodes images without torch, whatever precision the torch path would use: fp32 on
    the CPU. ``preprocess`` gives NumPy arrays, which :meth:`encode_batch` takes.

    Args:
        tower: what computes the features; it has the tower's ``config``
            (:class:`~clipsearch.models.imagetower.ImageTowerConfig`).
        preprocess: the model's eval preprocessing.
        identity: the model's identity (an index's, where one was given).
    """

    device = "cpu"
    precision = "fp32"
    towers = "image"
    engine = ""  # what runs the tower, as logs and reports name it: "numpy", "onnx"

    def __init__(self, tower: Any, preprocess: ImagePreprocess, identity: ModelIdentity):
        self.tower = tower
        self.identity = identity
        self.preprocess = preprocess.pixels  # an RGB image -> a (3, size, size) float32 array

    def features(self, pixels: np.ndarray) -> np.ndarray:
        """The image features (N, dim) of preprocessed pixels (N, 3, size, size), not
        normalized (as ``encode_image``): what the tower computes."""
        return self.tower(pixels)

    @property
    def batch_size(self) -> int:
        return BATCH_SIZES["cpu"]

    @property
    def dim(self) -> int:
        return self.identity.dim

    @property
    def image_size(self) -> int:
        return self.identity.image_size

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Unit vectors (N, dim) float32 of preprocessed pixels (N, 3, size, size)."""
        x = self.features(pixels)
        norms = np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))
        return (x / norms).astype(np.float32, copy=False)

    def encode_batch(self, pixels: Sequence[Any]) -> np.ndarray:
        """Unit vectors of preprocessed images, each what :attr:`preprocess` gave."""
        return self.encode_pixels(np.stack([np.asarray(px, dtype=np.float32) for px in pixels]))

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 16) -> np.ndarray:
        """Encode RGB PIL images; returns (N, dim) float32 unit vectors."""
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            out[start : start + len(chunk)] = self.encode_batch([self.preprocess(i) for i in chunk])
        return out

    def encode_file(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The unit vector of one image file (EXIF-upright, RGB).

        Raises:
            ImageReadError: the file is missing or not a readable image.
        """
        from clipsearch.media.files import load_image

        return self.encode_images([load_image(path)])[0]

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        raise ModelLoadError(
            f"model {self.identity.describe()} was loaded for images only; "
            "load it with towers='both' to encode texts"
        )
