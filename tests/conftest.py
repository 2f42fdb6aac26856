"""Shared fixtures: an isolated environment, a tiny real open_clip model, generated images."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import RAY_AUTH_MODE, draw_image, save_tiny_hf_model, save_tiny_model


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    """No test reads the user's index, config file, home or network: everything points at temp
    dirs (the config file at `home/config/clipsearch.toml`, absent until a test writes it)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CLIPSEARCH_INDEX", str(home / "default-index"))
    monkeypatch.setenv("CLIPSEARCH_CONFIG", str(home / "config" / "clipsearch.toml"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))  # the user data dir
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))  # clipsearch's own cache too
    monkeypatch.setenv(RAY_AUTH_MODE, "disabled")  # see tests.helpers.ray_without_auth
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(home / "hf-cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir) -> str:
    """The tiny model as a --model value."""
    return f"local-dir:{tiny_model_dir}"


@pytest.fixture(scope="session")
def tiny_hf_model_dir(tmp_path_factory) -> Path:
    """A tiny multilingual model: a random XLM-R text tower from Hugging Face transformers
    with a tokenizer trained on Korean, English and Russian (tests.helpers)."""
    return save_tiny_hf_model(tmp_path_factory.mktemp("models") / "tiny-hf")


@pytest.fixture(scope="session")
def tiny_hf_model(tiny_hf_model_dir) -> str:
    """The tiny multilingual model as a --model value."""
    return f"local-dir:{tiny_hf_model_dir}"


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    """A folder of 12 distinct generated images in sub-folders."""
    root = tmp_path / "photos"
    i = 0
    for color in ["red", "green", "blue", "yellow"]:
        for shape in ["circle", "square", "triangle"]:
            sub = "shapes" if i % 2 else "more/nested"
            draw_image(root / sub / f"{color}_{shape}.png", color, shape)
            i += 1
    return root
