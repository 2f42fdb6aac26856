"""Every fast path returns what the exact path returns, within the tolerances we promise.

- JPEG draft decoding: embeddings within cosine 0.995 of a full decode (photo-like images).
- bf16: embeddings within cosine 0.999 of fp32; an index built in bf16 searches in fp32.
- The text-only model and the truncated text forward: the same text vectors as the full model.
- Every vector index type finds the right items, honours deletions and filters, and survives
  saving, reopening, incremental adds and `clipsearch reindex`.

Timings live in benchmarks/, never here.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from clipsearch import ImageIndex, load_encoder
from clipsearch.errors import ModelLoadError
from clipsearch.media.files import decode_image_sized
from clipsearch.models.runtime import cpu_has_native_bf16, pick_precision
from clipsearch.store.vectors import (
    INDEX_TYPES,
    IndexLayout,
    VectorIndex,
    plan_layout,
)
from tests.helpers import PREPROCESS_CFG, TINY_CFG

DRAFT_MIN_COSINE = 0.995
BF16_MIN_COSINE = 0.999


def photo_like(seed: int, width: int, height: int) -> Image.Image:
    """Smooth regions, hard edges, texture and sensor noise, like a photo (and unlike a flat
    drawing, which any resampling reproduces exactly)."""
    from PIL import ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    sw, sh = width // 16, height // 16
    t = np.linspace(0, 1, sh)[:, None, None]
    base = rng.integers(0, 256, 3) * (1 - t) + rng.integers(0, 256, 3) * t
    img = Image.fromarray((base * np.ones((1, sw, 1))).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(8):
        x, y = int(rng.integers(0, sw)), int(rng.integers(0, sh))
        w, h = int(rng.integers(sw // 8, sw // 2)), int(rng.integers(sh // 8, sh // 2))
        draw.ellipse((x, y, x + w, y + h), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    img = img.filter(ImageFilter.GaussianBlur(1))
    mid = np.asarray(img.resize((width // 4, height // 4), Image.Resampling.BICUBIC), np.float32)
    mid += rng.standard_normal((height // 4, width // 4, 1), dtype=np.float32) * 14
    mid_img = Image.fromarray(np.clip(mid, 0, 255).astype(np.uint8))
    full = np.asarray(mid_img.resize((width, height), Image.Resampling.BICUBIC), np.float32)
    full += rng.standard_normal((height, width, 3), dtype=np.float32) * 5
    return Image.fromarray(np.clip(full, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def model224(tmp_path_factory) -> str:
    """The tiny model with the usual 224 px input, so drafts are decoded at the real 448 px."""
    import open_clip
    from safetensors.torch import save_file

    cfg = json.loads(json.dumps(TINY_CFG))
    cfg["vision_cfg"].update(image_size=224, patch_size=32, layers=2)
    torch.manual_seed(1)
    model = open_clip.CLIP(**cfg)
    folder = tmp_path_factory.mktemp("models") / "tiny224"
    folder.mkdir()
    preprocess = {**PREPROCESS_CFG, "size": 224}
    config = {"model_cfg": cfg, "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Five 2400x1800 photo-like JPEGs (a quarter-scale DCT draft is 600x450)."""
    folder = tmp_path_factory.mktemp("photos")
    for i in range(5):
        photo_like(i, 2400, 1800).save(folder / f"IMG_{i}.jpg", "JPEG", quality=90)
    return folder


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def stored_vectors(index: ImageIndex) -> dict[str, np.ndarray]:
    ids = index.catalog.ids().tolist()
    records = index.catalog.images(ids)
    return {records[i].rel: index.catalog.vector(i) for i in ids}


# --- decoding ------------------------------------------------------------------------------


def test_draft_decode_is_a_real_reduction(photos):
    data = (photos / "IMG_0.jpg").read_bytes()
    img, upright = decode_image_sized(data, "IMG_0.jpg", draft_size=448)
    assert img.size == (600, 450) and upright == (2400, 1800)


