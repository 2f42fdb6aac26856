"""The ONNX Runtime image tower: its graph bytes, parity with the torch and NumPy towers, the
engine policy, the fallbacks, and index runs that take it without importing torch."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from clipsearch.models import engines
from clipsearch.models.cpuencoder import CpuImageEncoder
from clipsearch.models.engines import NUMPY_MAX_GFLOP, ONNX_MAX_GFLOP, image_engine
from clipsearch.models.identity import ModelSpec
from clipsearch.models.imagetower import ImageTowerConfig, build_tower, describe, probe_images
from clipsearch.models.loading import load_encoder, load_image_encoder
from clipsearch.models.npimagetower import NumpyImageEncoder, NumpyImageTower
from clipsearch.models.onnxtower import (
    PARITY_TOLERANCE,
    OnnxImageEncoder,
    OnnxImageTower,
    cached_onnx_image_encoder,
)
from tests.helpers import (
    VISION_VARIANTS,
    cli_in_a_new_process,
    local_dir_model,
    probe_pixels,
    random_clip,
    save_tiny_model,
    unit_rows,
    vision_cfg,
    vit_b32_config,
)


def _three(config: ImageTowerConfig, state: dict) -> tuple[np.ndarray, ...]:
    """Unit vectors of the probe images: the torch tower, the NumPy tower, ONNX Runtime."""
    arrays = {k: v.numpy() for k, v in state.items()}
    pixels = probe_pixels(config.image_size)
    with torch.inference_mode():
        want = unit_rows(build_tower(config, state)(torch.from_numpy(pixels)).numpy())
    numpy_tower = NumpyImageTower(config, arrays)
    onnx_tower = OnnxImageTower(config, arrays, threads=1)
    return want, unit_rows(numpy_tower(pixels)), unit_rows(onnx_tower(pixels))


# --- the graph --------------------------------------------------------------------------------


def test_the_tower_graph_passes_onnx_checks():
    import onnx

    from clipsearch.models.onnxtower import tower_graph

    for variant in ("class-token", "quick-gelu", "avg-pool-ln-after", "no-ln-pre"):
        config = describe(random_clip(vision_cfg(**VISION_VARIANTS[variant])))
        onnx.checker.check_model(onnx.ModelProto.FromString(tower_graph(config)), full_check=True)


# --- parity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VISION_VARIANTS))
def test_onnx_tower_matches_torch_numpy_and_open_clip(variant):
    model = random_clip(vision_cfg(**VISION_VARIANTS[variant]))
    config = describe(model)
    assert config is not None
    want, numpy_vectors, got = _three(config, dict(model.visual.state_dict()))
    assert got.shape == want.shape == (3, 512)
    assert np.abs(got - want).max() <= PARITY_TOLERANCE
    assert np.abs(got - numpy_vectors).max() <= PARITY_TOLERANCE
    assert np.abs(got[0] - got[1]).max() > 1e-3  # the probes give different vectors
    with torch.inference_mode():
        oc = unit_rows(
            model.encode_image(torch.from_numpy(probe_pixels(config.image_size))).numpy()
        )
    assert np.abs(got - oc).max() <= PARITY_TOLERANCE


def test_onnx_tower_without_projection_and_with_each_gelu():
    model = random_clip(vision_cfg())
    model.visual.proj = None
    config = describe(model)
    assert config is not None and not config.proj
    want, _, got = _three(config, dict(model.visual.state_dict()))
    assert got.shape == (3, 64) and np.abs(got - want).max() <= PARITY_TOLERANCE
    state = dict(random_clip(vision_cfg(), seed=3).visual.state_dict())
    out = {}
    for act in ("tanh", "none", "quick"):
        c = dataclasses.replace(describe(random_clip(vision_cfg())), activation=act)
        want, numpy_vectors, out[act] = _three(c, state)
        assert np.abs(out[act] - want).max() <= PARITY_TOLERANCE
        assert np.abs(out[act] - numpy_vectors).max() <= PARITY_TOLERANCE
    assert np.abs(out["tanh"] - out["none"]).max() > 1e-6  # the activation is honoured
    assert np.abs(out["quick"] - out["none"]).max() > 1e-6


def test_batches_of_one_and_past_the_batch_size_give_the_same_rows(tmp_path):
    name = local_dir_model(tmp_path)
    spec = ModelSpec.from_user(name, None)
    load_encoder(name, device="cpu")  # the record
    encoder = cached_onnx_image_encoder(spec)
    assert isinstance(encoder, OnnxImageEncoder) and isinstance(encoder, CpuImageEncoder)
    rng = np.random.default_rng(0)
    size = encoder.image_size
    pixels = rng.standard_normal((encoder.batch_size + 3, 3, size, size)).astype(np.float32)
    whole = encoder.encode_pixels(pixels)
    ones = np.concatenate([encoder.encode_pixels(p[None]) for p in pixels])
    assert whole.shape == (encoder.batch_size + 3, encoder.dim)
    assert np.abs(whole - ones).max() <= PARITY_TOLERANCE
    assert np.allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="expected"):
        encoder.encode_pixels(pixels[:, :, :-1])


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["ViT-B-32", "ViT-B-32-quickgelu"])
def test_onnx_tower_matches_on_vit_b_32_from_a_checkpoint(tmp_path, model_name):
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(model_name).eval()
    weights = tmp_path / f"{model_name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    whole = load_encoder(model_name, str(weights), device="cpu")  # and the record
    spec = ModelSpec.from_user(model_name, str(weights))
    onnx_encoder = cached_onnx_image_encoder(spec)
    assert onnx_encoder is not None
    config = onnx_encoder.tower.config
    assert config.layers == 12 and config.activation == (
        "quick" if "quick" in model_name else "none"
    )
    images = probe_images(224)
    want = whole.encode_images(images)
    got = onnx_encoder.encode_images(images)
    numpy_vectors = load_image_encoder(spec, images=1, device="cpu").encode_images(images)
    assert np.abs(got - want).max() <= PARITY_TOLERANCE
    assert np.abs(got - numpy_vectors).max() <= PARITY_TOLERANCE


# --- the policy --------------------------------------------------------------------------------


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(engines, "may_have_gpu", lambda: False)


@pytest.mark.parametrize("bf16", [True, False])
def test_the_policy_by_work_precision_and_cpu(monkeypatch, cpu_only, bf16):
    monkeypatch.setattr(engines, "cpu_flags_have_bf16", lambda: bf16)
    b32 = vit_b32_config()
    small = int(NUMPY_MAX_GFLOP / b32.gflop)
    mid = int(ONNX_MAX_GFLOP / b32.gflop)
    assert image_engine(small, b32) == "numpy"
    assert image_engine(small + 1, b32) == "onnx"
    assert image_engine(mid, b32) == "onnx"
    # past the break-even, torch bf16 where the CPU has it, ONNX Runtime's fp32 elsewhere
    assert image_engine(mid + 1, b32) == ("torch" if bf16 else "onnx")
    assert image_engine(100_000, b32, "cpu", "fp32") == "onnx"  # fp32 asked: ORT's is faster
    assert image_engine(100_000, b32, "auto", "fp32") == "onnx"
    # what only torch does, or without onnxruntime
    assert image_engine(None, b32) == "torch"
    assert image_engine(small + 1, b32, "cuda") == "torch"
    assert image_engine(1, b32, "auto", "bf16") == "torch"
    assert image_engine(small + 1, b32, onnx=False) == "torch"
    assert image_engine(small, b32, onnx=False) == "numpy"


def test_the_policy_leaves_auto_to_torch_where_a_gpu_may_be(monkeypatch):
    monkeypatch.setattr(engines, "may_have_gpu", lambda: True)
    monkeypatch.setattr(engines, "cpu_flags_have_bf16", lambda: False)
    b32 = vit_b32_config()
    assert image_engine(1, b32) == "numpy"  # done before torch would have found the GPU
    assert image_engine(100, b32) == "torch"
    assert image_engine(100, b32, "auto", "fp32") == "torch"
    assert image_engine(100, b32, "cpu") == "onnx"  # the CPU asked for: no GPU to find


def test_the_cpu_flags_check_needs_no_torch():
    code = (
        "import sys; from clipsearch.models import engines, runtime; "
        "runtime.cpu_flags_have_bf16(); runtime.may_have_gpu(); "
        "print('torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "False", out.stderr


def test_load_image_encoder_takes_onnx_for_a_mid_size_run(tmp_path, monkeypatch, cpu_only):
    name = local_dir_model(tmp_path)
    spec = ModelSpec.from_user(name, None)
    first = load_image_encoder(spec, images=1, device="cpu")
    assert first.engine == "torch"  # no record yet: open_clip, which writes it
    assert load_image_encoder(spec, images=1, device="cpu").engine == "numpy"
    monkeypatch.setattr(engines, "NUMPY_MAX_GFLOP", 0.0)  # every run is past NumPy's
    mid = load_image_encoder(spec, images=5, device="cpu", precision="fp32")
    assert isinstance(mid, OnnxImageEncoder) and mid.identity == first.identity
    assert load_image_encoder(spec, images=5, device="cpu", precision="bf16").engine == "torch"
    # the session reads the checkpoint's own mapped pages: no copy
    assert all(not a.flags.owndata for a in mid.tower.tensors.values())
    with pytest.raises(Exception, match="for images only"):
        mid.encode_texts(["a red circle"])


def test_without_onnxruntime_the_other_engines_run(tmp_path, monkeypatch, cpu_only):
    name = local_dir_model(tmp_path)
    spec = ModelSpec.from_user(name, None)
    load_encoder(name, device="cpu")  # the record
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    assert cached_onnx_image_encoder(spec) is None
    assert isinstance(load_image_encoder(spec, images=1, device="cpu"), NumpyImageEncoder)
    monkeypatch.setattr(engines, "NUMPY_MAX_GFLOP", 0.0)
    assert load_image_encoder(spec, images=5, device="cpu", precision="fp32").engine == "torch"


def test_an_invalid_record_is_not_read_by_onnx(tmp_path, monkeypatch, cpu_only):
    name = local_dir_model(tmp_path)
    spec = ModelSpec.from_user(name, None)
    load_encoder(name, device="cpu")
    assert cached_onnx_image_encoder(spec) is not None
    save_tiny_model(tmp_path / "tiny", seed=1)  # new weights under the same name
    assert cached_onnx_image_encoder(spec) is None
    monkeypatch.setattr(engines, "NUMPY_MAX_GFLOP", 0.0)
    assert load_image_encoder(spec, images=5, device="cpu", precision="fp32").engine == "torch"


# --- index runs ------------------------------------------------------------------------------


# `clipsearch index` in a fresh process, every run past NumPy's size: what it imported (the
# graph was kept by an earlier session: onnx builds it once per tower shape).
def test_a_mid_size_run_imports_no_torch_and_matches_the_torch_path(tmp_path, photo_dir):
    from clipsearch import ImageIndex
    from clipsearch.cli.main import main

    name = local_dir_model(tmp_path)
    index_dir = tmp_path / "idx"
    argv = ["--index", str(index_dir), "index", "--model", name]
    load_encoder(name, device="cpu")  # the record,
    assert cached_onnx_image_encoder(ModelSpec.from_user(name, None))  # and the kept graph
    argv += ["--device", "cpu", "--precision", "fp32"]
    with pytest.raises(SystemExit) as first:  # the first run: open_clip, and the records
        main([*argv, str(photo_dir / "shapes")])
    assert first.value.code == 0
    past_numpy = "from clipsearch.models import engines; engines.NUMPY_MAX_GFLOP = 0.0"
    heavy = ["torch", "open_clip", "torchvision", "onnx"]
    report, lines, out = cli_in_a_new_process([*argv, "--json", photo_dir], heavy, past_numpy)
    assert report == {"code": 0, "loaded": []}, out
    report = json.loads(lines[0])
    assert report["added"] == 6 and report["engine"] == "onnx"
    # half the index by torch, half by ONNX Runtime: one space
    torch_path = load_encoder(name, device="cpu", towers="image")
    with ImageIndex.open(index_dir, device="cpu") as index:
        for path in sorted(photo_dir.rglob("*.png")):
            stored = index.catalog.vector(index.catalog.find_path(str(path.resolve())).id)
            assert np.abs(stored - torch_path.encode_file(path)).max() <= PARITY_TOLERANCE
        # each file, encoded by the engine that did not index it, finds itself first
        onnx_encoder = cached_onnx_image_encoder(ModelSpec.from_user(name, None))
        for path in sorted(photo_dir.rglob("*.png")):
            by = onnx_encoder if "shapes" in path.parts else torch_path
            hits = index.search_vector(by.encode_file(path), k=3)
            assert hits[0].path == str(path.resolve()) and hits[0].score > 1 - 1e-5
            assert hits[1].score < hits[0].score
