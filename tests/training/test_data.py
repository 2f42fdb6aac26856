"""Pairs from folders, JSONL and CSV listings, in memory and streams; the validation split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from clipsearch.demo import synth
from clipsearch.errors import TrainingError
from clipsearch.training.data import (
    CaptionedImage,
    PairDataset,
    load_pairs,
    match_matrix,
    resolve_data,
    split_validation,
)
from tests.training.helpers import colour_shape_stream, pairs, train_config, write_image


def test_folder_with_sidecar_captions(tmp_path: Path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    captions = {}
    for i in range(6):
        path = folder / ("sub" if i % 2 else ".") / f"img{i}.png"
        captions[path.resolve()] = write_image(path, i)
        path.with_suffix(".txt").write_text(captions[path.resolve()] + "\n")
    write_image(folder / "no_caption.png", 10)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "broken.txt").write_text("a broken picture")

    dataset = load_pairs(folder)
    assert dataset.skipped == 1  # no_caption.png
    assert len(dataset) == 7
    got = {Path(p.image).resolve(): p.caption for p in dataset.items}
    assert {k: v for k, v in got.items() if k.name != "broken.jpg"} == captions


def test_jsonl_and_csv_listings(tmp_path: Path):
    paths = synth.write_folder(tmp_path / "imgs", n=6, seed=3, size=40)
    records = [
        json.loads(x) for x in (tmp_path / "imgs" / "captions.jsonl").read_text().split("\n") if x
    ]

    from_jsonl = load_pairs(tmp_path / "imgs" / "captions.jsonl")
    assert [Path(p.image) for p in from_jsonl.items] == paths
    assert [p.caption for p in from_jsonl.items] == [r["caption"] for r in records]

    # A folder without sidecars falls back to its captions.jsonl.
    assert [p.caption for p in load_pairs(tmp_path / "imgs").items] == [
        r["caption"] for r in records
    ]

    csv_path = tmp_path / "pairs.csv"
    rows = ["image,text"] + [f'imgs/{r["path"]},"{r["caption"]}, really"' for r in records]
    rows.append("imgs/missing.jpg,a missing picture")
    csv_path.write_text("\n".join(rows) + "\n")
    from_csv = load_pairs(csv_path)
    assert from_csv.skipped == 1
    assert [p.caption for p in from_csv.items] == [r["caption"] + ", really" for r in records]


def test_bad_listings_raise_training_errors(tmp_path: Path):
    with pytest.raises(TrainingError, match="does not exist"):
        load_pairs(tmp_path / "nowhere")

    no_captions = tmp_path / "no_captions"
    no_captions.mkdir()
    write_image(no_captions / "a.png", 0)
    with pytest.raises(TrainingError, match=r"no captions.*a\.txt"):
        load_pairs(no_captions)

    empty_dir = tmp_path / "empty_dir"
    empty_dir.mkdir()
    with pytest.raises(TrainingError, match="no images"):
        load_pairs(empty_dir)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(TrainingError, match="no usable pairs"):
        load_pairs(empty)

    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"path": "a.png", "caption": "x"}\n{oops\n')
    with pytest.raises(TrainingError, match=r"bad\.jsonl:2: not valid JSON"):
        load_pairs(bad_json)

    not_object = tmp_path / "list.jsonl"
    not_object.write_text('["a.png", "x"]\n')
    with pytest.raises(TrainingError, match=r"list\.jsonl:1: expected a JSON object, got list"):
        load_pairs(not_object)

    wrong_keys = tmp_path / "keys.jsonl"
    wrong_keys.write_text('{"file_name": "a.png", "label": "x"}\n')
    with pytest.raises(TrainingError, match="needs a path"):
        load_pairs(wrong_keys)

    no_header = tmp_path / "empty.csv"
    no_header.write_text("")
    with pytest.raises(TrainingError, match="needs a path,caption header"):
        load_pairs(no_header)

    with pytest.raises(TrainingError, match="unknown format"):
        load_pairs(bad_json.rename(tmp_path / "bad.txt"))


def test_resolve_data_accepts_every_form_and_refuses_the_rest(tmp_path: Path):
    items = pairs(3, seed=0)
    assert resolve_data(items) == PairDataset(tuple(items), "memory")
    assert resolve_data(colour_shape_stream) is colour_shape_stream
    with pytest.raises(TrainingError, match="empty"):
        resolve_data([])
    with pytest.raises(TrainingError, match="empty"):
        resolve_data(PairDataset((), "nothing"))
    with pytest.raises(TrainingError, match="sequence of CaptionedImage"):
        resolve_data(["a picture"])
    with pytest.raises(TrainingError, match="unsupported training data int"):
        resolve_data(3)


def test_validation_split(tmp_path: Path):
    config = train_config(tmp_path, val_size=8)
    big = PairDataset(tuple(pairs(60, seed=1)), "memory")
    train, val, source = split_validation(big, None, config)
    assert isinstance(train, PairDataset)
    assert len(val) == 6 and len(train.items) == 54  # at most a tenth held out
    assert source == "6 pairs held out of 60"
    assert not {id(p) for p in val} & {id(p) for p in train.items}
    assert split_validation(big, None, config)[1] == val  # the same seed holds out the same

    small = PairDataset(tuple(pairs(10, seed=1)), "memory")
    assert split_validation(small, None, config)[:2] == (small, list(small.items))

    train, val, source = split_validation(colour_shape_stream, None, config)
    assert train is colour_shape_stream and len(val) == 8 and source == "stream, separate seed"
    assert [p.caption for p in val] != [p.caption for p in pairs(8, seed=config.seed)]

    given = pairs(5, seed=2)
    assert split_validation(big, given, config)[1:] == (given, "given (memory)")
    assert split_validation(big, None, train_config(tmp_path, val_size=0))[1:] == ([], "none")


def test_match_matrix_uses_facts_or_identical_captions():
    red = Image.new("RGB", (8, 8))
    plain = CaptionedImage(red, "a red circle", {"color": "red", "shape": "circle"}, {})
    items = [
        CaptionedImage(
            red,
            "a red circle",
            {"color": "red", "shape": "circle", "count": 2},
            {"color": "red", "shape": "circle"},
        ),
        CaptionedImage(
            red,
            "two red circles",
            {"color": "red", "shape": "circle", "count": 2},
            {"color": "red", "shape": "circle", "count": 2},
        ),
        CaptionedImage(
            red,
            "one red circle",
            {"color": "red", "shape": "circle", "count": 1},
            {"color": "red", "shape": "circle", "count": 1},
        ),
    ]
    m = match_matrix(items)  # m[image, caption]
    assert m.tolist() == [[True, True, False], [True, True, False], [True, False, True]]
    by_text = match_matrix([plain, CaptionedImage(red, "A red  circle"), CaptionedImage(red, "x")])
    assert by_text.tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def test_open_image_gives_rgb_from_memory_or_file(tmp_path: Path):
    grey = Image.new("L", (6, 6), 128)
    assert CaptionedImage(grey, "grey").open_image().mode == "RGB"
    path = tmp_path / "a.png"
    write_image(path, 0)
    opened = CaptionedImage(path, "a picture").open_image()
    assert opened.mode == "RGB" and opened.size == (40, 40)
