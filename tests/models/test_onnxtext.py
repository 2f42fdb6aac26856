"""Text queries in ONNX Runtime: the same vectors as the NumPy text tower and open_clip, taken
from a process's second query on, never for the first one or for batches, and NumPy goes on
wherever ONNX Runtime cannot. Timings live in benchmarks/bench_search.py, never here."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from clipsearch import ImageIndex
from clipsearch.models import onnxgraph
from clipsearch.models.identity import DEMO_DIR, ModelSpec
from clipsearch.models.loading import load_encoder
from clipsearch.models.onnxtext import PARITY_TOLERANCE, OnnxTextTower, onnx_text_tower
from clipsearch.models.texttower import FEW_TEXTS, NumpyTextEncoder, cached_text_encoder
from tests.models.test_texttower import TEXTS, open_clip_vectors


def _recorded(name: str) -> NumpyTextEncoder:
    """The torch-free text encoder of a model, after the one torch load that records it."""
    load_encoder(name, device="cpu", precision="auto")
    encoder = cached_text_encoder(ModelSpec.from_user(name, None))
    assert isinstance(encoder, NumpyTextEncoder)
    return encoder


@pytest.fixture
def tiny_text(tiny_model_dir) -> tuple[str, NumpyTextEncoder]:
    name = f"local-dir:{tiny_model_dir}"
    return name, _recorded(name)


class Counting:
    """A tower that counts the rows it encodes, for telling which tower a query went to."""

    def __init__(self, tower):
        self.tower, self.rows = tower, 0

    def __call__(self, tokens):
        self.rows += len(tokens)
        return self.tower(tokens)

    def __getattr__(self, name):  # config, tensors, embed...: the tower's
        return getattr(self.tower, name)


@pytest.mark.parametrize("which", ["tiny", "quick", "demo"])
def test_onnx_vectors_equal_numpys_and_open_clips(which, tiny_model_dir, quick_model_dir):
    folder = {"tiny": tiny_model_dir, "quick": quick_model_dir, "demo": DEMO_DIR}[which]
    encoder = _recorded("demo" if which == "demo" else f"local-dir:{folder}")
    fast = OnnxTextTower(encoder.tower, threads=2)
    tokens = encoder.tokenizer(TEXTS)  # empty, long (cut at the context), non-ASCII texts
    got, numpy = fast(tokens), encoder.tower(tokens)
    assert got.dtype == np.float32 and got.shape == numpy.shape
    assert np.abs(got - numpy).max() < PARITY_TOLERANCE
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    want = open_clip_vectors(f"local-dir:{folder}", TEXTS)
    assert np.abs(got - want).max() < 1e-4  # NumPy's own tolerance to open_clip


def test_the_first_query_is_numpys_and_later_ones_onnx_runtimes(tiny_text):
    _, encoder = tiny_text
    numpy = Counting(encoder.tower)
    encoder.tower = numpy
    first = encoder.encode_texts(["a red circle"])
    assert numpy.rows == 1 and encoder._onnx is None  # a one-shot search makes no session
    second = encoder.encode_texts(["a red circle", "a blue square"])
    assert isinstance(encoder._onnx, OnnxTextTower) and numpy.rows == 1
    assert np.abs(second[0] - first[0]).max() < PARITY_TOLERANCE
    # A batch (labels, captions) stays in NumPy, where many rows at once run well.
    many = [f"a photo of {i}" for i in range(FEW_TEXTS + 1)]
    encoder.encode_texts(many)
    assert numpy.rows == 1 + len(many)


def test_warm_makes_the_session_before_any_query(tiny_text):
    _, encoder = tiny_text
    assert encoder.warm() is True
    fast = Counting(encoder._onnx)
    encoder._onnx = fast
    encoder.encode_texts(["a red circle"])
    assert fast.rows == 1


def test_without_onnx_runtime_queries_stay_in_numpy(tiny_text, monkeypatch):
    _, encoder = tiny_text
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    want = encoder.tower(encoder.tokenizer(["a red circle"]))
    assert encoder.warm() is False
    for _ in range(3):
        assert np.array_equal(encoder.encode_texts(["a red circle"]), want)


def test_the_graph_is_built_once_and_then_needs_no_onnx(tiny_text, monkeypatch):
    _, encoder = tiny_text
    tokens = encoder.tokenizer(["a red circle"])
    first = OnnxTextTower(encoder.tower)(tokens)
    graphs = list(onnxgraph.cache_root(onnxgraph.CACHE_KIND).glob("clip-text-*.onnx"))
    assert len(graphs) == 1 and graphs[0].stat().st_size < 200_000  # no weights inside
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx fails from here on
    assert np.array_equal(OnnxTextTower(encoder.tower)(tokens), first)
    graphs[0].unlink()  # and without the cached graph and onnx: NumPy goes on
    assert onnx_text_tower(encoder.tower) is None


def test_a_damaged_kept_graph_is_built_again(tiny_text, monkeypatch):
    _, encoder = tiny_text
    tokens = encoder.tokenizer(["a red circle"])
    want = OnnxTextTower(encoder.tower)(tokens)
    (graph,) = onnxgraph.cache_root(onnxgraph.CACHE_KIND).glob("clip-text-*.onnx")
    graph.write_bytes(b"not a graph")
    assert np.array_equal(OnnxTextTower(encoder.tower)(tokens), want)
    assert graph.read_bytes() != b"not a graph"
    graph.write_bytes(b"not a graph")
    monkeypatch.setitem(sys.modules, "onnx", None)  # cannot be built again: NumPy goes on
    assert onnx_text_tower(encoder.tower) is None
    assert (
        encoder.encode_texts(["a"]).shape == encoder.encode_texts(["b"]).shape == (1, encoder.dim)
    )


def test_an_index_prepares_quick_text_queries_ahead(tmp_path, tiny_model, photo_dir):
    with ImageIndex.create(tmp_path / "idx", model=tiny_model, device="cpu") as index:
        index.add([photo_dir])
        want = [h.path for h in index.search("a red circle", k=3)]
    with ImageIndex.open(tmp_path / "idx", device="cpu") as index:
        index.prepare_text_queries()  # what serve does as it starts
        fast = Counting(index.text_encoder._onnx)
        index.text_encoder._onnx = fast
        assert [h.path for h in index.search("a red circle", k=3)] == want
        assert fast.rows == 1  # the first query already went to ONNX Runtime


def test_only_clip_towers_have_an_onnx_twin():
    class Other:
        class config:  # noqa: N801 - a stand-in config with another kind
            kind = "hf-roberta"

    assert onnx_text_tower(Other()) is None
