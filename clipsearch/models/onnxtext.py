"""The CLIP text tower in ONNX Runtime: the warm path of a text query.

A query is a handful of tokens, so encoding it is a chain of thin matrix products whose cost
is reading the weights (151 MB for ViT-B/32's text tower). OpenBLAS repacks a weight for each
product; ONNX Runtime packs the weights once when its session starts and then streams them
far faster (benchmarks/RESULTS.md). Starting a session costs more than one query does, so
:class:`clipsearch.models.texttower.NumpyTextEncoder` answers a process's first query in
NumPy and hands later ones to an :class:`OnnxTextTower` of the same weights: a one-shot
``clipsearch search`` never pays for the session, ``serve`` and the Python API do once.

Each text runs as one sequence cut after its pooled position (the causal mask keeps later
positions from reaching it), so nothing is computed for padding; the embeddings are looked up
in NumPy and the blocks, ``ln_final`` and the projection run in the graph. Vectors equal the
NumPy tower's within :data:`PARITY_TOLERANCE`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from clipsearch.models.onnxgraph import GraphBuilder, SessionError, available, tower_session

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5  # max abs difference of unit vectors, ONNX Runtime vs NumPy, fp32
_LOOKED_UP = ("token_embedding.weight", "positional_embedding")  # read in NumPy


class OnnxTextTower:
    """:class:`~clipsearch.models.texttower.TextTower`'s computation in ONNX Runtime, on the
    same (memory-mapped) weights.

    Args:
        tower: the NumPy :class:`~clipsearch.models.texttower.TextTower` (which imports
            this module, hence no annotation); its embeddings are looked up from it.
        threads: ONNX Runtime's threads.

    Raises:
        ImportError: onnxruntime is missing, or onnx, where the graph is not kept yet.
        SessionError: ONNX Runtime refused the graph or a weight.
    """

    def __init__(self, tower: Any, threads: int = 1):
        self.tower = tower
        self.config = tower.config
        shapes = {n: tuple(a.shape) for n, a in tower.tensors.items() if n not in _LOOKED_UP}
        key = {**tower.config.to_dict(), "shapes": sorted(shapes.items())}
        weights = {n: tower.tensors[n] for n in shapes}
        build = lambda: _text_graph(tower, shapes)  # noqa: E731
        self.session = tower_session("clip-text", key, build, weights, threads)

    @property
    def dim(self) -> int:
        return self.tower.dim

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        """Unit vectors (N, dim) float32 of token rows (N, context_length), one run each."""
        tokens = np.asarray(tokens, dtype=np.int64)
        out = np.empty((len(tokens), self.dim), dtype=np.float32)
        for row, end in enumerate(self.tower.pooled_positions(tokens)):
            n = int(end) + 1
            x = np.ascontiguousarray(self.tower.embed(tokens[row : row + 1, :n])[0])
            mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
            out[row] = self.session.run(None, {"x": x, "mask": mask})[0][0]
        norms = np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), np.float32(1e-12))
        return out / norms


def _text_graph(tower: Any, shapes: dict[str, tuple[int, ...]]) -> bytes:
    """The graph: embedded rows ``x`` (n, width) and the causal ``mask`` (n, n) in, the
    pooled (last) row after ``ln_final`` and the projection out (1, dim), not normalized."""
    c = tower.config
    g = GraphBuilder(shapes)
    x = "x"
    for i in range(c.layers):
        x = g.block(
            x,
            f"transformer.resblocks.{i}.",
            seq=None,
            heads=c.heads,
            eps=c.ln_eps,
            activation="quick" if c.quick_gelu else "none",
            mask="mask",
        )
    x = g.op("Slice", x, g.const([-1]), g.const([np.iinfo(np.int64).max]), g.const([0]))
    x = g.layer_norm(x, "ln_final.", c.ln_eps)
    if c.projection == "matrix":
        x = g.op("MatMul", x, g.weight("text_projection"))
    elif c.projection == "linear":
        bias = "text_projection.bias" if c.projection_bias else None
        x = g.linear(x, "text_projection.weight", bias)
    inputs = {"x": ["n", c.width], "mask": ["n", "n"]}
    return g.model(inputs, x, "clipsearch-clip-text")


def onnx_text_tower(tower: Any, threads: int = 1) -> OnnxTextTower | None:
    """An ONNX Runtime twin of a NumPy CLIP text tower, or None where there can be none
    (another kind of tower, onnxruntime not installed, or a session that cannot be made:
    logged, and the NumPy tower goes on)."""
    if getattr(tower.config, "kind", None) != "clip" or not available():
        return None
    try:
        return OnnxTextTower(tower, threads)
    except (ImportError, SessionError, ValueError, KeyError) as e:
        log.debug("text queries stay in NumPy: %s", e)
        return None
