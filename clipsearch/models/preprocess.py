"""open_clip's eval preprocessing of images in PIL and NumPy, without torchvision.

open_clip's eval transform for a model is torchvision's ``Resize`` (the shortest side to the
input size, or both sides for ``squash``), ``CenterCrop``, ``ToTensor`` and ``Normalize``. On a
PIL image torchvision resizes with PIL itself (bicubic or bilinear, always antialiased), crops
with PIL and converts with NumPy, so the same steps here give the same pixels bit for bit
(tests/models/test_preprocess.py checks it against open_clip's transform). This is the one
home of preprocessing: the torch encoder and the cached image tower both use it, so importing
torchvision (through open_clip) is not needed to encode an image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's defaults when a config has none
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImagePreprocess:
    """An RGB PIL image -> the (3, size, size) float32 tensor the image tower takes.

    Build one with :meth:`from_config` from a model's preprocess config (what
    :class:`~clipsearch.models.identity.ModelIdentity` records).
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ImagePreprocess | None:
        """The preprocessing of an open_clip preprocess config, or None where it is not one
        this class reproduces (``longest`` resizing with padding, a non-square input, another
        interpolation): use open_clip's transform then."""
        size = cfg.get("size", 224)
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or size[0] != size[1]:
                return None
            size = size[0]
        interpolation = cfg.get("interpolation") or "bicubic"
        mode = cfg.get("resize_mode") or "shortest"
        mean, std = cfg.get("mean") or OPENAI_MEAN, cfg.get("std") or OPENAI_STD
        mean = (mean,) * 3 if isinstance(mean, (int, float)) else tuple(mean)
        std = (std,) * 3 if isinstance(std, (int, float)) else tuple(std)
        if (
            interpolation not in _RESAMPLE
            or mode not in ("shortest", "squash")
            or len(mean) != 3
            or len(std) != 3
            or not isinstance(size, int)
            or size < 1
        ):
            return None
        return cls(int(size), mean, std, interpolation, mode)  # type: ignore[arg-type]

    def pixels(self, img: Image.Image) -> np.ndarray:
        """The preprocessed image as a (3, size, size) float32 array."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        s = self.size
        w, h = img.size
        if self.resize_mode == "squash":
            target = (s, s)
        else:  # torchvision's rule: the short side to s, the long one truncated
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(s * long / short)
            target = (s, new_long) if w <= h else (new_long, s)
        if target != (w, h):
            img = img.resize(target, _RESAMPLE[self.interpolation])
        w, h = img.size
        if (w, h) != (s, s):
            if w < s or h < s:  # torchvision pads a too-small image with zeros first
                img = _pad_to(img, s)
                w, h = img.size
            top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
            img = img.crop((left, top, left + s, top + s))
        x = np.asarray(img, dtype=np.uint8).astype(np.float32).transpose(2, 0, 1)
        x /= np.float32(255)
        x -= np.asarray(self.mean, dtype=np.float32)[:, None, None]
        x /= np.asarray(self.std, dtype=np.float32)[:, None, None]
        return np.ascontiguousarray(x)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """The preprocessed image as a torch tensor, as open_clip's transform returns it."""
        import torch

        return torch.from_numpy(self.pixels(img))


def _pad_to(img: Image.Image, size: int) -> Image.Image:
    """torchvision's ``CenterCrop`` padding of an image smaller than the crop: zeros around,
    split as it splits them (the extra pixel on the right and bottom)."""
    w, h = img.size
    left = (size - w) // 2 if w < size else 0
    top = (size - h) // 2 if h < size else 0
    out = Image.new(img.mode, (max(w, size), max(h, size)), 0)
    out.paste(img, (left, top))
    return out
