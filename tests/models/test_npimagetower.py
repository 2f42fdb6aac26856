"""The NumPy image tower: parity with the torch tower, the policy that picks it, and an index
run of a few photos that never imports torch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from clipsearch.models.engines import NUMPY_MAX_GFLOP, image_engine
from clipsearch.models.identity import ModelSpec
from clipsearch.models.imagetower import (
    ImageTowerConfig,
    VisionTower,
    build_tower,
    describe,
)
from clipsearch.models.loading import load_encoder, load_image_encoder
from clipsearch.models.npimagetower import (
    PARITY_TOLERANCE,
    NumpyImageEncoder,
    NumpyImageTower,
    cached_numpy_image_encoder,
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


def _both(config: ImageTowerConfig, state: dict) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of the probe images from the torch tower and the NumPy tower."""
    tower = build_tower(config, state)
    numpy_tower = NumpyImageTower(config, {k: v.numpy() for k, v in state.items()})
    pixels = probe_pixels(config.image_size)
    with torch.inference_mode():
        want = unit_rows(tower(torch.from_numpy(pixels)).numpy())
    return want, unit_rows(numpy_tower(pixels))


@pytest.mark.parametrize("variant", list(VISION_VARIANTS))
def test_numpy_tower_matches_the_torch_tower(variant):
    model = random_clip(vision_cfg(**VISION_VARIANTS[variant]))
    config = describe(model)
    assert config is not None
    want, got = _both(config, dict(model.visual.state_dict()))
    assert got.shape == want.shape == (3, 512)
    assert np.abs(got - want).max() <= PARITY_TOLERANCE
    assert np.abs(got[0] - got[1]).max() > 1e-3  # the probes give different vectors
    with torch.inference_mode():  # and so does open_clip itself
        oc = unit_rows(
            model.encode_image(torch.from_numpy(probe_pixels(config.image_size))).numpy()
        )
    assert np.abs(got - oc).max() <= PARITY_TOLERANCE


def test_numpy_tower_without_projection_and_with_tanh_gelu():
    model = random_clip(vision_cfg())
    model.visual.proj = None
    config = describe(model)
    assert config is not None and not config.proj
    want, got = _both(config, dict(model.visual.state_dict()))
    assert got.shape == (3, 64) and np.abs(got - want).max() <= PARITY_TOLERANCE
    # GELU's tanh form (open_clip's act_kwargs approximate="tanh"), torch tower against NumPy
    tanh = dataclasses.replace(describe(random_clip(vision_cfg())), activation="tanh")
    state = dict(random_clip(vision_cfg(), seed=3).visual.state_dict())
    want, got = _both(tanh, state)
    assert np.abs(got - want).max() <= PARITY_TOLERANCE
    exact = dataclasses.replace(tanh, activation="none")
    assert np.abs(_both(exact, state)[1] - got).max() > 1e-6  # the activation is honoured


@pytest.mark.parametrize("variant", ["class-token", "avg-pool", "no-ln-pre"])
def test_tensor_shapes_are_the_torch_towers(variant):
    config = describe(random_clip(vision_cfg(**VISION_VARIANTS[variant])))
    torch_shapes = {k: tuple(v.shape) for k, v in VisionTower(config).state_dict().items()}
    assert config.tensor_shapes() == torch_shapes


@pytest.mark.slow
def test_numpy_tower_matches_on_vit_b_32():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()
    config = describe(model)
    assert config is not None and config.layers == 12
    want, got = _both(config, dict(model.visual.state_dict()))
    assert np.abs(got - want).max() <= PARITY_TOLERANCE


def prefers_numpy(*args: object) -> bool:
    return image_engine(*args) == "numpy"  # type: ignore[arg-type]


def test_the_policy_takes_numpy_for_few_images_on_the_cpu_in_fp32():
    b32 = vit_b32_config()
    b16 = dataclasses.replace(b32, patch_size=16)
    assert 8.5 < b32.gflop < 9.0 and 34.5 < b16.gflop < 36.0  # 4.4 and 17.6 G multiply-adds
    assert prefers_numpy(1, b32) and prefers_numpy(1, b16)
    assert prefers_numpy(1, b32, "cpu", "fp32")
    many = int(NUMPY_MAX_GFLOP / b32.gflop) + 1
    assert prefers_numpy(many - 1, b32) and not prefers_numpy(many, b32)
    assert not prefers_numpy(None, b32)  # unknown, or options only torch serves
    assert not prefers_numpy(1, b32, "cuda") and not prefers_numpy(1, b32, "auto", "bf16")


