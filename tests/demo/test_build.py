"""``build`` and ``finetune`` end to end on a few steps of the real demo architecture: the
model they write loads, and ``metrics.json`` records how to repeat each run."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from clipsearch.demo import build as demo_build
from clipsearch.demo.build import build, finetune, resize_input
from clipsearch.demo.gallery import QUERY_KINDS
from clipsearch.demo.recipe import ARCHITECTURE, IMAGE_SIZE
from clipsearch.demo.stream import SynthStream
from clipsearch.errors import ClipsearchError
from clipsearch.models.loading import load_encoder

pytestmark = pytest.mark.slow

SMALL = {"steps": 2, "batch_size": 8, "threads": 1, "precision": "fp32", "progress": False}


@pytest.fixture
def small_pool(monkeypatch):
    """Streams draw a pool of 48 pictures instead of thousands; nothing else changes."""
    monkeypatch.setattr(demo_build, "SynthStream", functools.partial(SynthStream, pool_size=48))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_then_finetune_write_loadable_models_and_their_record(small_pool, tmp_path):
    base = tmp_path / "base"
    report = build(base, work_dir=tmp_path / "work-build", seed=3, **SMALL)
    assert report.steps == 2 and report.output_dir == base
    metrics = json.loads(report.metrics_path.read_text())
    assert metrics["architecture"] == ARCHITECTURE
    assert metrics["train"]["steps"] == 2 and metrics["train"]["threads"] == 1
    assert metrics["train"]["label_facts"] == ["style", "position"]
    assert metrics["train"]["stream"]["pool_size"] == 48
    assert set(metrics["gallery"]["kinds"]) == set(QUERY_KINDS)
    assert metrics["gallery"] == report.gallery.to_dict()
    assert metrics["rebuild"] == (
        "python -m clipsearch.demo build --steps 2 --seed 3 --batch-size 8 --lr 0.001 "
        "--file-like 0.3 --label-loss 1.0 --label-facts style,position --threads 1"
    )
    encoder = load_encoder(f"local-dir:{base}", device="cpu")
    assert encoder.dim == 512 and encoder.image_size == IMAGE_SIZE
    assert not list(base.glob("*.tmp"))

    tuned = tmp_path / "tuned"
    base_sha = _sha(base / "open_clip_model.safetensors")
    report = finetune(tuned, base=base, work_dir=tmp_path / "work-tune", style_head=False, **SMALL)
    metrics = json.loads(report.metrics_path.read_text())
    record = metrics["finetune"]
    assert record["base_sha256"] == base_sha and record["steps"] == 2
    assert record["gallery_before"] == json.loads((base / "metrics.json").read_text())["gallery"]
    assert record["warmup_steps"] == 0  # a tenth of two steps
    assert metrics["train"]["seed"] == 3  # the base's record is kept
    assert metrics["rebuild"].startswith("python -m clipsearch.demo build --steps 2 --seed 3 ")
    assert metrics["rebuild"].endswith(
        "; then python -m clipsearch.demo finetune --steps 2 --seed 6 --batch-size 8 "
        "--lr 0.0003 --warmup 100 --style-rate 0.85 --style-groups 0.5 --style-only 0.35 "
        "--file-like 0.3 --label-loss 1.0 --label-facts style,position --image-size "
        f"{IMAGE_SIZE} --threads 1"
    )
    assert _sha(tuned / "open_clip_model.safetensors") != base_sha
    load_encoder(f"local-dir:{tuned}", device="cpu")

    with pytest.raises(ClipsearchError, match="fine-tuned already"):
        finetune(tmp_path / "again", base=tuned, work_dir=tmp_path / "w", **SMALL)


def test_resize_input_writes_a_whole_model_folder(tmp_path):
    from clipsearch.models.identity import DEMO_DIR

    out = resize_input(DEMO_DIR, tmp_path / "bigger", IMAGE_SIZE * 2)
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.json",
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]
    assert (out / "metrics.json").read_bytes() == (DEMO_DIR / "metrics.json").read_bytes()
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["preprocess_cfg"]["size"] == [IMAGE_SIZE * 2] * 2
    patch = config["model_cfg"]["vision_cfg"]["patch_size"]
    grid = IMAGE_SIZE * 2 // patch
    pos = load_file(out / "open_clip_model.safetensors")["visual.positional_embedding"]
    assert pos.shape[0] == 1 + grid * grid


def test_bilingual_trains_the_text_tower_only_and_carries_the_style_head(small_pool, tmp_path):
    from clipsearch.demo.bilingual import bilingual
    from clipsearch.demo.stylehead import build_style_head
    from clipsearch.style.head import STYLE_DIR, StyleHead

    base = tmp_path / "base"
    build(base, work_dir=tmp_path / "work-build", seed=3, **SMALL)
    head = build_style_head(base, n=60)
    base_sha = _sha(base / "open_clip_model.safetensors")
    out = tmp_path / "bilingual"
    report = bilingual(out, base=base, work_dir=tmp_path / "work-ko", pool_size=48, **SMALL)

    assert report.steps == 2 and report.gallery_ko is not None
    assert report.gallery.lang == "en" and report.gallery_ko.lang == "ko"
    metrics = json.loads(report.metrics_path.read_text())
    record = metrics["bilingual"]
    assert record["lock_image"] and record["context_length"] == 96
    assert record["stream"]["korean"] == 0.5 and record["steps"] == 2
    assert set(record["validation_by_language"]) == {"en", "ko"}
    assert metrics["gallery"] == report.gallery.to_dict()
    assert metrics["gallery_ko"] == report.gallery_ko.to_dict()
    assert metrics["gallery_ko"]["kinds"]["count"]["example"] in (
        "갈색 네모 두 개",
        "갈색 네모 세 개",
    )
    assert metrics["train"]["seed"] == 3  # the base's record is kept
    assert metrics["rebuild"].endswith(
        "; then python -m clipsearch.demo bilingual --steps 2 --seed 7 --batch-size 8 "
        "--lr 0.0005 --warmup 100 --korean 0.5 --context-length 96 --pool-size 48 "
        "--style-groups 0.25 --style-only 0.1 --file-like 0.3 --threads 1"
    )
    assert _sha(base / "open_clip_model.safetensors") == base_sha  # the base is left alone

    before, after = (load_file(d / "open_clip_model.safetensors") for d in (base, out))
    assert after["positional_embedding"].shape == (96, 128)
    for name, tensor in before.items():
        if name.startswith("visual."):
            assert after[name].dtype == tensor.dtype and after[name].equal(tensor), name
    assert not after["token_embedding.weight"].equal(before["token_embedding.weight"])

    # The head is the base's, bound to the new weights, whose image embeddings are the base's.
    new = load_encoder(f"local-dir:{out}", device="cpu")
    carried = StyleHead.load(out / STYLE_DIR, backbone=new.identity.key)
    assert metrics["style_head"]["carried_over_from"] == head.backbone != new.identity.key
    kept, trained = carried.weights, head.weights
    assert kept.keys() == trained.keys() and all(np.array_equal(kept[k], trained[k]) for k in kept)

    with pytest.raises(ClipsearchError, match="bilingual already"):
        bilingual(tmp_path / "again", base=out, work_dir=tmp_path / "w", **SMALL)


def test_widen_context_keeps_what_fits_the_old_context(tmp_path):
    from clipsearch.models.identity import DEMO_DIR

    old = json.loads((DEMO_DIR / "open_clip_config.json").read_text())
    length = old["model_cfg"]["text_cfg"]["context_length"]
    out = demo_build.widen_context(DEMO_DIR, tmp_path / "wide", length + 16)
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"]["text_cfg"]["context_length"] == length + 16
    before = load_file(DEMO_DIR / "open_clip_model.safetensors")
    after = load_file(out / "open_clip_model.safetensors")
    pos = after["positional_embedding"]
    assert pos.shape[0] == length + 16 and pos[:length].equal(
        before["positional_embedding"].float()
    )
    assert 0.005 < float(pos[length:].std()) < 0.015  # drawn as open_clip draws new rows

    text = ["a red circle", "three small blue stars on the left", "빨간 원"]
    wide = load_encoder(f"local-dir:{out}", device="cpu").encode_texts(text)
    shipped = load_encoder(f"local-dir:{DEMO_DIR}", device="cpu").encode_texts(text)
    assert np.allclose(wide, shipped, atol=1e-6)
    with pytest.raises(ClipsearchError, match="shorter than the model's"):
        demo_build.widen_context(DEMO_DIR, tmp_path / "narrow", length - 1)