@pytest.mark.slow
def test_draft_decoded_index_matches_the_exact_one(tmp_path, model224, photos):
    with ImageIndex.create(tmp_path / "draft", model=model224, device="cpu") as idx:
        idx.add([photos])
        draft = stored_vectors(idx)
    with ImageIndex.create(tmp_path / "exact", model=model224, device="cpu") as idx:
        idx.add([photos], exact_decode=True)
        exact = stored_vectors(idx)
    assert draft.keys() == exact.keys() and len(draft) == 5
    names = sorted(draft)
    cos = cosines(np.stack([draft[n] for n in names]), np.stack([exact[n] for n in names]))
    assert cos.min() >= DRAFT_MIN_COSINE, cos
    assert cos.min() < 1.0  # the draft path did run


def test_cli_exact_decode_flag(tmp_path, tiny_model, photos):
    runner = CliRunner()
    args = ["--index", str(tmp_path / "idx"), "index", str(photos), "--model", tiny_model]
    result = runner.invoke(main_cli(), [*args, "--exact-decode", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"] == 5


def main_cli():
    from clipsearch.cli.main import main

    return main


# --- precision -----------------------------------------------------------------------------


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_it():
    assert pick_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert pick_precision("auto", "cuda") == "fp16"
    assert pick_precision("fp32", "cpu") == "fp32"


def test_bf16_embeddings_match_fp32(model224, photos):
    fp32 = load_encoder(model224, device="cpu", precision="fp32")
    bf16 = load_encoder(model224, device="cpu", precision="bf16")
    assert bf16.identity.key == fp32.identity.key  # precision is not part of the identity
    images = [Image.open(p).convert("RGB") for p in sorted(photos.glob("*.jpg"))]
    cos = cosines(fp32.encode_images(images), bf16.encode_images(images))
    assert cos.min() >= BF16_MIN_COSINE, cos
    texts = ["a dog on a beach", "a red circle", "sunset over the sea"]
    cos = cosines(fp32.encode_texts(texts), bf16.encode_texts(texts))
    assert cos.min() >= BF16_MIN_COSINE, cos


def test_index_built_in_bf16_searches_in_fp32(tmp_path, model224, photos):
    with ImageIndex.create(tmp_path / "idx", model=model224, precision="bf16") as idx:
        idx.add([photos])
    query = tmp_path / "query.jpg"
    shutil.copy(photos / "IMG_3.jpg", query)  # not indexed: encoded now, in fp32
    with ImageIndex.open(tmp_path / "idx", precision="fp32") as idx:
        hits = idx.search(f"@{query}", k=5)
        assert idx.encoder.precision == "fp32"
        assert hits[0].path == str(photos / "IMG_3.jpg")
        assert hits[0].score >= BF16_MIN_COSINE * DRAFT_MIN_COSINE
        assert len(idx.search("a photo", k=5)) == 5


# --- the text path -------------------------------------------------------------------------


def test_text_only_model_gives_the_full_models_text_vectors(tiny_model):
    full = load_encoder(tiny_model, device="cpu")
    text = load_encoder(tiny_model, device="cpu", towers="text")
    assert (full.towers, text.towers) == ("both", "text")
    assert text.model.visual is None and text.identity == full.identity
    texts = ["a red circle", "wow!", "!", "a photo of " + "very " * 80 + "long text"]
    np.testing.assert_allclose(text.encode_texts(texts), full.encode_texts(texts), atol=1e-6)
    with pytest.raises(ModelLoadError, match="text queries only"):
        text.encode_pixels(torch.zeros(1, 3, 32, 32))


def test_truncated_text_forward_equals_the_full_forward(tiny_model):
    enc = load_encoder(tiny_model, device="cpu")
    texts = ["a red circle", "wow!", "!", "", "a " * 100]
    with torch.inference_mode():
        full = enc.model.encode_text(enc.tokenizer(texts), normalize=True).numpy()
    assert cosines(enc.encode_texts(texts), full).min() > 0.99999


def test_search_loads_only_the_text_tower(tmp_path, tiny_model, photo_dir):
    with ImageIndex.create(tmp_path / "idx", model=tiny_model) as idx:
        idx.add([photo_dir])
    with ImageIndex.open(tmp_path / "idx") as idx:
        assert len(idx.search("a red circle", k=3)) == 3
        assert idx._encoder is None and idx.text_encoder.towers == "text"
        idx.similar(photo_dir / "shapes" / "green_circle.png")  # indexed: no model needed
        assert idx._encoder is None


# --- vector index types --------------------------------------------------------------------


def clustered(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, dim))
    x = centers[rng.integers(0, 20, n)] + 0.4 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Store:
    """A stand-in for the catalog: the exact vectors by id, the source of truth."""

    def __init__(self, ids: np.ndarray, vecs: np.ndarray):
        self.by_id = dict(zip(ids.tolist(), vecs, strict=True))

    def remove(self, ids: np.ndarray) -> None:
        for i in ids.tolist():
            self.by_id.pop(i, None)

    def __call__(self, ids: np.ndarray):
        got = np.asarray([i for i in ids.tolist() if i in self.by_id], dtype=np.int64)
        dim = next(iter(self.by_id.values())).shape[0]
        vecs = np.stack([self.by_id[i] for i in got]) if len(got) else np.empty((0, dim))
        return got, vecs.astype(np.float32)


def make_index(kind: str, ids: np.ndarray, vecs: np.ndarray) -> VectorIndex:
    layout = plan_layout(len(ids), vecs.shape[1], kind)
    vi = VectorIndex.create(vecs.shape[1], layout, vecs if layout.trained else None)
    vi.add(ids, vecs)
    vi.vector_source = Store(ids, vecs)
    return vi


def exact_top(vecs, ids, queries, k, allowed=None):
    scores = queries @ vecs.T
    if allowed is not None:
        scores[:, ~np.isin(ids, allowed)] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order]


