"""`clipsearch index`, `reindex` and `repair` through click's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from clipsearch.cli.main import main
from tests.helpers import draw_image


def test_index_prints_a_summary(run, tiny_model, photo_dir):
    result = run("index", photo_dir, "--model", tiny_model)
    assert result.exit_code == 0
    assert "added 12, updated 0, moved 0, removed 0, unchanged 0, failed 0" in result.output
    result = run("index", photo_dir, "--json")
    assert json.loads(result.output)["unchanged"] == 12


def test_index_env_var(tmp_path, tiny_model, photo_dir, monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_INDEX", str(tmp_path / "from-env"))
    runner = CliRunner()
    assert runner.invoke(main, ["index", str(photo_dir), "--model", tiny_model]).exit_code == 0
    assert (tmp_path / "from-env" / "catalog.sqlite").is_file()


def test_model_mismatch_via_cli(run, indexed, tmp_path):
    from tests.helpers import save_tiny_model

    other = save_tiny_model(tmp_path / "other", seed=9)
    result = run("index", indexed, "--model", f"local-dir:{other}")
    assert result.exit_code == 1 and "was built with model" in result.output


def test_new_image_found_in_search_after_reindex(run, indexed):
    draw_image(indexed / "late.png", "orange", "circle")
    run("index", indexed)
    paths = {h["path"] for h in json.loads(run("search", "x", "-k", "50", "--json").output)}
    assert str(indexed / "late.png") in paths


def test_reindex_prints_the_layout_and_its_settings(run, indexed):
    result = run("reindex", "--type", "hnsw")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("reindexed 12 vectors as hnsw (M=")
    assert "efSearch=" in result.output and "MiB" in result.output
    report = json.loads(run("reindex", "--type", "ivf", "--json").output)
    assert report["vectors"] == 12 and report["layout"]["type"] == "ivf"
    assert json.loads(run("info", "--json").output)["index_type"] == "ivf"
    assert len(json.loads(run("search", "x", "-k", "5", "--json").output)) == 5


def test_repair_reports_a_missing_vector_file_and_rebuilds_it(run, indexed, tmp_path):
    (tmp_path / "idx" / "vectors.faiss").unlink()
    result = run("repair")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == "catalog check: ok"
    assert lines[1] == "vector file was missing; rebuilt with 12 vectors"
    report = json.loads(run("repair", "--json").output)
    assert (report["vector_file"], report["vectors"]) == ("ok", 12)


# A `clipsearch index` run in a fresh process, reporting which heavy libraries it imported.
_REPORT_IMPORTS = """
import json, sys
from clipsearch.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = ["torch", "open_clip", "faiss"]
print(json.dumps({"code": code, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def test_index_of_unchanged_moved_or_deleted_files_loads_no_model(
    run, tiny_model, photo_dir, tmp_path
):
    index_dir = str(tmp_path / "idx")  # the run fixture's
    assert run("index", photo_dir, "--model", tiny_model).exit_code == 0

    def index_in_a_fresh_process():
        argv = ["--index", index_dir, "index", str(photo_dir), "--model", tiny_model]
        proc = subprocess.run(
            [sys.executable, "-c", _REPORT_IMPORTS, *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = proc.stdout.strip().splitlines()
        return json.loads(lines[-1]), lines[0] if len(lines) > 1 else proc.stderr

    report, summary = index_in_a_fresh_process()
    assert report == {"code": 0, "loaded": []}, summary
    assert summary.startswith("added 0, updated 0, moved 0, removed 0, unchanged 12, failed 0")

    # A move changes the catalog only: its vector keeps its id, and no library is needed.
    moved = photo_dir / "elsewhere" / "red_circle.png"
    moved.parent.mkdir()
    (photo_dir / "more" / "nested" / "red_circle.png").rename(moved)
    report, summary = index_in_a_fresh_process()
    assert report == {"code": 0, "loaded": []}, summary
    assert summary.startswith("added 0, updated 0, moved 1, removed 0, unchanged 11, failed 0")

    # A deletion removes a vector: FAISS, but still no model.
    (photo_dir / "shapes" / "green_circle.png").unlink()
    report, summary = index_in_a_fresh_process()
    assert report == {"code": 0, "loaded": ["faiss"]}, summary
    assert summary.startswith("added 0, updated 0, moved 0, removed 1, unchanged 11, failed 0")

    hits = json.loads(run("search", "a red circle", "-k", "20", "--json").output)
    paths = {Path(h["path"]) for h in hits}
    assert len(hits) == 11 and moved in paths
    assert photo_dir / "shapes" / "green_circle.png" not in paths
    assert run("index", photo_dir, "--model", tiny_model).output.startswith(
        "added 0, updated 0, moved 0, removed 0, unchanged 11"
    )


def test_index_decodes_on_the_device_and_on_two_devices(run, tiny_model, photo_dir):
    draw_image(photo_dir / "photo.jpg", "purple", "circle", fmt="JPEG")
    args = ("--model", tiny_model, "--device", "cpu", "--decode", "device", "--json")
    result = run("index", photo_dir, *args, "--devices", "cpu,cpu")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[-1])["added"] == 13


def test_index_refuses_gpus_that_are_not_there(run, tiny_model, photo_dir):
    import torch

    if torch.cuda.is_available():
        return
    result = run("index", photo_dir, "--model", tiny_model, "--devices", "0,1")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("clipsearch: error: GPUs requested")
