"""The encoder: every way to name a model loads real open_clip weights, and the vectors are
exactly open_clip's own."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clipsearch.errors import ModelLoadError
from clipsearch.models.identity import ModelSpec, spec_key
from clipsearch.models.loading import create, identify, load_encoder, resolve
from tests.helpers import TINY_CFG, draw_image, put_in_hf_cache, save_tiny_model


@pytest.fixture(scope="module")
def tiny_builtin(tmp_path_factory):
    """The tiny config registered as a built-in open_clip name, with a checkpoint file."""
    folder = tmp_path_factory.mktemp("builtin")
    cfg = folder / "clipsearch-tiny-test.json"
    cfg.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(cfg)
    model_dir = save_tiny_model(folder / "weights", seed=3)
    return "clipsearch-tiny-test", model_dir / "open_clip_model.safetensors"


def test_image_and_text_parity_with_open_clip(tiny_model, tiny_model_dir, tmp_path):
    enc = load_encoder(tiny_model, device="cpu")
    ref, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_model_dir}")
    ref.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_model_dir}")
    images = [
        Image.open(draw_image(tmp_path / f"{c}.png", c)).convert("RGB")
        for c in ("red", "blue", "green")
    ]
    images.append(Image.new("RGB", (100, 40), (10, 200, 30)))  # non-square: resize + crop

    ours = enc.encode_images(images, batch_size=2)
    with torch.no_grad():
        theirs = ref.encode_image(torch.stack([preprocess(i) for i in images]), normalize=True)
    assert ours.dtype == np.float32 and ours.shape == (4, 512)
    assert np.abs(ours - theirs.numpy()).max() < 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)

    texts = ["a red circle", "a photo of a dog", ""]
    ours_t = enc.encode_texts(texts)
    with torch.no_grad():
        theirs_t = ref.encode_text(tokenizer(texts), normalize=True)
    assert np.abs(ours_t - theirs_t.numpy()).max() < 1e-5


def test_identity_records_weights_checksum(tiny_model, tiny_model_dir):
    enc = load_encoder(tiny_model, device="cpu")
    ident = enc.identity
    assert ident.dim == 512 and ident.image_size == 32
    assert ident.weights_sha256 and len(ident.weights_sha256) == 64
    assert ident.preprocess["interpolation"] == "bicubic"
    assert spec_key(ModelSpec.from_user(tiny_model, None)) == ident.key


def test_builtin_name_with_checkpoint_file(tiny_builtin):
    name, weights = tiny_builtin
    enc = load_encoder(name, str(weights), device="cpu")
    assert enc.identity.weights_sha256 is not None
    # Same weights as a local-dir folder: the same vectors.
    other = load_encoder(f"local-dir:{weights.parent}", device="cpu")
    t = "a blue star"
    assert np.allclose(enc.encode_texts([t]), other.encode_texts([t]), atol=1e-6)
    assert enc.identity.key == other.identity.key


def test_builtin_name_random_weights(tiny_builtin, caplog):
    name, _ = tiny_builtin
    with caplog.at_level(logging.WARNING):
        enc = load_encoder(name, "random", device="cpu")
    assert enc.identity.pretrained == "random" and enc.identity.weights_sha256 is None
    # Random weights were asked for: no warning that they are random.
    assert not [r for r in caplog.records if "pretrained" in r.getMessage()], caplog.text
    logging.getLogger().warning("No pretrained weights loaded: a later record still shows")
    assert "later record" in caplog.text


def test_builtin_name_without_pretrained_is_refused(tiny_builtin):
    with pytest.raises(ModelLoadError, match="needs --pretrained"):
        load_encoder(tiny_builtin[0], None)


def test_pretrained_tag_from_hf_cache_forces_quickgelu(tiny_builtin, monkeypatch):
    """A tag resolves through open_clip's registry to the (offline) Hugging Face cache, and a
    tag trained with QuickGELU runs with QuickGELU even under a plain config name."""
    name, weights = tiny_builtin
    monkeypatch.setitem(
        open_clip.pretrained._PRETRAINED,
        name,
        {"testtag": open_clip.pretrained._pcfg(hf_hub="clipsearch-test/tiny/", quick_gelu=True)},
    )
    with pytest.raises(ModelLoadError, match="not in the local cache"):
        load_encoder(name, "testtag", device="cpu")
    put_in_hf_cache(
        os.environ["HF_HUB_CACHE"], "clipsearch-test/tiny", {"open_clip_model.safetensors": weights}
    )
    enc = load_encoder(name, "testtag", device="cpu")
    assert enc.identity.pretrained == "testtag"
    acts = {type(m).__name__ for m in enc.model.modules()}
    assert "QuickGELU" in acts


def test_hf_hub_model_from_cache(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="not in the local cache"):
        load_encoder("hf-hub:clipsearch-test/hubmodel", device="cpu")
    put_in_hf_cache(
        os.environ["HF_HUB_CACHE"],
        "clipsearch-test/hubmodel",
        {
            "open_clip_config.json": tiny_model_dir / "open_clip_config.json",
            "open_clip_model.safetensors": tiny_model_dir / "open_clip_model.safetensors",
        },
    )
    enc = load_encoder("hf-hub:clipsearch-test/hubmodel", device="cpu")
    local = load_encoder(f"local-dir:{tiny_model_dir}", device="cpu")
    assert np.allclose(enc.encode_texts(["x"]), local.encode_texts(["x"]), atol=1e-6)


def test_default_model_offline_gives_one_clear_message():
    with pytest.raises(ModelLoadError) as err:
        load_encoder(device="cpu")
    msg = str(err.value)
    assert "ViT-B-16-quickgelu (dfn2b)" in msg and "--pretrained" in msg and "local-dir:" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("model", "pretrained", "match"),
    [
        ("no-such-model", "x", "unknown model"),
        ("ViT-B-16", "no-such-tag", "neither a pretrained tag nor a file"),
        ("ViT-B-16", "/nonexistent/weights.safetensors", "does not exist"),
        ("local-dir:/nonexistent/folder", None, "no open_clip_config.json"),
        ("demo", "openai", "carries its own weights"),
        ("   ", None, "empty model name"),
    ],
)
def test_bad_model_names_are_clear(model, pretrained, match):
    with pytest.raises(ModelLoadError, match=match):
        load_encoder(model, pretrained, device="cpu")


def test_local_dir_without_weights(tmp_path, tiny_model_dir):
    folder = tmp_path / "noweights"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        (tiny_model_dir / "open_clip_config.json").read_text()
    )
    with pytest.raises(ModelLoadError, match="no weights file"):
        load_encoder(f"local-dir:{folder}", device="cpu")


def test_unavailable_device_is_refused(tiny_model):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        load_encoder(tiny_model, device="cuda")


def test_resolve_create_identify_compose_to_load_encoder(tiny_model, tiny_model_dir, tmp_path):
    """load_spec's steps, run one by one, give the model load_encoder gives."""
    spec = ModelSpec.from_user(tiny_model, None)
    plan = resolve(spec)
    weights = str(tiny_model_dir / "open_clip_model.safetensors")
    assert plan.name == tiny_model and plan.local_weights == weights
    assert plan.pretrained and plan.checkpoint() == weights

    model, pp, towers = create(plan, device="cpu")
    assert towers == "both" and not model.training and model.visual is not None
    tokenizer = open_clip.get_tokenizer(plan.name)
    identity = identify(spec, plan, model, tokenizer, pp, "cpu")
    enc = load_encoder(tiny_model, device="cpu")
    assert identity == enc.identity

    text_model, _, text_towers = create(plan, device="cpu", towers="text")
    assert text_towers == "text" and text_model.visual is None  # safetensors: text tower only
    tokens = tokenizer(["a red circle", "a blue square"])
    with torch.no_grad():
        full = model.encode_text(tokens, normalize=True)
        text = text_model.encode_text(tokens, normalize=True)
    assert np.abs(full.numpy() - enc.encode_texts(["a red circle", "a blue square"])).max() < 1e-5
    assert np.abs(full.numpy() - text.numpy()).max() < 1e-6