@pytest.mark.parametrize("kind", INDEX_TYPES)
def test_each_type_finds_the_right_items(kind):
    vecs = clustered(3000)
    ids = np.arange(3000, dtype=np.int64) * 7 + 3
    vi = make_index(kind, ids, vecs)
    assert vi.index_type == kind and vi.ntotal == 3000
    assert set(vi.ids().tolist()) == set(ids.tolist())
    queries = vecs[:50] + 0.05 * clustered(50, seed=9)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, got = vi.search(queries, 10)
    want = exact_top(vecs, ids, queries, 10)
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
    assert recall >= 0.9, recall
    scores, top = vi.search(vecs[5], 1)
    assert top[0, 0] == ids[5] and scores[0, 0] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("kind", INDEX_TYPES)
def test_each_type_honours_deletions_and_keeps_them_on_disk(kind, tmp_path):
    vecs = clustered(2000, seed=1)
    ids = np.arange(2000, dtype=np.int64) + 1
    vi = make_index(kind, ids, vecs)
    gone = ids[:300]
    assert vi.remove(gone) == 300
    vi.vector_source.remove(gone)
    assert vi.remove(gone[:10]) == 0  # already removed
    assert vi.ntotal == 1700 and not set(vi.ids().tolist()) & set(gone.tolist())
    _, got = vi.search(vecs[:300], 5)
    assert not set(got.ravel().tolist()) & set(gone.tolist())
    vi.save(tmp_path, generation=7)
    for mmap in (False, True):
        back, generation = VectorIndex.load(tmp_path, 64, mmap=mmap)
        assert generation == 7 and back.index_type == kind and back.ntotal == 1700
        back.vector_source = vi.vector_source
        _, got = back.search(vecs[:300], 5)
        assert not set(got.ravel().tolist()) & set(gone.tolist())
        back.add(np.asarray([5000], np.int64), vecs[:1])  # a mapped file is copied first
        assert 5000 in back.ids() and back.ntotal == 1701


def test_hnsw_tombstones_trigger_a_rebuild():
    vi = make_index("hnsw", np.arange(100, dtype=np.int64), clustered(100))
    vi.remove(np.arange(5, dtype=np.int64))
    assert not vi.needs_compaction
    vi.remove(np.arange(5, 20, dtype=np.int64))
    assert vi.needs_compaction and vi.ntotal == 80


# Every type with a narrow filter and exact vectors in the quick run; the full matrix is slow.
FILTER_CASES = [
    pytest.param(
        kind,
        share,
        exact_source,
        id=f"{'catalog' if exact_source else 'faiss-only'}-{share}-{kind}",
        marks=() if share == 0.002 and exact_source else pytest.mark.slow,
    )
    for exact_source in (True, False)
    for share in (0.002, 0.3)
    for kind in INDEX_TYPES
]


