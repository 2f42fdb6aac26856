"""ModelSpec is the one parser of model names: what kind a name is, where its weights are, and
what open_clip is asked for. No torch here."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipsearch.errors import ModelLoadError
from clipsearch.models.identity import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    DEMO_DIR,
    ModelSpec,
    checkpoint_in_folder,
    weights_file,
)


def test_each_kind_of_name_is_parsed_once(tmp_path, tiny_model_dir):
    demo = ModelSpec.from_user("demo", None)
    assert demo.kind == "demo" and demo.local_dir == DEMO_DIR and demo.hf_repo is None
    assert demo.open_clip_name == f"local-dir:{DEMO_DIR}"
    assert weights_file(demo) == checkpoint_in_folder(DEMO_DIR)

    local = ModelSpec.from_user(f"  local-dir:{tiny_model_dir}/../tiny ", None)
    assert local.kind == "local-dir" and local.local_dir == tiny_model_dir.resolve()
    assert local.model == local.open_clip_name == f"local-dir:{tiny_model_dir.resolve()}"
    assert weights_file(local) == str(tiny_model_dir.resolve() / "open_clip_model.safetensors")

    hub = ModelSpec.from_user("hf-hub:org/repo", None)
    assert hub.kind == "hf-hub" and hub.hf_repo == "org/repo" and hub.local_dir is None
    assert hub.open_clip_name == "hf-hub:org/repo" and weights_file(hub) is None

    default = ModelSpec.from_user(None, None)
    assert (default.model, default.pretrained) == (DEFAULT_MODEL, DEFAULT_PRETRAINED)
    assert default.kind == "builtin" and default.pretrained_file is None
    assert not default.random_weights and weights_file(default) is None


def test_pretrained_is_a_tag_a_file_or_random(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("w.safetensors").write_bytes(b"x")
    as_file = ModelSpec.from_user("ViT-B-16", "w.safetensors")
    assert as_file.pretrained == as_file.pretrained_file == str(tmp_path / "w.safetensors")
    assert weights_file(as_file) == as_file.pretrained_file
    missing = ModelSpec.from_user("ViT-B-16", "gone/w.safetensors")
    assert missing.pretrained_file == str(tmp_path / "gone/w.safetensors")
    assert weights_file(missing) is None  # named as a file, but there is none
    random = ModelSpec.from_user("ViT-B-16", "random")
    assert random.random_weights and random.pretrained_file is None
    tag = ModelSpec.from_user("ViT-B-16", "openai")
    assert not tag.random_weights and tag.pretrained_file is None


@pytest.mark.parametrize("model", ["demo", "local-dir:/x", "hf-hub:org/repo"])
def test_names_that_carry_their_weights_refuse_pretrained(model):
    with pytest.raises(ModelLoadError, match=f"model {model} carries its own weights"):
        ModelSpec.from_user(model, "openai")
