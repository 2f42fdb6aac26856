"""The training objective: CLIP's symmetric InfoNCE with shared positives, plus optional
auxiliary classifiers that keep labelled facts of the pictures linearly separable.

The contrastive loss is cross-entropy over the batch similarity matrix, image to text and
text to image, with a learnable temperature clamped at 100 as open_clip clamps it. Where a
batch holds several pairs whose captions fit each other's images (two pictures both captioned
"a red circle"), each such pair counts as a positive instead of a negative; with no such pairs
the loss equals ``open_clip.ClipLoss``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from clipsearch.models.identity import MAX_LOGIT_SCALE
from clipsearch.training.batches import IGNORED_LABEL

if TYPE_CHECKING:
    import torch

MAX_LOG_SCALE = math.log(MAX_LOGIT_SCALE)
"""The cap of the learnable log-temperature: log of MAX_LOGIT_SCALE."""


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    matches: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch, with several positives per row where captions match.

    Args:
        image_features: (B, D) L2-normalized image embeddings.
        text_features: (B, D) L2-normalized text embeddings.
        logit_scale: the temperature multiplier (already exponentiated).
        matches: (B, B) bool, ``matches[i, j]`` when caption ``j`` fits image ``i``; None means
            the identity, which gives exactly ``open_clip.ClipLoss``.
    """
    import torch
    import torch.nn.functional as F

    logits = logit_scale * image_features.float() @ text_features.float().T
    if matches is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    m = matches.to(logits.device, torch.float32)
    image_targets = m / m.sum(dim=1, keepdim=True)
    text_targets = m.T / m.T.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, image_targets) + F.cross_entropy(logits.T, text_targets)) / 2


class LabelLoss:
    """A linear classifier per labelled fact on the image embedding, and its cross-entropy.

    The classifiers read the unit-length embedding scaled by sqrt(dim), so that their inputs
    have components of about unit size and ordinary learning rates move their logits. They
    are a training aid and are not exported.

    Attributes:
        keys: the labelled facts, in the column order of a batch's labels.
        head: the classifiers, one per key, trained with the model.
        weight: the weight of each key's cross-entropy in the total loss.
    """

    def __init__(self, keys: list[str], classes: list[int], dim: int, weight: float, device: str):
        import torch

        self.keys = keys
        self.weight = weight
        self.head = torch.nn.ModuleList(torch.nn.Linear(dim, n) for n in classes).to(device)
        self._scale = math.sqrt(dim)

    def add_to(
        self, loss: torch.Tensor, image_features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``loss`` plus each key's weighted cross-entropy, and each key's batch accuracy.

        Keys that no picture of the batch has are left out of both.
        """
        import torch.nn.functional as F

        accuracy: dict[str, float] = {}
        scaled = image_features.float() * self._scale
        for j, (key, classifier) in enumerate(zip(self.keys, self.head, strict=True)):
            target = labels[:, j]
            known = target != IGNORED_LABEL
            if not bool(known.any()):
                continue
            logits = classifier(scaled[known])
            loss = loss + self.weight * F.cross_entropy(logits, target[known])
            accuracy[key] = float((logits.argmax(dim=1) == target[known]).float().mean().item())
        return loss, accuracy
