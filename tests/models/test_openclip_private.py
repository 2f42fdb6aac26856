"""open_clip's private functions that clipsearch wraps still exist and still do what we use.

When one of these fails after an open_clip upgrade, update clipsearch/models/openclip_private.py
for the new release before raising the open_clip_torch bound in pyproject.toml.
"""

from __future__ import annotations

import json

import open_clip

from clipsearch.models.openclip_private import (
    default_text_cleaner,
    hf_hub_model_config,
    hf_whitespace_cleaner,
    safe_weight_names,
)
from clipsearch.models.tokenizer import clean
from tests.helpers import TINY_CFG, put_in_hf_cache


def test_safe_weight_names_prefer_safetensors_for_a_pickled_checkpoint():
    names = safe_weight_names("open_clip_pytorch_model.bin")
    assert names, "open_clip.pretrained._get_safe_alternatives no longer offers safetensors names"
    assert all(n.endswith(".safetensors") for n in names)
    assert "open_clip_model.safetensors" in names


def test_default_text_cleaner_is_the_default_tokenizers_own():
    cleaner = default_text_cleaner()
    assert open_clip.tokenizer.SimpleTokenizer().clean_fn is cleaner, (
        "open_clip's default SimpleTokenizer no longer cleans with tokenizer._clean_lower"
    )
    assert cleaner("  A  Red\tCircle ") == "a red circle"


def test_hf_whitespace_cleaner_is_the_hf_tokenizers_own(tiny_hf_model_dir):
    tokenizer = open_clip.tokenizer.HFTokenizer(str(tiny_hf_model_dir))
    cleaner = hf_whitespace_cleaner()
    assert tokenizer.clean_fn is cleaner, (
        "open_clip's HFTokenizer no longer cleans with tokenizer._clean_whitespace by default"
    )
    for text in ("  A  Red\tCircle ", "AT&amp;T café", "빨간  원", "", "\n"):
        assert cleaner(text) == clean(text, lower=False), text


def test_hf_hub_model_config_reads_the_cached_config(tmp_path):
    config = {"model_cfg": TINY_CFG, "preprocess_cfg": {"size": 32}}
    path = tmp_path / "open_clip_config.json"
    path.write_text(json.dumps(config))
    put_in_hf_cache(tmp_path / "hf-cache", "someone/tiny", {"open_clip_config.json": path})
    got = hf_hub_model_config("someone/tiny", cache_dir=str(tmp_path / "hf-cache"))
    assert got["model_cfg"] == TINY_CFG
