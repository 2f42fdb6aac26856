"""The tiny architecture the training tests train, registered with open_clip by name."""

from __future__ import annotations

import json

import open_clip
import pytest

from tests.training.helpers import TINY, TINY_CFG


@pytest.fixture(scope="session", autouse=True)
def tiny_arch(tmp_path_factory: pytest.TempPathFactory) -> str:
    if open_clip.get_model_config(TINY) is None:
        path = tmp_path_factory.mktemp("arch") / f"{TINY}.json"
        path.write_text(json.dumps(TINY_CFG))
        open_clip.add_model_config(path)
    return TINY