def test_resolve_plans_each_kind_of_source(tiny_builtin):
    name, weights = tiny_builtin
    random = resolve(ModelSpec.from_user(name, "random"))
    assert random.name == name and not random.pretrained and random.checkpoint() is None
    from_file = resolve(ModelSpec.from_user(name, str(weights)))
    assert from_file.local_weights == from_file.kwargs["pretrained"] == str(weights)
    demo = resolve(ModelSpec.from_user("demo", None))
    assert demo.name.startswith("local-dir:") and demo.local_weights
    # A text-only request that cannot be met (random weights) loads both towers.
    _, _, towers = create(random, device="cpu", towers="text")
    assert towers == "both"


def test_tokenizer_is_built_once_per_model_and_config(tiny_model, tmp_path):
    first = load_encoder(tiny_model, device="cpu")
    second = load_encoder(tiny_model, device="cpu")
    assert second.tokenizer is first.tokenizer
    texts = ["a red circle", "two blue stars"]
    fresh = open_clip.get_tokenizer(ModelSpec.from_user(tiny_model, None).open_clip_name)
    assert torch.equal(first.tokenizer(texts), fresh(texts))

    # Another context length in a rewritten config is a new tokenizer, never the old one.
    folder = save_tiny_model(tmp_path / "tiny")
    name = f"local-dir:{folder}"
    before = load_encoder(name, device="cpu").tokenizer
    config_path = folder / "open_clip_config.json"
    config = json.loads(config_path.read_text())
    config["model_cfg"]["text_cfg"]["context_length"] = 32
    config_path.write_text(json.dumps(config))
    os.utime(config_path, ns=(0, 0))
    after = load_encoder(name, device="cpu").tokenizer
    assert after is not before
    assert after(["x"]).shape[-1] == 32 and before(["x"]).shape[-1] == 77
