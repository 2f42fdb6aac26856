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

:func:`clipsearch.models.engines.image_engine` is the one policy that chooses between it,
ONNX Runtime (:mod:`clipsearch.models.onnxtower`) and torch: NumPy where the whole run's work
is small enough that it is done before torch would have been imported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from clipsearch.models.cpuencoder import CpuImageEncoder
from clipsearch.models.identity import ModelIdentity, ModelSpec
from clipsearch.models.imagetower import ImageRecord, ImageTowerConfig, read_image_record
from clipsearch.models.npmath import layer_norm, linear, residual_block

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5  # max abs difference of unit vectors, NumPy fp32 vs torch fp32


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
        self.tensors = config.checked(tensors)
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


class NumpyImageEncoder(CpuImageEncoder):
    """Encodes images like :class:`clipsearch.models.encoder.Encoder` with ``towers="image"``,
    in NumPy: fp32 on the CPU, without torch. Made by :func:`cached_numpy_image_encoder`."""

    engine = "numpy"


def cached_numpy_image_encoder(
    spec: ModelSpec, identity: ModelIdentity | None = None, cache_dir: str | None = None
) -> NumpyImageEncoder | None:
    """The NumPy image encoder of a model, if a valid image tower record of it is cached
    (see :func:`clipsearch.models.imagetower.read_image_record`); its weights are mapped,
    not read. None (use torch) where there is none or anything cannot be read."""
    found = read_image_record(spec, identity, cache_dir)
    return numpy_image_encoder(found) if found is not None else None


def numpy_image_encoder(found: ImageRecord) -> NumpyImageEncoder | None:
    """The NumPy image encoder of a valid record; None where its weights cannot be read."""
    try:
        tower = NumpyImageTower(found.config, found.tensors())
    except (OSError, ValueError) as e:
        log.debug("image tower weights %s are unusable: %s", found.weights, e)
        return None
    return NumpyImageEncoder(tower, found.preprocess, found.identity)