def test_load_image_encoder_takes_numpy_once_recorded(tmp_path, photo_dir):
    from PIL import Image

    name = local_dir_model(tmp_path)
    spec = ModelSpec.from_user(name, None)
    first = load_image_encoder(spec, images=1, device="cpu")
    assert not isinstance(first, NumpyImageEncoder)  # no record yet: open_clip, which writes it
    small = load_image_encoder(spec, images=3, device="cpu")
    assert isinstance(small, NumpyImageEncoder) and small.identity == first.identity
    assert not isinstance(load_image_encoder(spec, images=None, device="cpu"), NumpyImageEncoder)
    assert not isinstance(
        load_image_encoder(spec, images=1, device="cpu", precision="bf16"), NumpyImageEncoder
    )
    images = [Image.open(p).convert("RGB") for p in sorted(photo_dir.rglob("*.png"))]
    want = load_encoder(name, device="cpu").encode_images(images)
    got = small.encode_images(images)
    assert np.abs(got - want).max() <= PARITY_TOLERANCE
    assert len({tuple(np.round(v, 4)) for v in got}) == len(images)
    # the weights are the checkpoint's own pages, mapped: not copied into the process
    assert all(not a.flags.owndata for a in small.tower.tensors.values())
    with pytest.raises(Exception, match="for images only"):
        small.encode_texts(["a red circle"])


def test_a_changed_checkpoint_is_not_read_by_numpy(tmp_path):
    name = local_dir_model(tmp_path)
    spec = ModelSpec.from_user(name, None)
    load_encoder(name, device="cpu")
    assert cached_numpy_image_encoder(spec) is not None
    save_tiny_model(tmp_path / "tiny", seed=1)  # new weights under the same name
    assert cached_numpy_image_encoder(spec) is None


def test_adding_a_photo_imports_no_torch_and_matches_the_torch_path(tmp_path, photo_dir):
    from clipsearch import ImageIndex
    from clipsearch.cli.main import main
    from tests.helpers import draw_image

    name = local_dir_model(tmp_path)
    index_dir = tmp_path / "idx"
    argv = ["--index", str(index_dir), "index", str(photo_dir), "--model", name]
    with pytest.raises(SystemExit) as first:  # the first run: open_clip, and the records
        main(argv)
    assert first.value.code == 0
    new = draw_image(photo_dir / "new" / "purple_circle.png", "purple", "circle").resolve()
    report, lines, out = cli_in_a_new_process(argv, ["torch", "open_clip", "torchvision"])
    assert report == {"code": 0, "loaded": []}, out
    assert lines[0].startswith("added 1, updated 0, moved 0, removed 0, unchanged 12")
    with ImageIndex.open(index_dir, device="cpu") as index:
        stored = index.catalog.vector(index.catalog.find_path(str(new)).id)
    torch_path = load_encoder(name, device="cpu", towers="image")
    assert torch_path.towers == "image"
    assert np.abs(stored - torch_path.encode_file(new)).max() <= PARITY_TOLERANCE


def test_a_run_that_asks_for_torch_gets_torch(tmp_path, photo_dir):
    from clipsearch import ImageIndex

    name = local_dir_model(tmp_path)
    load_encoder(name, device="cpu")  # the record
    with ImageIndex.create(tmp_path / "idx", name, device="cpu") as index:
        used = []
        real = index._indexing_encoder
        index._indexing_encoder = lambda n: used.append(real(n)) or used[-1]
        assert index.add([photo_dir / "shapes"]).added == 6
        assert isinstance(used[-1], NumpyImageEncoder)  # six photos: NumPy
        assert index.add([photo_dir / "more"], decode="device").added == 6
        assert not isinstance(used[-1], NumpyImageEncoder)  # decoding in batches is torch's
        hits = index.search("a red circle", k=12)
    assert len(hits) == 12
