"""The few private functions of open_clip that clipsearch relies on, each wrapped once here.

open_clip_torch has an upper bound in pyproject.toml, and tests/models/test_openclip_private.py
fails with a clear message when a new release renames or changes one of them: raise the bound
only once that test passes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def hf_hub_model_config(repo: str, cache_dir: str | None = None) -> dict[str, Any]:
    """The ``open_clip_config.json`` of an ``hf-hub:`` model (downloaded or from the cache)."""
    from open_clip.factory import _get_hf_config

    return _get_hf_config(repo, cache_dir=cache_dir)


def safe_weight_names(filename: str) -> list[str]:
    """The safetensors names open_clip tries before a pickled checkpoint's ``filename``."""
    from open_clip.pretrained import _get_safe_alternatives

    return list(_get_safe_alternatives(filename))


def default_text_cleaner() -> Callable[[str], str]:
    """The cleaning function of open_clip's default ``SimpleTokenizer`` (lower-cased, with
    whitespace collapsed), the one that the NumPy tokenizer reproduces."""
    from open_clip import tokenizer

    return tokenizer._clean_lower


def hf_whitespace_cleaner() -> Callable[[str], str]:
    """The cleaning function of open_clip's ``HFTokenizer`` by default (``clean="whitespace"``:
    ftfy, HTML entities, whitespace collapsed; case kept), the one the NumPy path of Hugging
    Face text towers reproduces."""
    from open_clip import tokenizer

    return tokenizer._clean_whitespace
