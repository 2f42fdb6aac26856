"""open_clip models with a Hugging Face text tower (CustomTextCLIP, ``text_cfg.hf_model_name``):
they load offline from a local-dir: folder or the Hugging Face cache, give open_clip's own
vectors, have an identity that covers the tokenizer, and fail with one line when transformers
or a file is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from clipsearch.errors import ModelLoadError
from clipsearch.models import texttower
from clipsearch.models.identity import ModelIdentity, ModelSpec, hf_text_sha256, spec_key
from clipsearch.models.loading import load_encoder
from tests.helpers import (
    TINY_CFG,
    TINY_HF_TEXT_CFG,
    multilingual_corpus,
    put_in_hf_cache,
    save_tiny_hf_model,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {"ko": "빨간 원 그림", "en": "a red circle drawing", "ru": "красный круг рисунок"}


def open_clip_reference(folder, texts):
    """open_clip's own text vectors for a local-dir: HF model, built the way open_clip builds
    it: from inside the folder, where its relative hf_model_name resolves."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        model = open_clip.create_model(f"local-dir:{folder}").eval()
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
        with torch.no_grad():
            return model.encode_text(tokenizer(texts), normalize=True).numpy(), tokenizer
    finally:
        os.chdir(cwd)


def test_loads_from_any_directory_and_matches_open_clip(
    tiny_hf_model, tiny_hf_model_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the tower's "." is the model folder, not this one
    enc = load_encoder(tiny_hf_model, device="cpu")
    assert type(enc.model).__name__ == "CustomTextCLIP"
    texts = [*SCRIPTS.values(), "빨간 원 red circle красный круг", "x" * 2000]
    ours = enc.encode_texts(texts)
    theirs, tokenizer = open_clip_reference(tiny_hf_model_dir, texts)
    assert np.abs(ours - theirs).max() < 1e-5
    assert np.isfinite(ours).all()
    # three scripts, three different vectors
    assert min(np.linalg.norm(ours[i] - ours[j]) for i in range(3) for j in range(i)) > 1e-3
    # and none of them is read as unknown tokens
    unk = tokenizer.tokenizer.unk_token_id
    for text in SCRIPTS.values():
        ids = tokenizer([text])[0].tolist()
        assert unk not in ids, text


def test_tokens_are_truncated_to_the_context_like_clip(tiny_hf_model):
    enc = load_encoder(tiny_hf_model, device="cpu")
    context = TINY_HF_TEXT_CFG["context_length"]
    long = " ".join(["고양이 cat кошка"] * 100)
    tokens = enc.tokenizer([long, long + " 강아지"])
    assert tokens.shape == (2, context)
    vectors = enc.encode_texts([long, long + " 강아지"])
    assert np.abs(vectors[0] - vectors[1]).max() < 1e-6  # the tail past the context is cut


def test_text_only_load_matches_the_full_model(tiny_hf_model):
    full = load_encoder(tiny_hf_model, device="cpu")
    text = load_encoder(tiny_hf_model, device="cpu", towers="text")
    assert text.towers == "text" and text.model.visual is None
    assert text.identity == full.identity
    texts = list(SCRIPTS.values())
    assert np.abs(text.encode_texts(texts) - full.encode_texts(texts)).max() < 1e-6
    # open_clip's own text tower's NumPy copy declines it (hftower runs it instead)
    assert texttower.describe(full.model, full.tokenizer) is None


def test_tower_in_a_subfolder_resolves_against_the_model_folder(tmp_path, monkeypatch):
    folder = save_tiny_hf_model(tmp_path / "m", seed=1, tower_dir="text")
    assert (folder / "text" / "config.json").is_file() and not (folder / "config.json").exists()
    monkeypatch.chdir(tmp_path)
    enc = load_encoder(f"local-dir:{folder}", device="cpu")
    theirs, _ = open_clip_reference(folder, list(SCRIPTS.values()))
    assert np.abs(enc.encode_texts(list(SCRIPTS.values())) - theirs).max() < 1e-5


def test_identity_covers_the_tokenizer(tiny_hf_model_dir, tmp_path):
    a = tmp_path / "a"
    shutil.copytree(tiny_hf_model_dir, a)
    b = tmp_path / "b"
    shutil.copytree(tiny_hf_model_dir, b)
    # b: the same weights and tower config, a tokenizer trained on other lines
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (b / name).unlink()
    from tests.helpers import save_hf_tokenizer

    save_hf_tokenizer(b, multilingual_corpus(seed=7))
    assert (a / "open_clip_model.safetensors").read_bytes() == (
        b / "open_clip_model.safetensors"
    ).read_bytes()

    ia = load_encoder(f"local-dir:{a}", device="cpu").identity
    ib = load_encoder(f"local-dir:{b}", device="cpu").identity
    assert ia.weights_sha256 == ib.weights_sha256
    assert ia.text_sha256 and ib.text_sha256 and ia.text_sha256 != ib.text_sha256
    assert ia.key != ib.key
    assert spec_key(ModelSpec(f"local-dir:{a}", None)) == ia.key
    assert spec_key(ModelSpec(f"local-dir:{b}", None)) == ib.key
    # recorded and read back as an index does; a moved folder is the same model
    assert ModelIdentity.from_dict(json.loads(json.dumps(ia.to_dict()))) == ia
    moved = tmp_path / "moved"
    a.rename(moved)
    assert hf_text_sha256(moved) == ia.text_sha256


def test_clip_bpe_identity_keeps_the_older_record(tiny_model):
    """A CLIP-BPE model's identity has no text checksum: the dict it records and its key are
    what older releases wrote, and an older record (without the field) reads back equal."""
    ident = load_encoder(tiny_model, device="cpu").identity
    assert ident.text_sha256 is None and "text_sha256" not in ident.to_dict()
    assert ident.key == f"sha256:{ident.weights_sha256}"
    older = {k: v for k, v in ident.to_dict().items()}
    assert ModelIdentity.from_dict(older) == ident


def test_missing_transformers_says_what_to_install(tiny_hf_model, tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(ModelLoadError) as err:
        load_encoder(tiny_hf_model, device="cpu")
    message = str(err.value)
    assert "pip install 'clipsearch[multilingual]'" in message and "transformers" in message
    assert "\n" not in message
    assert load_encoder(tiny_model, device="cpu").dim == 512  # CLIP-BPE models need none of it


def test_missing_transformers_in_a_fresh_process(tiny_hf_model, tmp_path):
    """Without transformers installed (blocked in a fresh interpreter), the CLI's one line."""
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "from clipsearch.cli.main import main\n"
        f"main(['--index', {str(tmp_path / 'idx')!r}, 'embed', '--text', 'x',"
        f" '--model', {tiny_hf_model!r}])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("clipsearch: error: ") and len(out.stderr.splitlines()) == 1
    assert "pip install 'clipsearch[multilingual]'" in out.stderr


def test_a_folder_without_its_tokenizer_is_one_line(tiny_hf_model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_hf_model_dir, folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(ModelLoadError, match="tokenizer.json or tokenizer_config.json in"):
        load_encoder(f"local-dir:{folder}", device="cpu")


@pytest.fixture
def hf_builtin(tiny_hf_model_dir, tmp_path, monkeypatch):
    """The tiny HF model as a built-in open_clip name whose tower and tokenizer are hub repos,
    with a pretrained tag: the path of xlm-roberta-base-ViT-B-32 and nllb-clip-base."""
    name, weights_repo = "clipsearch-tiny-hf", "clipsearch-test/w"
    repo = "clipsearch-test/xlmr-tiny"
    text = {**TINY_HF_TEXT_CFG, "hf_model_name": repo, "hf_tokenizer_name": repo}
    cfg = tmp_path / f"{name}.json"
    model_cfg = {"embed_dim": 512, "vision_cfg": TINY_CFG["vision_cfg"], "text_cfg": text}
    cfg.write_text(json.dumps(model_cfg))
    open_clip.add_model_config(cfg)
    tag = {"v1": open_clip.pretrained._pcfg(hf_hub=f"{weights_repo}/")}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name, tag)
    cache = os.environ["HF_HUB_CACHE"]
    weights = {"open_clip_model.safetensors": tiny_hf_model_dir / "open_clip_model.safetensors"}
    tower = {"config.json": tiny_hf_model_dir / "config.json"}
    tokenizer = {n: tiny_hf_model_dir / n for n in ("tokenizer.json", "tokenizer_config.json")}
    return name, cache, {weights_repo: weights, repo: {**tower, **tokenizer}}


def test_pretrained_tag_loads_tower_and_tokenizer_from_the_offline_cache(
    hf_builtin, tiny_hf_model, tiny_hf_model_dir
):
    name, cache, repos = hf_builtin
    for repo, files in repos.items():
        put_in_hf_cache(cache, repo, files)
    enc = load_encoder(name, "v1", device="cpu")
    assert enc.identity.pretrained == "v1" and enc.identity.text_sha256 is None
    assert enc.identity.key == f"{name}|v1"  # the registry names the tower and tokenizer
    local = load_encoder(tiny_hf_model, device="cpu")
    texts = list(SCRIPTS.values())
    assert np.abs(enc.encode_texts(texts) - local.encode_texts(texts)).max() < 1e-6


def test_a_hub_tokenizer_needs_neither_sentencepiece_nor_protobuf(
    hf_builtin, tiny_hf_model, monkeypatch
):
    """The layout of the xlm-roberta-base repo (config.json and tokenizer.json, no
    tokenizer_config.json) loads with sentencepiece and protobuf not importable: the
    multilingual extra does without them."""
    name, cache, repos = hf_builtin
    for repo, files in repos.items():
        files = {n: p for n, p in files.items() if n != "tokenizer_config.json"}
        put_in_hf_cache(cache, repo, files)
    for module in ("sentencepiece", "google.protobuf"):
        monkeypatch.setitem(sys.modules, module, None)
    enc = load_encoder(name, "v1", device="cpu")
    texts = list(SCRIPTS.values())
    local = load_encoder(tiny_hf_model, device="cpu")
    assert np.abs(enc.encode_texts(texts) - local.encode_texts(texts)).max() < 1e-6


@pytest.mark.parametrize("missing", ["config.json", "tokenizer"])
def test_pretrained_tag_with_tower_files_not_cached_is_one_line(hf_builtin, missing):
    name, cache, repos = hf_builtin
    for repo, files in repos.items():
        if repo.endswith("xlmr-tiny"):  # drop the tower's config, or its tokenizer files
            files = {n: p for n, p in files.items() if (n == "config.json") != (missing == n)}
        put_in_hf_cache(cache, repo, files)
    what = "text tower config" if missing == "config.json" else "tokenizer"
    with pytest.raises(ModelLoadError) as err:
        load_encoder(name, "v1", device="cpu")
    message = str(err.value)
    assert f"{what} not in the local cache" in message and "clipsearch-test/xlmr-tiny" in message
    assert "HF_HUB_OFFLINE" in message and "\n" not in message


def test_trailing_padding_is_skipped_exactly(tiny_hf_model):
    from clipsearch.models.runtime import _without_trailing_padding, encode_text

    enc = load_encoder(tiny_hf_model, device="cpu")
    tokens = enc.tokenizer(list(SCRIPTS.values()))
    trimmed = _without_trailing_padding(enc.model, tokens)
    assert trimmed.shape[1] < tokens.shape[1]  # short queries: fewer columns
    assert (tokens[:, trimmed.shape[1] :] == enc.tokenizer.tokenizer.pad_token_id).all()
    with torch.no_grad():
        full = torch.nn.functional.normalize(enc.model.encode_text(tokens), dim=-1)
        fast = torch.nn.functional.normalize(encode_text(enc.model, tokens), dim=-1)
    assert (full - fast).abs().max() < 1e-6


def test_hf_hub_model_with_an_hf_tower(hf_builtin, tiny_hf_model_dir, tiny_hf_model, tmp_path):
    """An hf-hub: model whose config names hub repos for its tower and tokenizer: those are
    checked in the cache like its weights, then it loads offline."""
    _, cache, repos = hf_builtin
    tower = "clipsearch-test/xlmr-tiny"
    cfg = json.loads((tiny_hf_model_dir / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"].update(hf_model_name=tower, hf_tokenizer_name=tower)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    weights = tiny_hf_model_dir / "open_clip_model.safetensors"
    files = {"open_clip_config.json": tmp_path / "open_clip_config.json"}
    put_in_hf_cache(cache, "clipsearch-test/hub-hf", {**files, weights.name: weights})
    with pytest.raises(ModelLoadError, match="text tower config not in the local cache"):
        load_encoder("hf-hub:clipsearch-test/hub-hf", device="cpu")
    put_in_hf_cache(cache, tower, repos[tower])
    enc = load_encoder("hf-hub:clipsearch-test/hub-hf", device="cpu")
    local = load_encoder(tiny_hf_model, device="cpu")
    texts = list(SCRIPTS.values())
    assert np.abs(enc.encode_texts(texts) - local.encode_texts(texts)).max() < 1e-6
