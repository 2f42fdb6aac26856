"""The cached image tower: parity with open_clip, its record, and the fallback to open_clip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from clipsearch.models.identity import ModelSpec
from clipsearch.models.imagetower import (
    PARITY_TOLERANCE,
    build_tower,
    cached_image_encoder,
    describe,
    probe_images,
)
from clipsearch.models.loading import load_encoder
from tests.helpers import VISION_VARIANTS, random_clip, save_tiny_model, vision_cfg


def _pixels(size: int) -> torch.Tensor:
    from clipsearch.models.preprocess import ImagePreprocess

    pre = ImagePreprocess.from_config({"size": size})
    return torch.stack([pre(img) for img in probe_images(size)])


def _unit(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).numpy()


@pytest.mark.parametrize("variant", list(VISION_VARIANTS))
def test_tower_matches_open_clip_encode_image(variant):
    model = random_clip(vision_cfg(**VISION_VARIANTS[variant]))
    config = describe(model)
    assert config is not None
    tower = build_tower(config, dict(model.visual.state_dict()))
    pixels = _pixels(config.image_size)
    with torch.inference_mode():
        want = _unit(model.encode_image(pixels))
        got = _unit(tower(pixels))
    assert got.shape == want.shape == (3, 512)
    assert np.abs(got - want).max() <= PARITY_TOLERANCE
    # not a constant: the probe pictures give different vectors
    assert np.abs(got[0] - got[1]).max() > 1e-3


def test_tower_without_projection():
    model = random_clip(vision_cfg())
    model.visual.proj = None  # as open_clip's prune_intermediate_layers(prune_head) leaves it
    config = describe(model)
    assert config is not None and not config.proj and config.output_dim == 64
    tower = build_tower(config, dict(model.visual.state_dict()))
    pixels = _pixels(32)
    with torch.inference_mode():
        assert np.abs(_unit(tower(pixels)) - _unit(model.visual(pixels))).max() <= 1e-5


@pytest.mark.parametrize(
    "vision",
    [
        {"attentional_pool": True, "attn_pooler_heads": 2, "attn_pooler_queries": 4},
        {"ls_init_value": 0.1},
        {"layers": [1, 1, 1, 1], "width": 16, "image_size": 64, "head_width": 16},  # ResNet
    ],
    ids=["attentional-pool", "layer-scale", "modified-resnet"],
)
def test_towers_it_does_not_cover_are_not_described(vision):
    assert describe(random_clip(vision_cfg(**vision))) is None


def _save(tmp_path, name: str, cfg: dict | None = None, seed: int = 0) -> str:
    return f"local-dir:{save_tiny_model(tmp_path / name, seed=seed, cfg=cfg)}"


def test_first_load_records_the_tower_and_later_loads_use_it(tmp_path, photo_dir):
    from PIL import Image

    name = _save(tmp_path, "tiny")
    spec = ModelSpec.from_user(name, None)
    assert cached_image_encoder(spec) is None  # nothing recorded yet
    full = load_encoder(name, device="cpu")
    images = [Image.open(p).convert("RGB") for p in sorted(photo_dir.rglob("*.png"))]
    want = full.encode_images(images)
    image = load_encoder(name, device="cpu", towers="image")
    assert image.towers == "image" and image.identity == full.identity
    assert type(image.model).__module__ == "clipsearch.models.imagetower"
    got = image.encode_images(images)
    assert np.abs(got - want).max() <= PARITY_TOLERANCE
    assert len({tuple(np.round(v, 4)) for v in got}) == len(images)
    # The checkpoint holds the tower in float32: read in place, no copy.
    records = list((_cache_home() / "image-towers").glob("*.json"))
    assert len(records) == 1
    data = json.loads(records[0].read_text())
    assert data["weights"].endswith("open_clip_model.safetensors")
    assert not list((_cache_home() / "image-towers").glob("*.safetensors"))
    with pytest.raises(Exception, match="for images only"):
        image.encode_texts(["a red circle"])


def _cache_home():
    from clipsearch.models.identity import cache_home

    return cache_home()


def test_bf16_tower_holds_bf16_weights_and_matches_the_bf16_model(tmp_path, photo_dir):
    from PIL import Image

    name = _save(tmp_path, "tiny")
    full = load_encoder(name, device="cpu", precision="bf16")
    image = load_encoder(name, device="cpu", precision="bf16", towers="image")
    assert image.towers == "image"
    assert {p.dtype for p in image.model.parameters()} == {torch.bfloat16}
    images = [Image.open(p).convert("RGB") for p in sorted(photo_dir.rglob("*.png"))]
    got, want = image.encode_images(images), full.encode_images(images)
    assert (got * want).sum(axis=1).min() > 0.999


def test_a_changed_checkpoint_drops_the_record(tmp_path):
    name = _save(tmp_path, "tiny")
    load_encoder(name, device="cpu")
    spec = ModelSpec.from_user(name, None)
    assert cached_image_encoder(spec) is not None
    save_tiny_model(tmp_path / "tiny", seed=1)  # new weights under the same name
    assert cached_image_encoder(spec) is None
    # the next load sees the new weights, and records them
    assert load_encoder(name, device="cpu", towers="image").towers == "image"


def test_a_half_precision_checkpoint_gets_a_float32_copy(tmp_path, photo_dir):
    from PIL import Image
    from safetensors.torch import load_file, save_file

    folder = save_tiny_model(tmp_path / "half")
    weights = folder / "open_clip_model.safetensors"
    save_file({k: v.half() for k, v in load_file(str(weights)).items()}, str(weights))
    name = f"local-dir:{folder}"
    full = load_encoder(name, device="cpu")
    image = load_encoder(name, device="cpu", towers="image")
    assert image.towers == "image"
    assert list((_cache_home() / "image-towers").glob("*.safetensors"))
    images = [Image.open(p).convert("RGB") for p in sorted(photo_dir.rglob("*.png"))][:4]
    assert np.abs(image.encode_images(images) - full.encode_images(images)).max() <= 1e-5


def test_towers_it_does_not_cover_fall_back_to_open_clip(tmp_path, photo_dir):
    from PIL import Image

    resnet = {"layers": [1, 1, 1, 1], "width": 16, "image_size": 64, "head_width": 16}
    name = _save(tmp_path, "resnet", vision_cfg(**resnet))
    encoder = load_encoder(name, device="cpu", towers="image")
    assert encoder.towers == "both"  # the whole open_clip model, as before
    assert cached_image_encoder(ModelSpec.from_user(name, None)) is None
    images = [Image.open(p).convert("RGB") for p in sorted(photo_dir.rglob("*.png"))][:2]
    assert encoder.encode_images(images).shape == (2, 512)


def test_random_weights_are_never_recorded():
    encoder = load_encoder("ViT-B-32", "random", device="cpu", towers="image")
    assert encoder.towers == "both"
    assert not (_cache_home() / "image-towers").exists() or not list(
        (_cache_home() / "image-towers").glob("*.json")
    )


def test_indexing_in_a_fresh_process_does_not_import_open_clip(tmp_path, photo_dir):
    from clipsearch import ImageIndex

    name = _save(tmp_path, "tiny")
    with ImageIndex.open_or_create(tmp_path / "idx", name, device="cpu") as index:
        index.add([photo_dir / "shapes"])  # the first load: open_clip, and the record
        reference = {h.path: h.score for h in index.search("a red circle", k=20)}
    script = textwrap.dedent(
        """
        import json, sys
        from clipsearch import ImageIndex
        from clipsearch.models import engines
        engines.NUMPY_MAX_GFLOP = 0.0  # the torch tower, however few the images,
        sys.modules["onnxruntime"] = None  # and whatever the precision
        with ImageIndex.open(sys.argv[1], device="cpu") as index:
            report = index.add([sys.argv[2]])
            hits = {h.path: h.score for h in index.search("a red circle", k=20)}
        heavy = ["open_clip", "torchvision"]
        print(json.dumps({"added": report.added, "hits": hits,
                          "loaded": [m for m in heavy if m in sys.modules]}))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", script, str(tmp_path / "idx"), str(photo_dir)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["added"] == len(list(photo_dir.rglob("*.png"))) - len(reference)
    # the images indexed by open_clip's model keep their scores beside the new ones
    for path, score in reference.items():
        assert abs(out["hits"][path] - score) < 1e-5


def test_a_new_index_of_a_recorded_model_reads_no_weights(tmp_path, photo_dir, monkeypatch):
    from clipsearch import ImageIndex
    from clipsearch.models import engines, imagetower

    monkeypatch.setattr(engines, "NUMPY_MAX_GFLOP", 0.0)  # the torch tower: no small runs,
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # nor ONNX Runtime
    name = _save(tmp_path, "tiny")
    first = load_encoder(name, device="cpu")  # writes the record
    loads = []
    real = imagetower.load_tower
    monkeypatch.setattr(imagetower, "load_tower", lambda *a, **k: loads.append(a) or real(*a, **k))
    with ImageIndex.create(tmp_path / "idx", name, device="cpu") as index:
        assert index.identity == first.identity
        assert loads == []  # the identity came from the record
        assert index.add([photo_dir]).added == 12
        assert len(loads) == 1  # the image tower, once, when the first file needed it
        assert index.image_encoder.towers == "image"
