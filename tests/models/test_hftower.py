"""The NumPy XLM-R text tower and its tokenizer (models/hftower.py): the token ids and vectors
of open_clip's own HFTokenizer and HFTextEncoder, recorded when torch loads the model, read
back without torch; towers it does not cover fall back to torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipsearch.models import texttower
from clipsearch.models.hftower import HFTextTokenizer, describe_hf
from clipsearch.models.identity import ModelSpec
from clipsearch.models.loading import load_encoder, load_text_encoder
from tests.helpers import multilingual_corpus, save_tiny_hf_model

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5
EDGE_CASES = [
    "",
    "   ",
    "\t빨간\n\n원  ",
    "AT&amp;T &lt;3 café naïve",
    "東京 🙂 ☃",
    "MiXeD CaSe Кошка",
    " ".join(["고양이 cat кошка"] * 80),  # past the context: truncated, </s> kept last
]


def test_tokens_are_open_clips(tiny_hf_model, tmp_path):
    enc = load_encoder(tiny_hf_model, device="cpu")  # records the tower
    (record,) = [json.loads(p.read_text()) for p in texttower.cache_root().glob("*.json")]
    assert record["kind"] == "hf-roberta"
    config = describe_hf(enc.model, enc.tokenizer)
    ours = HFTextTokenizer(record["tokenizer"], config.context_length, config.pad_id)
    texts = multilingual_corpus(40, seed=11) + EDGE_CASES
    assert np.array_equal(ours(texts), enc.tokenizer(texts).numpy())


def test_numpy_tower_matches_open_clip_in_every_script(tiny_hf_model):
    enc = load_encoder(tiny_hf_model, device="cpu")  # records the tower
    fast = texttower.cached_text_encoder(ModelSpec(tiny_hf_model, None))
    assert isinstance(fast, texttower.NumpyTextEncoder) and fast.identity == enc.identity
    texts = multilingual_corpus(10, seed=5) + EDGE_CASES
    assert np.abs(fast.encode_texts(texts) - enc.encode_texts(texts)).max() < TOLERANCE
    # one at a time (each trimmed to its own length) as in a batch
    one = np.stack([fast.encode_texts([t])[0] for t in texts[:6]])
    assert np.abs(one - fast.encode_texts(texts[:6])).max() < TOLERANCE
    assert isinstance(load_text_encoder(tiny_hf_model, device="cpu"), texttower.NumpyTextEncoder)


@pytest.mark.parametrize(
    "text_cfg",
    [{"hf_proj_type": "mlp"}, {"hf_pooler_type": "cls_last_hidden_state_pooler"}],
)
def test_other_projections_and_poolers(tmp_path, text_cfg):
    folder = save_tiny_hf_model(tmp_path / "m", seed=2, text_cfg=text_cfg)
    model = f"local-dir:{folder}"
    enc = load_encoder(model, device="cpu")
    fast = texttower.cached_text_encoder(ModelSpec(model, None))
    assert fast is not None
    texts = multilingual_corpus(5, seed=1) + EDGE_CASES[:3]
    assert np.abs(fast.encode_texts(texts) - enc.encode_texts(texts)).max() < TOLERANCE


def test_a_tower_it_does_not_cover_falls_back_to_torch(tmp_path):
    """cls_pooler reads the transformer's pooler output (a tanh layer): not in the NumPy
    tower, so no record, and text queries run in torch without an error."""
    folder = save_tiny_hf_model(tmp_path / "m", seed=3, text_cfg={"hf_pooler_type": "cls_pooler"})
    model = f"local-dir:{folder}"
    enc = load_encoder(model, device="cpu")
    assert describe_hf(enc.model, enc.tokenizer) is None
    assert texttower.cached_text_encoder(ModelSpec(model, None)) is None
    text = load_text_encoder(model, device="cpu")
    assert not isinstance(text, texttower.NumpyTextEncoder)
    texts = multilingual_corpus(3)
    assert np.abs(text.encode_texts(texts) - enc.encode_texts(texts)).max() < 1e-6


def test_a_changed_tokenizer_is_not_read_from_an_old_record(tiny_hf_model_dir, tmp_path):
    import shutil

    from tests.helpers import save_hf_tokenizer

    folder = tmp_path / "m"
    shutil.copytree(tiny_hf_model_dir, folder)
    model = f"local-dir:{folder}"
    load_encoder(model, device="cpu")
    assert texttower.cached_text_encoder(ModelSpec(model, None)) is not None
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    save_hf_tokenizer(folder, multilingual_corpus(seed=9))
    # another identity (text_sha256), so another record: none yet
    assert texttower.cached_text_encoder(ModelSpec(model, None)) is None


def test_text_queries_load_neither_torch_nor_transformers(tiny_hf_model):
    load_encoder(tiny_hf_model, device="cpu")  # records the tower
    code = (
        "import sys\n"
        "from clipsearch.models.loading import load_text_encoder\n"
        f"e = load_text_encoder({tiny_hf_model!r})\n"
        "v = e.encode_texts(['빨간 원', 'красный круг'])\n"
        "print(type(e).__name__, v.shape, sorted(m for m in ('torch', 'transformers', "
        "'open_clip') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["NumpyTextEncoder", "(2,", "512)", "[]"]


def test_a_record_without_the_tokenizers_package_falls_back(tiny_hf_model, monkeypatch):
    load_encoder(tiny_hf_model, device="cpu")  # records the tower
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # the extra uninstalled since
    assert texttower.cached_text_encoder(ModelSpec(tiny_hf_model, None)) is None
