"""`link_results`: a folder of rank-named symbolic links that a later call refreshes, and that
never costs a real file."""

from __future__ import annotations

import os

import pytest

from clipsearch.errors import LinkFolderError
from clipsearch.index.links import RECORD_NAME, link_name, link_results


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    paths = []
    for name in ["beach.jpg", "dog.PNG", "city.webp", "noext"]:
        (folder / name).write_bytes(name.encode())
        paths.append(folder / name)
    return paths


def links_in(folder):
    return sorted(n for n in os.listdir(folder) if n != RECORD_NAME)


def test_creates_the_folder_with_ranked_absolute_links(images, tmp_path, monkeypatch):
    monkeypatch.chdir(images[0].parent)
    target = tmp_path / "new" / "results"
    report = link_results(["beach.jpg", images[1]], target)  # a relative path too
    assert report.links == ("001-beach.jpg", "002-dog.PNG") and report.removed == 0
    assert links_in(target) == list(report.links)
    for name, image in zip(report.links, images[:2], strict=True):
        link = target / name
        assert link.is_symlink() and os.path.isabs(os.readlink(link))
        assert link.read_bytes() == image.read_bytes()


def test_a_second_call_replaces_its_own_links(images, tmp_path):
    target = tmp_path / "out"
    link_results(images[:3], target)
    report = link_results(images[3:], target)
    assert report.removed == 3
    assert links_in(target) == ["001-noext"]
    assert (target / "001-noext").resolve() == images[3]
    assert link_results([], target).removed == 1 and links_in(target) == []
    assert all(p.read_bytes() == p.name.encode() for p in images)  # the targets are untouched


@pytest.mark.parametrize("intruder", ["file", "folder", "foreign link", "replaced link"])
def test_refuses_a_folder_with_anything_else_and_deletes_nothing(images, tmp_path, intruder):
    target = tmp_path / "out"
    link_results(images[:2], target)
    if intruder == "file":
        (target / "holiday.jpg").write_text("mine")
    elif intruder == "folder":
        (target / "keep").mkdir()
    elif intruder == "foreign link":
        (target / "mine.jpg").symlink_to(images[3])
    else:  # the user put a real file where clipsearch's link was
        (target / "001-beach.jpg").unlink()
        (target / "001-beach.jpg").write_text("mine")
    before = {n: os.path.islink(target / n) for n in os.listdir(target)}
    with pytest.raises(LinkFolderError, match="did not put there"):
        link_results(images[2:], target)
    assert {n: os.path.islink(target / n) for n in os.listdir(target)} == before
    if intruder in ("file", "replaced link"):
        assert "mine" in {(target / n).read_text() for n in before if not (target / n).is_dir()}


def test_refuses_a_folder_it_did_not_make(images, tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "001-beach.jpg").symlink_to(images[0])  # looks like ours, but no record says so
    with pytest.raises(LinkFolderError, match="001-beach.jpg"):
        link_results(images, user)
    assert links_in(user) == ["001-beach.jpg"]


def test_refuses_a_file_and_an_unreadable_record(images, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(LinkFolderError, match="not a folder"):
        link_results(images, a_file)
    target = tmp_path / "out"
    link_results(images[:1], target)
    (target / RECORD_NAME).write_text("{broken")
    with pytest.raises(LinkFolderError, match="unreadable"):
        link_results(images, target)
    assert links_in(target) == ["001-beach.jpg"]


def test_an_empty_existing_folder_is_accepted(images, tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    assert link_results(images[:1], target).links == ("001-beach.jpg",)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/p/a:b*c?.jpg", "007-a_b_c_.jpg"),
        ('/p/<"x|y">.png', "007-__x_y__.png"),
        ("/p/tab\there\n.jpeg", "007-tab_here_.jpeg"),
        ("/p/trailing. .jpg", "007-trailing.jpg"),
        ("/p/.hidden", "007-.hidden"),
        ("/p/...", "007-image"),
        ("/p/Cafe\u0301.jpg", "007-Caf\u00e9.jpg"),  # NFC: one code point, as macOS stores it
        ("/p/" + "x" * 300 + ".jpg", "007-" + "x" * 100 + ".jpg"),
        (os.fsdecode(b"/p/bad\xffname.jpg"), "007-bad_name.jpg"),  # not UTF-8 on disk
    ],
)
def test_link_names_are_safe_everywhere_and_keep_the_extension(path, name):
    assert link_name(7, path) == name


def test_rank_width_grows_with_the_number_of_results(tmp_path):
    sources = []
    for i in range(1000):
        p = tmp_path / "src" / f"{i}.jpg"
        sources.append(p)
    report = link_results(sources, tmp_path / "out")  # dangling links are still links
    assert report.links[0] == "0001-0.jpg" and report.links[-1] == "1000-999.jpg"
    assert sorted(report.links) == list(report.links)
