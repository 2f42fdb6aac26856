"""The loaded model: batched, L2-normalized encoding of images and texts.

Every vector this module returns is float32 and L2-normalized.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image
from clipsearch.errors import ModelLoadError, one_line
from clipsearch.models.identity import MAX_LOGIT_SCALE, ModelIdentity
from clipsearch.models.runtime import BATCH_SIZES, encode_text, normalize
from clipsearch.threads import TORCH, limit_threads

log = logging.getLogger(__name__)


class Encoder:
    """A loaded open_clip model with its eval preprocessing and tokenizer, or the image tower
    alone (``towers="image"``: :mod:`clipsearch.models.imagetower`, no tokenizer), or the
    text tower alone (``towers="text"``).

    Build one with :func:`~clipsearch.models.loading.load_encoder`. Images must already be RGB (see
    :func:`clipsearch.media.files.load_image`); the preprocessing gives open_clip's own eval
    transform's pixels (:mod:`clipsearch.models.preprocess`), so vectors equal
    ``model.encode_image(preprocess(img), normalize=True)``.
    """

    engine = "torch"  # what runs the towers (see clipsearch.models.engines)

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Any,
        tokenizer: Any,
        identity: ModelIdentity,
        device: str,
        precision: str,
        towers: str = "both",
    ):
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.identity = identity
        self.device = device
        self.precision = precision
        self.towers = towers
        self._compiled: Any = None  # the compiled image tower, once asked for
        self._compiled_batch = 0  # the batch size it was compiled for; 0 before the first

    @property
    def batch_size(self) -> int:
        """Images per model call that suit this encoder's device."""
        return BATCH_SIZES.get(self.device, 32)

    @property
    def dim(self) -> int:
        return self.identity.dim

    @property
    def image_size(self) -> int:
        return self.identity.image_size

    def _dtype(self) -> torch.dtype:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
            self.precision
        ]

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Encode a batch of preprocessed image tensors (N, 3, H, W)."""
        import torch

        if self.towers == "text":
            raise ModelLoadError(
                f"model {self.identity.describe()} was loaded for text queries only; "
                "load it with towers='both' to encode images"
            )
        with torch.inference_mode():
            x = pixels.to(self.device, dtype=self._dtype(), non_blocking=True)
            if self._compiled is not None:
                return normalize(self._run_compiled(x))
            features = self.model.encode_image(x)
            return normalize(features)

    def encode_batch(self, pixels: Sequence[Any]) -> np.ndarray:
        """Encode preprocessed images, each what :attr:`preprocess` gave (a (3, H, W) tensor)."""
        import torch

        return self.encode_pixels(torch.stack(list(pixels)))

    @property
    def compiled(self) -> bool:
        """Whether the image tower runs compiled (see :meth:`compile_image_tower`)."""
        return self._compiled is not None and self._compiled_batch > 0

    def compile_image_tower(self) -> None:
        """Run the image tower through ``torch.compile`` (inductor, frozen weights) from the
        next batch on.

        The first batch pays for the compilation (long, and on a CPU it needs a C++
        compiler), later ones run a little faster (benchmarks/RESULTS.md), so it suits runs
        of thousands of images. Batches are padded or split to the first batch's size, so
        that it compiles once. Where the
        compilation fails, a warning is logged and the tower runs as before.
        """
        import torch

        if self.towers == "text" or self._compiled is not None:
            return
        self._compiled = torch.compile(self.model.encode_image, dynamic=False)

    def _run_compiled(self, x: torch.Tensor) -> torch.Tensor:
        import torch
        from torch._inductor import config as inductor_config

        n = x.shape[0]
        if self._compiled_batch == 0:
            # torch says it found no CUDA runtime while it sets up its C++ builds: irrelevant
            # on a CPU, and compiling for CUDA finds one.
            cpp_log = logging.getLogger("torch.utils.cpp_extension")
            level = cpp_log.level
            cpp_log.setLevel(logging.ERROR)
            try:
                with inductor_config.patch(freezing=True):
                    out = self._compiled(x)
            except Exception as e:  # inductor raises many kinds; each means "not here"
                log.warning(
                    "could not compile the image tower (%s); running it uncompiled",
                    one_line(e),
                )
                self._compiled = None
                torch._dynamo.reset()
                return self.model.encode_image(x)
            finally:
                cpp_log.setLevel(level)
            self._compiled_batch = n
            return out
        size = self._compiled_batch
        parts = []
        for start in range(0, n, size):
            chunk = x[start : start + size]
            if chunk.shape[0] < size:  # pad with copies of the first image: same shape
                pad = chunk[:1].expand(size - chunk.shape[0], *chunk.shape[1:])
                chunk = torch.cat([chunk, pad])
            with inductor_config.patch(freezing=True):
                parts.append(self._compiled(chunk)[: min(size, n - start)])
        return torch.cat(parts)

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Encode RGB PIL images; returns (N, dim) float32 unit vectors."""
        import torch

        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            pixels = torch.stack([self.preprocess(img) for img in chunk])
            out[start : start + len(chunk)] = self.encode_pixels(pixels)
        return out

    def encode_file(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The unit vector of one image file (EXIF-upright, RGB).

        Raises:
            ImageReadError: the file is missing or not a readable image.
        """
        from clipsearch.media.files import load_image

        return self.encode_images([load_image(path)])[0]

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Encode texts with the model's own tokenizer; returns (N, dim) float32 unit vectors."""
        import torch

        self._text_tower()
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            tokens = self.tokenizer(chunk).to(self.device)
            # A query or two is a few small matmuls: more threads only wait on each other,
            # all the more on a busy machine.
            few = self.device == "cpu" and len(chunk) <= 4
            with torch.inference_mode(), limit_threads(1 if few else None, TORCH):
                features = encode_text(self.model, tokens)
            out[start : start + len(chunk)] = normalize(features)
        return out

    def _text_tower(self) -> None:
        if self.towers == "image":
            raise ModelLoadError(
                f"model {self.identity.describe()} was loaded for images only; "
                "load it with towers='both' to encode texts"
            )

    @property
    def logit_scale(self) -> float:
        """The model's learned softmax temperature (100 for CLIP)."""
        self._text_tower()
        return float(self.model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE).item())
