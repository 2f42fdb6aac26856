"""The style head's torch module; imported only where a head is trained (a trained head
labels in NumPy: :class:`clipsearch.style.head.StyleHead`)."""

from __future__ import annotations

import torch
from torch import nn


class StyleClassifier(nn.Module):
    """MLP on a unit CLIP image vector: Linear(dim, hidden), GELU, dropout, Linear(hidden, n).

    ``hidden`` and ``dropout`` come from :class:`clipsearch.style.head.TrainOptions` (training)
    or from a saved head's ``head.json`` (loading).

    The input is first centred and scaled with statistics of the training vectors (the
    ``center`` and ``scale`` buffers): CLIP vectors of one collection differ in small
    components around a shared mean, and a standardized input trains far faster.
    """

    def __init__(self, dim: int, n_classes: int, hidden: int, dropout: float):
        super().__init__()
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.center) * self.scale)
