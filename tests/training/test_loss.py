"""The contrastive loss against open_clip's, and the auxiliary label loss."""

from __future__ import annotations

import open_clip
import pytest
import torch

from clipsearch.training.batches import IGNORED_LABEL
from clipsearch.training.loss import LabelLoss, contrastive_loss


def test_loss_equals_open_clip_cliploss_without_duplicates():
    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(8, 16, generator=gen), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(8, 16, generator=gen), dim=-1)
    scale = torch.tensor(20.0)
    expected = open_clip.ClipLoss()(img, txt, scale)
    assert torch.allclose(contrastive_loss(img, txt, scale), expected, atol=1e-6)
    eye = torch.eye(8, dtype=torch.bool)
    assert torch.allclose(contrastive_loss(img, txt, scale, eye), expected, atol=1e-6)
    # A second positive per row changes the target, so the loss differs.
    two = eye | torch.roll(eye, 1, dims=1)
    assert not torch.allclose(contrastive_loss(img, txt, scale, two), expected)


def test_label_loss_counts_only_labelled_pictures():
    torch.manual_seed(0)
    aux = LabelLoss(["style", "mood"], [2, 3], dim=4, weight=0.5, device="cpu")
    features = torch.nn.functional.normalize(torch.randn(4, 4), dim=-1)
    labels = torch.tensor([[0, IGNORED_LABEL], [1, IGNORED_LABEL], [IGNORED_LABEL] * 2, [1, 2]])
    base = torch.tensor(1.0)
    total, accuracy = aux.add_to(base, features, labels)

    logits = aux.head[0](features * 2.0)  # sqrt(dim) scaling
    known = torch.tensor([0, 1, 3])
    style_ce = torch.nn.functional.cross_entropy(logits[known], labels[known, 0])
    mood_logits = aux.head[1](features[3:] * 2.0)
    mood_ce = torch.nn.functional.cross_entropy(mood_logits, labels[3:, 1])
    assert total.item() == pytest.approx(1.0 + 0.5 * style_ce.item() + 0.5 * mood_ce.item())
    assert set(accuracy) == {"style", "mood"}
    expected = (logits[known].argmax(dim=1) == labels[known, 0]).float().mean().item()
    assert accuracy["style"] == pytest.approx(expected)

    unlabelled = torch.full((4, 2), IGNORED_LABEL)
    same, none = aux.add_to(base, features, unlabelled)
    assert same is base and none == {}