@pytest.mark.parametrize(("kind", "share", "exact_source"), FILTER_CASES)
def test_each_type_honours_filters(kind, share, exact_source):
    vecs = clustered(3000, seed=2)
    ids = np.arange(3000, dtype=np.int64) + 10
    vi = make_index(kind, ids, vecs)
    vi.remove(ids[:100])
    vi.vector_source.remove(ids[:100])
    if not exact_source:  # the filter runs inside FAISS (IDSelector), tombstones too
        vi.vector_source = None
    rng = np.random.default_rng(0)
    allowed = rng.choice(ids, size=int(3000 * share), replace=False)
    live = np.setdiff1d(allowed, ids[:100])
    _, got = vi.search(vecs[200:220], 5, allowed=allowed)
    assert set(got.ravel().tolist()) - {-1} <= set(live.tolist())
    want = exact_top(vecs, ids, vecs[200:220], 5, allowed=live)
    recall = np.mean([len(set(g) & set(w)) / 5 for g, w in zip(got, want, strict=True)])
    if kind != "ivfpq" or exact_source:  # without stored vectors it ranks by 8-byte codes
        assert recall >= 0.9, recall


def test_auto_policy_by_size_and_budget():
    gib = 1 << 30
    assert plan_layout(10_000, 512, "auto", 4 * gib).type == "flat"
    assert plan_layout(1_000_000, 512, "auto", 4 * gib).type == "hnsw"
    assert plan_layout(1_000_000, 512, "auto", 1 * gib).type == "ivfpq"
    assert plan_layout(100_000, 512, "auto", 100 << 20).type == "ivfpq"  # flat does not fit
    hnsw, pq = IndexLayout("hnsw"), plan_layout(1_000_000, 512, "ivfpq")
    assert hnsw.memory_bytes(1_000_000, 512) <= 2.5e9
    assert pq.memory_bytes(1_000_000, 512) <= 300e6
    assert plan_layout(12, 512, "ivfpq").nlist == 1  # tiny collections still train


# --- reindex end to end --------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path):
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(
            main_cli(), ["--index", str(tmp_path / "idx"), *map(str, args)], catch_exceptions=False
        )

    return invoke


def hit_paths(cli, *args):
    result = cli("search", *args, "--json")
    assert result.exit_code == 0, result.output
    return [(h["path"], round(h["score"], 4)) for h in json.loads(result.output)]


