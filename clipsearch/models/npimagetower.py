"""Images without torch: the image tower of :mod:`clipsearch.models.imagetower` in NumPy.

``import torch`` alone takes seconds and most of a process's memory (benchmarks/RESULTS.md),
more than encoding a handful of photos costs. For a run that encodes few images (adding a
photo or two, a watch batch), :class:`NumpyImageTower` runs open_clip's ViT image tower in
NumPy fp32 from the same cache record the torch tower loads from, its weights memory-mapped
in place: the patch embedding as a reshape and one matrix product, the class token and the
positional embedding, ``ln_pre``, the residual attention blocks of
:func:`clipsearch.models.npmath.residual_block` (the text tower's, without the causal mask),
the pooling, ``ln_post`` and the projection. Its vectors equal the torch tower's in fp32
(within :data:`PARITY_TOLERANCE`), so vectors of both paths mix in one index.

:func:`prefers_numpy` is the one policy that chooses between the two: NumPy where the whole
run's work is small enough that it is done before torch would have been imported, torch
(bf16 where the CPU has it) for the rest.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.errors import ModelLoadError
from clipsearch.models.identity import ModelIdentity, ModelSpec
from clipsearch.models.imagetower import ImageTowerConfig, read_image_record
from clipsearch.models.npmath import layer_norm, linear, read_safetensors, residual_block
from clipsearch.models.preprocess import ImagePreprocess
from clipsearch.models.runtime import BATCH_SIZES

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5  # max abs difference of unit vectors, NumPy fp32 vs torch fp32

# The most work (images x GFLOP per image) a run may ask for and still be encoded in NumPy:
# where NumPy fp32 at its rate finishes no later than torch, counting the time torch takes to
# import and load the tower. benchmarks/bench_encode.py measures that break-even for ViT-B/32
# and B/16 (RESULTS.md); this is the lower of the two, rounded down.
NUMPY_MAX_GFLOP = 175.0


def prefers_numpy(
    images: int | None, config: ImageTowerConfig, device: str = "auto", precision: str = "auto"
) -> bool:
    """Whether ``images`` images are best encoded by the NumPy tower.

    Args:
        images: at most how many the run encodes; None when unknown, or when the run asks for
            what only torch does (compiling, decoding on the device, several devices).
        config: the tower.
        device: as the user gave it: NumPy runs on the CPU, so ``auto`` or ``cpu``.
        precision: as the user gave it: NumPy computes in fp32, so ``auto`` or ``fp32``
            (an explicit ``bf16`` or ``fp16`` is the torch path's).
    """
    if images is None or device not in ("auto", "cpu") or precision not in ("auto", "fp32"):
        return False
    return images * config.gflop <= NUMPY_MAX_GFLOP


class NumpyImageTower:
    """open_clip's ``VisionTransformer`` (as :mod:`clipsearch.models.imagetower` covers it) in
    NumPy fp32.

    Args:
        config: the tower's shape.
        tensors: its weights by state-dict name inside ``visual``, float32 (memory-mapped
            ones are fine, and are not copied).

    Raises:
        ValueError: a tensor is missing or has the wrong shape or dtype.
    """

    def __init__(self, config: ImageTowerConfig, tensors: Mapping[str, np.ndarray]):
        self.config = config
        self.tensors: dict[str, np.ndarray] = {}
        for name, shape in config.tensor_shapes().items():
            t = tensors.get(name)
            if t is None or tuple(t.shape) != shape or t.dtype != np.float32:
                got = "missing" if t is None else f"{t.dtype} {tuple(t.shape)}"
                raise ValueError(f"image tower tensor {name}: {got}, expected float32 {shape}")
            self.tensors[name] = t
        w, p = config.width, config.patch_size
        self._patch_weight = self.tensors["conv1.weight"].reshape(w, 3 * p * p)  # a view

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """The image features (N, output_dim) of preprocessed pixels (N, 3, size, size),
        not normalized (as ``encode_image``)."""
        c, t = self.config, self.tensors
        x = self._tokens(np.asarray(pixels, dtype=np.float32))
        n = c.tokens
        rows = len(x) // n
        tok = np.zeros(rows, dtype=np.int64) if c.pool == "tok" else None
        for i in range(c.layers):
            last = i == c.layers - 1
            x = residual_block(
                x,
                t,
                f"transformer.resblocks.{i}.",
                n=n,
                heads=c.heads,
                eps=c.ln_eps,
                activation=c.activation,
                pool=tok if last else None,  # the class token alone is read after the last
            )
        ln = (t["ln_post.weight"], t["ln_post.bias"], c.ln_eps)
        if tok is not None:  # (rows, width): the class token; LayerNorm is per position
            x = layer_norm(x, *ln)
        elif c.final_ln_after_pool:
            x = layer_norm(x.reshape(rows, n, c.width)[:, 1:].mean(axis=1), *ln)
        else:
            x = layer_norm(x.reshape(rows, n, c.width), *ln)[:, 1:].mean(axis=1)
        return x @ t["proj"] if c.proj else x

    def _tokens(self, pixels: np.ndarray) -> np.ndarray:
        """Patch embedding (a convolution whose stride is its kernel: a reshape and a matrix
        product), the class token, the positional embedding and ``ln_pre``; one row per
        position of each image (images * tokens, width)."""
        c, t = self.config, self.tensors
        p, grid, rows = c.patch_size, c.image_size // c.patch_size, len(pixels)
        if pixels.shape[1:] != (3, c.image_size, c.image_size):
            raise ValueError(
                f"pixels of shape {pixels.shape}, expected (N, 3, {c.image_size}, ...)"
            )
        patches = pixels.reshape(rows, 3, grid, p, grid, p).transpose(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(rows * grid * grid, 3 * p * p)
        x = linear(patches, self._patch_weight, None).reshape(rows, grid * grid, c.width)
        cls = np.broadcast_to(t["class_embedding"], (rows, 1, c.width))
        x = np.concatenate([cls, x], axis=1) + t["positional_embedding"]
        if c.ln_pre:
            x = layer_norm(x, t["ln_pre.weight"], t["ln_pre.bias"], c.ln_eps)
        return np.ascontiguousarray(x, dtype=np.float32).reshape(rows * c.tokens, c.width)


class NumpyImageEncoder:
    """Encodes images like :class:`clipsearch.models.encoder.Encoder` with ``towers="image"``,
    without torch: fp32 on the CPU, whatever precision the torch path would use.

    Made by :func:`cached_numpy_image_encoder`. ``preprocess`` gives NumPy arrays, which
    :meth:`encode_batch` takes.
    """

    device = "cpu"
    precision = "fp32"
    towers = "image"

    def __init__(
        self, tower: NumpyImageTower, preprocess: ImagePreprocess, identity: ModelIdentity
    ):
        self.tower = tower
        self.identity = identity
        self.preprocess = preprocess.pixels  # an RGB image -> a (3, size, size) float32 array

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
        x = self.tower(pixels)
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


def cached_numpy_image_encoder(
    spec: ModelSpec, identity: ModelIdentity | None = None, cache_dir: str | None = None
) -> NumpyImageEncoder | None:
    """The NumPy image encoder of a model, if a valid image tower record of it is cached
    (see :func:`clipsearch.models.imagetower.read_image_record`); its weights are mapped,
    not read. None (use torch) where there is none or anything cannot be read."""
    found = read_image_record(spec, identity, cache_dir)
    if found is None:
        return None
    prefix = found.prefix
    try:
        arrays = read_safetensors(found.weights, [prefix + n for n in found.config.tensor_shapes()])
        tower = NumpyImageTower(found.config, {n[len(prefix) :]: a for n, a in arrays.items()})
    except (OSError, ValueError) as e:
        log.debug("image tower weights %s are unusable: %s", found.weights, e)
        return None
    return NumpyImageEncoder(tower, found.preprocess, found.identity)
