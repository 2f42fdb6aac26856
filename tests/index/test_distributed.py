"""Indexing through Ray gives what the local executor gives."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from clipsearch import ImageIndex
from clipsearch.cli.main import main
from tests.helpers import draw_image, ray_without_auth


def test_without_ray_the_message_says_how_to_install(tmp_path, photo_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = CliRunner().invoke(
        main, ["--index", str(tmp_path / "i"), "index", str(photo_dir), "--executor", "ray"]
    )
    assert result.exit_code == 1
    assert result.output.strip() == (
        "clipsearch: error: --executor ray needs Ray: pip install 'clipsearch[ray]'"
    )
    assert not (tmp_path / "i").exists()


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    with ray_without_auth():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield
        ray.shutdown()


def vectors_by_path(index: ImageIndex) -> dict[str, np.ndarray]:
    records = index.catalog.images(index.catalog.ids().tolist())
    return {r.path: index.catalog.vector(i) for i, r in records.items()}


@pytest.mark.slow
def test_ray_matches_local(ray_local, tmp_path, tiny_model, photo_dir):
    (photo_dir / "broken.jpg").write_text("not a photo")
    with ImageIndex.open_or_create(tmp_path / "local", model=tiny_model) as local:
        want = local.add([photo_dir])
        local_vectors = vectors_by_path(local)
        local_errors = [(e.path, e.reason) for e in local.errors()]
    with ImageIndex.open_or_create(tmp_path / "ray", model=tiny_model) as dist:
        from clipsearch.index.distributed import RayOptions

        got = dist.add([photo_dir], executor=RayOptions(actors=2, shard_size=5))
        ray_vectors = vectors_by_path(dist)
        assert [(e.path, e.reason) for e in dist.errors()] == local_errors
        assert (got.added, got.failed) == (want.added, want.failed) == (12, 1)
        assert ray_vectors.keys() == local_vectors.keys()
        for path, vec in local_vectors.items():
            assert np.allclose(ray_vectors[path], vec, atol=1e-5), path
        # Incremental on Ray too: a new file and a moved one.
        draw_image(photo_dir / "late.png", "orange", "circle")
        (photo_dir / "shapes" / "red_square.png").rename(photo_dir / "moved.png")
        again = dist.add([photo_dir], executor=RayOptions(actors=1, shard_size=4))
        assert (again.added, again.moved, again.unchanged) == (1, 1, 11)
        assert set(dist.vectors.ids().tolist()) == set(dist.catalog.ids().tolist())


@pytest.mark.slow
def test_cli_ray_executor(ray_local, tmp_path, tiny_model, photo_dir):
    result = CliRunner().invoke(
        main,
        [
            "--index",
            str(tmp_path / "idx"),
            "index",
            str(photo_dir),
            "--model",
            tiny_model,
            "--executor",
            "ray",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert '"added": 12' in result.output


@pytest.mark.slow
def test_ray_indexes_the_frames_of_videos_as_local_does(ray_local, tmp_path, tiny_model):
    pytest.importorskip("av")
    from clipsearch.index.distributed import RayOptions
    from tests.helpers import make_video

    make_video(tmp_path / "clips" / "a.mp4")
    draw_image(tmp_path / "clips" / "b.png", "orange", "circle")
    frames = {}
    for name, executor in [("local", None), ("ray", RayOptions(actors=1, shard_size=2))]:
        with ImageIndex.open_or_create(tmp_path / name, model=tiny_model) as index:
            report = index.add([tmp_path / "clips"], executor=executor, video_interval=2.0)
            assert report.added == 2
            records = index.catalog.images(index.catalog.ids().tolist())
            frames[name] = {
                (r.rel, r.frame_time): index.catalog.vector(i) for i, r in records.items()
            }
            assert set(index.vectors.ids().tolist()) == set(index.catalog.ids().tolist())
    assert frames["ray"].keys() == frames["local"].keys()
    # the image, and the video every 2 s (at the default 5 s it would be 3 frames): the
    # actors take the frames the index was asked for
    assert len(frames["local"]) >= 1 + 6
    for key, vec in frames["local"].items():
        assert np.allclose(frames["ray"][key], vec, atol=1e-5), key