@pytest.mark.parametrize("kind", INDEX_TYPES)
def test_reindex_round_trips_through_the_cli(cli, tiny_model, photo_dir, tmp_path, kind):
    assert cli("index", photo_dir, "--model", tiny_model).exit_code == 0
    exact = hit_paths(cli, "a red circle", "-k", "5")
    filtered = hit_paths(cli, "a red circle", "--prefix", photo_dir / "shapes")
    result = cli("reindex", "--type", kind, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["index_type"] == kind
    assert json.loads(cli("info", "--json").output)["index_type"] == kind
    assert hit_paths(cli, "a red circle", "-k", "5") == exact
    assert hit_paths(cli, "a red circle", "--prefix", photo_dir / "shapes") == filtered

    # Incremental changes keep the type: a new image is found, a deleted one is gone.
    extra = tmp_path / "more"
    extra.mkdir()
    shutil.copy(photo_dir / "shapes" / "green_circle.png", extra / "copy.png")
    (photo_dir / "more" / "nested" / "red_circle.png").unlink()
    assert cli("index", photo_dir, extra).exit_code == 0
    info = json.loads(cli("info", "--json").output)
    assert info["index_type"] == kind and info["count"] == 12
    paths = [p for p, _ in hit_paths(cli, "a red circle", "-k", "12")]
    assert str(extra / "copy.png") in paths
    assert str(photo_dir / "more" / "nested" / "red_circle.png") not in paths
    with ImageIndex.open(tmp_path / "idx") as idx:
        assert idx.vectors.index_type == kind and idx.vectors.ntotal == 12
        assert sorted(idx.vectors.ids().tolist()) == sorted(idx.catalog.ids().tolist())


def test_the_command_prints_everything_before_its_quick_exit(cli, tiny_model, photo_dir, tmp_path):
    import subprocess
    import sys

    assert cli("index", photo_dir, "--model", tiny_model).exit_code == 0
    args = ["--index", str(tmp_path / "idx"), "search", "a red circle", "-k", "12", "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "clipsearch", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 12  # all of it, flushed before os._exit
    proc = subprocess.run(
        [sys.executable, "-m", "clipsearch", "--index", str(tmp_path / "no"), "search", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "no index" in proc.stderr


def test_reindex_auto_keeps_small_collections_exact(cli, tiny_model, photo_dir):
    assert cli("index", photo_dir, "--model", tiny_model).exit_code == 0
    assert cli("reindex", "--type", "hnsw").exit_code == 0
    result = cli("reindex")
    assert result.exit_code == 0 and "as flat" in result.output


def test_a_missing_vector_file_is_rebuilt_in_the_recorded_type(cli, tiny_model, photo_dir):
    assert cli("index", photo_dir, "--model", tiny_model).exit_code == 0
    before = hit_paths(cli, "a blue square", "-k", "3")
    assert cli("reindex", "--type", "ivfpq").exit_code == 0
    folder = photo_dir.parent / "idx"
    (folder / "vectors.faiss").unlink()
    assert hit_paths(cli, "a blue square", "-k", "3") == before
    with ImageIndex.open(folder) as idx:
        assert idx.vectors.index_type == "ivfpq"


# --- the compiled image tower -----------------------------------------------------------------


@pytest.mark.slow
def test_compiled_image_tower_gives_the_same_vectors(tiny_model):
    eager = load_encoder(tiny_model, device="cpu")
    compiled = load_encoder(tiny_model, device="cpu")
    compiled.compile_image_tower()
    torch.manual_seed(0)
    pixels = torch.randn(7, 3, eager.image_size, eager.image_size)
    first = compiled.encode_pixels(pixels[:3])  # compiles for batches of 3
    assert compiled.compiled
    # 7 runs as 3 + 3 + 1 padded to 3; 2 as 2 padded to 3: one compiled shape for all.
    rest, small = compiled.encode_pixels(pixels), compiled.encode_pixels(pixels[5:])
    want = eager.encode_pixels(pixels)
    assert first.shape == (3, eager.dim) and rest.shape == (7, eager.dim)
    assert small.shape == (2, eager.dim)
    for got, ref in ((first, want[:3]), (rest, want), (small, want[5:])):
        assert cosines(got, ref).min() >= 1 - 1e-5


def test_a_tower_that_will_not_compile_runs_uncompiled(tiny_model, monkeypatch, caplog):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler\nfound on PATH")

        return run

    encoder = load_encoder(tiny_model, device="cpu")
    want = encoder.encode_pixels(torch.zeros(2, 3, encoder.image_size, encoder.image_size))
    monkeypatch.setattr(torch, "compile", broken)
    encoder.compile_image_tower()
    with caplog.at_level("WARNING"):
        got = encoder.encode_pixels(torch.zeros(2, 3, encoder.image_size, encoder.image_size))
    assert not encoder.compiled
    assert np.allclose(got, want, atol=1e-6)
    assert "could not compile the image tower (no C++ compiler found on PATH)" in caplog.text


@pytest.mark.slow
def test_cli_index_compile_flag_stores_the_same_vectors(tmp_path, tiny_model, photos, monkeypatch):
    from clipsearch.models.encoder import Encoder

    compiled: list[Encoder] = []
    original = Encoder.compile_image_tower

    def spy(self: Encoder) -> None:
        compiled.append(self)
        original(self)

    monkeypatch.setattr(Encoder, "compile_image_tower", spy)
    runner = CliRunner()
    for name, extra in (("plain", []), ("compiled", ["--compile"])):
        args = ["--index", str(tmp_path / name), "index", str(photos), "--model", tiny_model]
        result = runner.invoke(main_cli(), [*args, *extra, "--precision", "fp32", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["added"] == 5
    (encoder,) = compiled
    assert encoder.compiled  # it really ran compiled, not the fallback
    with ImageIndex.open(tmp_path / "plain") as a, ImageIndex.open(tmp_path / "compiled") as b:
        va, vb = stored_vectors(a), stored_vectors(b)
    assert va.keys() == vb.keys()
    keys = sorted(va)
    cos = cosines(np.stack([va[k] for k in keys]), np.stack([vb[k] for k in keys]))
    assert cos.min() >= 1 - 1e-5, cos
