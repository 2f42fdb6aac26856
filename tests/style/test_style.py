"""Style labels: the MLP head trained on labelled folders, zero-shot labels, and `classify`.

The tiny test model has random weights, so its zero-shot labels mean nothing; what these tests
check is the machinery. Its image embeddings still separate pictures that differ in colour and
texture families, so a head trained on such classes must classify them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipsearch import (
    DEFAULT_STYLE_LABELS,
    ImageIndex,
    StyleError,
    StyleHead,
    StyleHeadError,
    TrainOptions,
)
from clipsearch.cli.main import main
from clipsearch.style.head import HEAD_META, HEAD_WEIGHTS
from clipsearch.style.training import TrainingSet, train_head

KINDS = ("warm_noise", "cool_stripes", "gray_checker", "green_gradient")


def texture(kind: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """A picture of one of four colour-and-texture families, varied by ``rng``."""
    if kind == "warm_noise":
        a = rng.integers(0, 60, (size, size, 3))
        a[..., 0] += 190
        a[..., 1] += rng.integers(40, 120)
    elif kind == "cool_stripes":
        stripe = (np.arange(size) // rng.integers(3, 7)) % 2 == 1
        a = np.zeros((size, size, 3), dtype=np.int64)
        a[:] = (20, 40, 200)
        a[stripe, :] = (200, 230, 255)
        a += rng.integers(0, 30, (size, size, 3))
    elif kind == "gray_checker":
        w = rng.integers(4, 10)
        cells = (np.arange(size)[:, None] // w + np.arange(size)[None, :] // w) % 2
        a = np.where(cells[..., None] == 1, 230, 30) * np.ones((size, size, 3), dtype=np.int64)
        a += rng.integers(0, 20, (size, size, 3))
    else:
        g = np.linspace(0, 1, size)[None, :, None]
        a = g * np.array([20, 220, 60]) + (1 - g) * np.array([0, 60, 20])
        a = a * np.ones((size, size, 3)) + rng.integers(0, 25, (size, size, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype("uint8"))


def write_textures(root: Path, per_kind: int, seed: int, nested: bool) -> Path:
    rng = np.random.default_rng(seed)
    for kind in KINDS:
        for i in range(per_kind):
            path = root / kind / f"{i}.png" if nested else root / f"{kind}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            texture(kind, rng).save(path)
    return root


@pytest.fixture(scope="module")
def training_dir(tmp_path_factory) -> Path:
    """DIR/<label>/*.png: 30 pictures of each kind, plus one broken file."""
    root = write_textures(tmp_path_factory.mktemp("style") / "train", 30, seed=1, nested=True)
    (root / "warm_noise" / "broken.jpg").write_bytes(b"not a jpeg at all")
    return root


@pytest.fixture
def textures(tmp_path) -> Path:
    """A folder to index: 3 new pictures of each kind, named <kind>_<i>.png."""
    return write_textures(tmp_path / "textures", 3, seed=2, nested=False)


@pytest.fixture
def index_dir(tmp_path, tiny_model, textures) -> Path:
    """An index of ``textures`` made with the tiny model, labelled zero-shot."""
    folder = tmp_path / "index"
    with ImageIndex.create(folder, tiny_model, device="cpu") as index:
        index.add([textures])
    return folder


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def all_stored(index: ImageIndex) -> list:
    return list(index.catalog.images([int(i) for i in index.catalog.ids()]).values())


def kind_of(path: str) -> str:
    return Path(path).stem.rsplit("_", 1)[0]


def test_indexing_attaches_zero_shot_labels(index_dir):
    with ImageIndex.open(index_dir) as index:
        stored = all_stored(index)
        assert len(stored) == 12
        assert all(s.style in DEFAULT_STYLE_LABELS for s in stored)
        assert all(0.0 < s.style_score <= 1.0 for s in stored)
        stats = index.styles.stats()
        assert index.styles.labels() == DEFAULT_STYLE_LABELS
    assert stats.source == "zero-shot"
    assert stats.total == 12 and stats.unlabelled == 0


def test_trained_head_separates_classes_and_labels_the_index(index_dir, training_dir, textures):
    with ImageIndex.open(index_dir) as index:
        report = index.styles.train(training_dir)
        key = index.identity.key
        assert index.styles.labels() == tuple(sorted(KINDS))
    with ImageIndex.open(index_dir) as index, pytest.MonkeyPatch.context() as mp:
        # A fresh process asks for the labels from head.json alone, never loading the weights.
        mp.setattr(StyleHead, "load", lambda *a, **k: pytest.fail("the weights were loaded"))
        assert index.styles.labels() == tuple(sorted(KINDS))

    m = report.metrics
    assert m.labels == tuple(sorted(KINDS))
    assert m.accuracy >= 0.95
    assert m.val_size == 4 * 6 and m.train_size == 4 * 24
    assert sum(map(sum, m.confusion)) == m.val_size
    assert all(c.support == 6 and c.f1 >= 0.8 for c in m.per_class)
    assert report.images == 120
    assert [p for p, _ in report.skipped] == [str(training_dir / "warm_noise" / "broken.jpg")]
    assert report.labelled == 12

    head_dir = index_dir / "style"
    assert (head_dir / HEAD_WEIGHTS).is_file()
    # As readable as the rest of the index: another user who can open it can use its head.
    assert (head_dir / HEAD_WEIGHTS).stat().st_mode & 0o777 == 0o644
    meta = json.loads((head_dir / HEAD_META).read_text())
    assert meta["backbone"] == key and meta["labels"] == list(m.labels)
    assert meta["metrics"]["accuracy"] == m.accuracy

    code, out = run("--index", index_dir, "search", "anything", "-k", "12", "--json")
    assert code == 0, out
    hits = json.loads(out)
    assert len(hits) == 12
    assert all(h["style"] == kind_of(h["path"]) for h in hits)
    assert all(0.5 < h["style_score"] <= 1.0 for h in hits)

    # A file indexed after training is labelled by the head, in the same transaction.
    texture("cool_stripes", np.random.default_rng(9)).save(textures / "cool_stripes_new.png")
    with ImageIndex.open(index_dir) as index:
        index.add([textures])
        new = index.catalog.find_path(str((textures / "cool_stripes_new.png").resolve()))
        assert new is not None and new.style == "cool_stripes"
        assert index.styles.stats().counts[0] == ("cool_stripes", 4)


def test_style_filter_in_search_and_similar(index_dir, training_dir, textures):
    with ImageIndex.open(index_dir) as index:
        index.styles.train(training_dir)
    for kind in KINDS:
        args = ["--index", index_dir, "search", "x", "-k", "12", "--style", kind, "--json"]
        code, out = run(*args)
        assert code == 0, out
        assert sorted(kind_of(h["path"]) for h in json.loads(out)) == [kind] * 3

    args = ["--index", index_dir, "similar", textures / "gray_checker_0.png", "--json"]
    code, out = run(*args, "--style", "warm_noise", "--style", "gray_checker")
    assert code == 0, out
    found = sorted(kind_of(h["path"]) for h in json.loads(out))
    assert found == ["gray_checker"] * 2 + ["warm_noise"] * 3  # never the query image itself

    code, out = run("--index", index_dir, "search", "x", "--style", "no such style", "--json")
    assert code == 0 and json.loads(out) == []


def _no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded or encoded")

    from clipsearch.index import pipeline as indexer
    from clipsearch.media import files as images
    from clipsearch.models import cpuencoder, encoder
    from clipsearch.style import training as styletrain

    for module, name in [
        (images, "decode_image_sized"),
        (images, "decode_image"),
        (indexer, "decode_image_sized"),
        (styletrain, "decode_image"),
    ]:
        monkeypatch.setattr(module, name, refuse)
    for cls in (encoder.Encoder, cpuencoder.CpuImageEncoder):  # every engine
        monkeypatch.setattr(cls, "encode_pixels", refuse)
        monkeypatch.setattr(cls, "encode_images", refuse)


def test_style_apply_relabels_from_stored_vectors(index_dir, training_dir, monkeypatch):
    with ImageIndex.open(index_dir) as index:
        report = index.styles.train(training_dir, apply=False)
        assert report.labelled == 0
        before = {s.style for s in all_stored(index)}
    assert before <= set(DEFAULT_STYLE_LABELS)

    _no_decoding(monkeypatch)
    code, out = run("--index", index_dir, "style", "apply", "--json")
    assert code == 0, out
    assert json.loads(out)["source"] == "head" and json.loads(out)["labelled"] == 12

    code, out = run("--index", index_dir, "style", "stats", "--json")
    assert code == 0, out
    stats = json.loads(out)
    assert stats["source"] == "head"
    assert stats["counts"] == {kind: 3 for kind in KINDS}

    # Going back to zero-shot, with a label set of our own, still reads no image.
    code, out = run("--index", index_dir, "style", "apply", "--labels", "warm, cool")
    assert code == 1 and "style reset" in out
    code, out = run("--index", index_dir, "style", "reset")
    assert code == 0, out
    code, out = run("--index", index_dir, "style", "apply", "--labels", "warm, cool", "--json")
    assert code == 0, out
    assert json.loads(out)["source"] == "zero-shot"
    with ImageIndex.open(index_dir) as index:
        assert index.styles.zero_shot_labels() == ("warm", "cool")
        assert set(dict(index.styles.stats().counts)) <= {"warm", "cool"}
        assert index.styles.stats().total == 12


def test_head_refused_for_another_backbone(index_dir):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    data = TrainingSet(vectors, np.arange(40) % 2, ("a", "b"), ())
    other = "sha256:" + "0" * 64
    head = train_head(data, other, TrainOptions(max_epochs=5))
    head.save(index_dir / "style")
    assert StyleHead.load(index_dir / "style", backbone=other).labels == ("a", "b")

    with ImageIndex.open(index_dir) as index, pytest.raises(StyleHeadError, match="backbone"):
        index.styles.head()
    code, out = run("--index", index_dir, "style", "apply")
    assert code == 1
    assert "trained on backbone sha256:0000" in out and "style train" in out


def test_training_is_deterministic():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(3, 512))
    vectors = np.concatenate([c + 0.3 * rng.normal(size=(20, 512)) for c in centers])
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    # Imbalanced on purpose: class weights must still let the small class be learned.
    keep = np.r_[0:20, 20:40, 40:46]
    data = TrainingSet(vectors[keep], (np.arange(60) // 20)[keep], ("x", "y", "z"), ())
    a = train_head(data, "k", TrainOptions(seed=7))
    b = train_head(data, "k", TrainOptions(seed=7))
    assert a.metrics == b.metrics
    assert np.array_equal(a.predict_proba(vectors), b.predict_proba(vectors))
    assert a.metrics.per_class[2].recall == 1.0
    probs = a.predict_proba(vectors)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_a_head_labels_in_numpy_as_its_torch_module_does(tmp_path):
    import torch

    from clipsearch.style.classifier import StyleClassifier

    torch.manual_seed(5)
    module = StyleClassifier(512, 4, 256, dropout=0.2).eval()
    with torch.no_grad():
        module.center.normal_(0, 0.05)
        module.scale.fill_(3.5)
    head = StyleHead.from_module(module, ("a", "b", "c", "d"), "k")
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with torch.no_grad():
        want = torch.softmax(module(torch.from_numpy(vectors)), dim=1).numpy()
    got = head.predict_proba(vectors)
    assert np.abs(got - want).max() < 1e-6
    assert [label for label, _ in head.predict(vectors)] == ["abcd"[j] for j in want.argmax(axis=1)]
    head.save(tmp_path / "style")  # and back, without torch's safetensors
    again = StyleHead.load(tmp_path / "style", backbone="k")
    assert np.array_equal(again.predict_proba(vectors), got)
    with pytest.raises(ValueError, match="net.3.weight"):
        StyleHead(head.weights, ("a", "b", "c"), "k")  # one label short of the outputs


def test_adding_a_photo_to_an_index_with_a_head_imports_no_torch(tmp_path, photo_dir):
    from tests.helpers import cli_in_a_new_process, draw_image

    argv = ["--index", str(tmp_path / "idx"), "index", str(photo_dir), "--model", "demo"]
    assert run(*argv)[0] == 0  # the first run: open_clip, the records, the demo's head
    draw_image(photo_dir / "new" / "purple_circle.png", "purple", "circle")
    report, lines, out = cli_in_a_new_process(argv, ["torch", "open_clip", "torchvision"])
    assert report == {"code": 0, "loaded": []}, out
    assert lines[0].startswith("added 1,")
    with ImageIndex.open(tmp_path / "idx") as index:
        assert index.styles.has_head()
        new = next(s for s in all_stored(index) if s.path.endswith("purple_circle.png"))
        assert new.style in index.styles.labels()


def test_training_folder_problems(tmp_path, index_dir):
    one_label = tmp_path / "one"
    write_textures(one_label, 2, seed=0, nested=True)
    for kind in KINDS[1:]:
        for f in (one_label / kind).iterdir():
            f.unlink()
        (one_label / kind).rmdir()
    code, out = run("--index", index_dir, "style", "train", one_label)
    assert code == 1 and "at least two label folders" in out

    tiny = write_textures(tmp_path / "tiny", 1, seed=0, nested=True)
    code, out = run("--index", index_dir, "style", "train", tiny)
    assert code == 1 and "at least 2" in out

    with ImageIndex.open(index_dir) as index, pytest.raises(StyleError, match="no such folder"):
        index.styles.train(tmp_path / "missing")


def test_style_train_cli_prints_metrics(index_dir, training_dir):
    code, out = run("--index", index_dir, "style", "train", training_dir, "--seed", "1")
    assert code == 0, out
    assert "accuracy" in out and "confusion matrix" in out
    assert "skipped 1 files" in out and "relabelled 12 indexed images" in out
    for kind in KINDS:
        assert kind in out

    code, out = run("--index", index_dir, "style", "stats")
    assert code == 0, out
    assert out.splitlines()[0].startswith("labels by head:")
    assert "total" in out.splitlines()[-1] and out.splitlines()[-1].split()[-1] == "12"


@pytest.mark.parametrize("with_index", [True, False], ids=["index-model", "model-option"])
def test_classify_probabilities_sum_to_one(tmp_path, tiny_model, index_dir, textures, with_index):
    image = textures / "warm_noise_0.png"
    args = ["--index", index_dir if with_index else tmp_path / "none"]
    args += ["classify", image, "--labels", "cat, dog,car", "--json"]
    if not with_index:
        args += ["--model", tiny_model, "--device", "cpu"]
    code, out = run(*args)
    assert code == 0, out
    predictions = json.loads(out)
    assert sorted(p["label"] for p in predictions) == ["car", "cat", "dog"]
    assert sum(p["probability"] for p in predictions) == pytest.approx(1.0, abs=1e-5)
    probs = [p["probability"] for p in predictions]
    assert probs == sorted(probs, reverse=True)

    code, out = run(*[a for a in args if a != "--json"])  # one "probability  label" a line
    assert code == 0, out
    assert [line.split(None, 1)[1] for line in out.splitlines()] == [
        p["label"] for p in predictions
    ]


def test_classify_api_and_errors(index_dir, textures, tmp_path):
    with ImageIndex.open(index_dir) as index:
        predictions = index.classify(textures / "gray_checker_1.png", ["stripes", "checks"])
        assert {p.label for p in predictions} == {"stripes", "checks"}
        assert sum(p.probability for p in predictions) == pytest.approx(1.0, abs=1e-5)
        with pytest.raises(StyleError, match="at least 2"):
            index.classify(textures / "gray_checker_1.png", "cat")

    code, out = run("--index", index_dir, "classify", textures / "x.png", "--labels", "a,b")
    assert code == 1 and "no such file" in out
    code, out = run(
        "--index", index_dir, "classify", textures / "warm_noise_0.png", "--labels", "a,a"
    )
    assert code == 1 and "twice" in out
    code, out = run("--index", index_dir, "classify", textures / "warm_noise_0.png")
    assert code == 2 and "--labels" in out


@pytest.mark.parametrize(
    "command",
    [
        ["style"],
        ["style", "train"],
        ["style", "apply"],
        ["style", "stats"],
        ["style", "reset"],
        ["classify"],
    ],
)
def test_style_commands_have_help(command):
    code, out = run(*command, "--help")
    assert code == 0
    assert len(out.split("Options:")[0].strip().splitlines()) >= 3


def test_labels_in_other_languages_are_their_own_prompts(tiny_hf_model):
    from clipsearch.models.loading import load_encoder
    from clipsearch.style.labels import classify_prompts, label_embeddings, style_prompts

    assert len(classify_prompts("cat")) > 1 and all("cat" in p for p in classify_prompts("cat"))
    assert classify_prompts("고양이") == ["고양이"]
    assert style_prompts("연필 스케치") == ["연필 스케치"] and len(style_prompts("sketch")) > 1
    encoder = load_encoder(tiny_hf_model, precision="fp32")
    labels = ["고양이", "кошка"]
    vectors = label_embeddings(encoder, [classify_prompts(label) for label in labels])
    np.testing.assert_allclose(vectors, encoder.encode_texts(labels), atol=1e-6)


def test_a_new_index_of_a_model_used_before_labels_without_its_text_tower(
    index_dir, tiny_model, textures, tmp_path, monkeypatch
):
    from clipsearch.index.styles import VECTORS_META_KEY

    with ImageIndex.open(index_dir) as index:
        first = {s.path: s.style for s in all_stored(index)}
        kept = index.catalog.get_meta(VECTORS_META_KEY)

    def no_text_tower(self):
        raise AssertionError("a model's label vectors are in the user's cache")

    monkeypatch.setattr(ImageIndex, "text_encoder", property(no_text_tower))
    with ImageIndex.create(tmp_path / "second", tiny_model, device="cpu") as index:
        index.add([textures])
        assert {s.path: s.style for s in all_stored(index)} == first
        assert index.catalog.get_meta(VECTORS_META_KEY) == kept  # and its catalog keeps them
        # other labels: other prompts, which this model has not encoded yet
        index.catalog.set_meta(style_labels=["sketch", "photo"])
        with pytest.raises(AssertionError, match="user's cache"):
            index.styles._zero_shot()


def test_zero_shot_text_vectors_are_kept_for_later_runs(index_dir, textures, monkeypatch):
    from clipsearch.index.styles import VECTORS_META_KEY

    with ImageIndex.open(index_dir) as index:
        kept = index.catalog.get_meta(VECTORS_META_KEY)
        fresh = index.styles._zero_shot().text_vectors  # what the text encoder gives now
    assert np.asarray(kept["vectors"]).shape == (len(DEFAULT_STYLE_LABELS), 512)
    assert np.abs(np.asarray(kept["vectors"], dtype=np.float32) - fresh).max() < 1e-6

    def no_text_tower(self):
        raise AssertionError("a later run needs no text tower for its labels")

    monkeypatch.setattr(ImageIndex, "text_encoder", property(no_text_tower))
    Image.open(textures / "warm_noise_0.png").transpose(Image.Transpose.ROTATE_90).save(
        textures / "warm_noise_9.png"
    )
    with ImageIndex.open(index_dir) as index:
        assert index.add([textures]).added == 1
        new = next(s for s in all_stored(index) if s.path.endswith("warm_noise_9.png"))
        assert new.style in DEFAULT_STYLE_LABELS
        # another label set: other prompts, so the kept vectors no longer apply
        index.catalog.set_meta(style_labels=["sketch", "photo"])
        with pytest.raises(AssertionError, match="no text tower"):
            index.styles._zero_shot()
