"""Models the tests under tests/models share."""

from __future__ import annotations

import copy

import pytest

from tests.helpers import TINY_CFG, save_tiny_model


@pytest.fixture(scope="module")
def quick_model_dir(tmp_path_factory):
    """The tiny model with QuickGELU, two text layers and a context of 16 tokens."""
    cfg = copy.deepcopy(TINY_CFG)
    cfg["quick_gelu"] = True
    cfg["text_cfg"].update(layers=2, context_length=16)
    return save_tiny_model(tmp_path_factory.mktemp("models") / "quick", seed=4, cfg=cfg)
