"""The model's eval preprocessing as torch ops on a batch of decoded tensors, on any device.

open_clip's eval transform is a torchvision ``Compose``: geometric steps (resize, crop or pad)
that also accept tensors, then the conversion to float and the normalisation. This module
runs the geometric steps of that very ``Compose`` on each uint8 (3, H, W) tensor where it
lies (on the GPU for nvJPEG's output), so sizes, crops and interpolation stay the model's own;
then it stacks the batch and normalises it in one go. On uint8 input torchvision's antialiased
bicubic resize follows PIL's, so the vectors stay close to the PIL path's
(benchmarks/RESULTS.md gives the cosine).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from clipsearch.models.preprocess import ImagePreprocess

if TYPE_CHECKING:
    import torch

# Where open_clip's Compose stops being geometric: mode conversion, to-tensor, normalise.
_STOP = ("MaybeConvertMode", "MaybeToTensor", "ToTensor", "Normalize")
# Geometric steps that take tensors as they take PIL images (open_clip's ResizeKeepRatio, of
# resize_mode "longest", reads PIL's ``img.size`` and does not).
_TENSOR_STEPS = ("Resize", "CenterCrop")


class TensorPreprocess:
    """The geometric part of an eval transform, then float conversion and normalisation.

    Args:
        preprocess: the model's eval transform (``Encoder.preprocess``): an
            :class:`~clipsearch.models.preprocess.ImagePreprocess`, or a torchvision Compose.

    Raises:
        ValueError: a step of it runs on PIL images only (see :meth:`supports`).
    """

    def __init__(self, preprocess: Any):
        if isinstance(preprocess, ImagePreprocess):  # the same steps, from its config
            self._from_config(preprocess)
            return
        steps = list(getattr(preprocess, "transforms", ()))
        norm = next((t for t in steps if type(t).__name__ == "Normalize"), None)
        if norm is None:
            raise ValueError("the model's preprocessing has no Normalize step")
        self.geometric = []
        for t in steps:
            if type(t).__name__ in _STOP:
                break
            if type(t).__name__ not in _TENSOR_STEPS:
                raise ValueError(f"the model's preprocessing step {type(t).__name__} needs PIL")
            self.geometric.append(t)
        self.mean = tuple(float(m) for m in norm.mean)
        self.std = tuple(float(s) for s in norm.std)

    def _from_config(self, pre: ImagePreprocess) -> None:
        """The torchvision steps open_clip's eval transform has for this config: a resize of
        the shortest side then a centre crop, or a resize of both sides (``squash``)."""
        from torchvision import transforms as tv

        mode = tv.InterpolationMode.BICUBIC
        if pre.interpolation == "bilinear":
            mode = tv.InterpolationMode.BILINEAR
        if pre.resize_mode == "squash":
            self.geometric = [tv.Resize((pre.size, pre.size), interpolation=mode)]
        else:
            self.geometric = [tv.Resize(pre.size, interpolation=mode), tv.CenterCrop(pre.size)]
        self.mean, self.std = tuple(pre.mean), tuple(pre.std)

    @staticmethod
    def supports(preprocess: Any) -> bool:
        """Whether every step of this eval transform runs on tensors (else decode with PIL)."""
        try:
            TensorPreprocess(preprocess)
        except ValueError:
            return False
        return True

    def __call__(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Preprocess uint8 (3, H, W) tensors (one device) into a float32 (N, 3, S, S) batch."""
        import torch

        resized = []
        for img in images:
            for t in self.geometric:
                img = t(img)
            resized.append(img)
        x = torch.stack(resized).float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)
