"""The wheel carries everything clipsearch needs at run time, and works outside the checkout."""

from __future__ import annotations

import compileall
import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "clipsearch"


def package_files() -> set[str]:
    """Every file of the package in the source tree, as the wheel names it: the modules, the
    demo model and its style head, the model configs, the web page, py.typed."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout (so no build/ or egg-info lands in it), with
    the setuptools already installed: no network, no new environment."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(PACKAGE, src / "clipsearch")
    compileall.compile_dir(src / "clipsearch", quiet=1)  # the caches of a checkout in use
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    out = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--quiet", "--wheel-dir", str(out), str(src)],
        check=True,
        cwd=tmp,
    )
    (built,) = out.glob("clipsearch-*.whl")
    return built


def test_the_wheel_holds_the_package_and_nothing_else(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    inside = {n for n in names if not n.startswith("clipsearch-")}  # less the .dist-info
    expected = package_files()
    assert expected - inside == set()
    assert inside - expected == set()  # no caches, no tests, no stray files
    # The files a plain module list would miss, named so that a failure says what is lost.
    data = {n for n in expected if not n.endswith(".py")}
    assert "clipsearch/py.typed" in data
    assert {"clipsearch/models/demo/style/head.json", "clipsearch/web/static/index.html"} <= data
    assert any(n.endswith(".safetensors") for n in data)


def test_the_wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        (meta_name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(z.read(meta_name).decode())
        (ep_name,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        entry_points = z.read(ep_name).decode()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in z.namelist())
    assert meta["Requires-Python"] == ">=3.10"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Documentation", "Issues"} <= urls.keys()
    assert "Typing :: Typed" in meta.get_all("Classifier")
    assert meta["Keywords"] and meta["Summary"]
    assert "clipsearch = clipsearch.cli:run" in entry_points
    assert meta["License-Expression"] == "MIT" and "LICENSE" in meta.get_all("License-File")
    extras = set(meta.get_all("Provides-Extra"))
    assert {"web", "ray", "multilingual", "dev"} <= extras


@pytest.mark.slow
def test_index_and_search_the_samples_from_the_installed_wheel(wheel, tmp_path):
    """`pip install --no-deps --target` the wheel, then run it from a folder outside the
    checkout, with the checkout off the path: the demo model and style head come from the
    wheel."""
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet"]
        + ["--target", str(site), str(wheel)],
        check=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copytree(ROOT / "sample_images", work / "sample_images")
    env = {**os.environ, "PYTHONPATH": str(site), "CLIPSEARCH_INDEX": str(work / "idx")}

    def clipsearch(*args: str) -> str:
        cmd = [sys.executable, "-m", "clipsearch", *args]
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = subprocess.run(
        [sys.executable, "-c", "import clipsearch; print(clipsearch.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(site)
    clipsearch("index", "sample_images", "--model", "demo", "--device", "cpu")
    hits = json.loads(clipsearch("search", "a red circle", "-k", "5", "--json"))
    assert len(hits) == 5 and all(h["path"].startswith(str(work)) for h in hits)
    assert sum("red-circle" in h["path"] for h in hits) >= 3  # the demo model knows its world
    assert all(h["style"] for h in hits)  # the shipped style head labelled them
