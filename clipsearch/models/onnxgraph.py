"""ONNX Runtime sessions for the towers we describe ourselves (no torch, no export).

A tower's graph is built from its config alone with ``onnx.helper``: its weights are
placeholders (external data that is never read), and the weights we already hold (memory-
mapped safetensors arrays, see :func:`clipsearch.models.npmath.read_safetensors`) are handed
to ONNX Runtime when a session is made (``add_external_initializers``: one copy, into ORT's
own buffers, which it then packs for its matrix kernels); or, for a tower whose products
have many rows (images), the weights are inputs of the graph, fed to every run from the
mapped arrays themselves, never copied (:class:`FedSession`). A graph is a few kilobytes and
depends on nothing but the config, so it is built once and kept under
``$XDG_CACHE_HOME/clipsearch/onnx-graphs``: ``import onnx`` takes most of a second, and a
later process needs only ``onnxruntime``.

:class:`GraphBuilder` holds the building blocks: the products in torch's (out, in) layout
(``Gemm`` with ``transB``), LayerNorm, the GELUs, and open_clip's residual attention block,
the same computation as :func:`clipsearch.models.npmath.residual_block`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from clipsearch.models.towercache import cache_root
from clipsearch.store.fileio import atomic_write

log = logging.getLogger(__name__)

OPSET = 20  # Gelu is an operator from opset 20; LayerNormalization from 17
# Bump when a graph's computation changes: graphs cached by an older build are then ignored.
GRAPH_VERSION = 1
CACHE_KIND = "onnx-graphs"
_PLACEHOLDER = "clipsearch-weights-are-given-at-session-creation"


class SessionError(RuntimeError):
    """ONNX Runtime refused a graph or a weight (its own exception types derive from nothing
    more telling than ``Exception``); the caller's tower then runs elsewhere."""


def available() -> bool:
    """Whether ONNX Runtime is installed here, told without importing it (0.1 s): a policy
    asks before it knows that a session will be made."""
    if "onnxruntime" in sys.modules:  # imported, or blocked (None)
        return sys.modules["onnxruntime"] is not None
    try:
        return importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):
        return False


class GraphBuilder:
    """Nodes of one graph; each method adds nodes and returns the name of its output.

    Args:
        shapes: every weight the graph reads, by name (the tower's state-dict names), with
            its shape; the graph declares them as placeholders that the session fills.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], *, matmul_linear: bool = False):
        self.shapes = dict(shapes)
        self.nodes: list[Any] = []
        self.consts: list[Any] = []
        self._count = 0
        self.matmul_linear = matmul_linear
        self.transposed: dict[str, str] = {}  # a transposed weight's name -> the weight's

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        from onnx import helper

        self._count += 1
        out = f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, values: Any, dtype: Any = np.int64) -> str:
        """A small constant (a shape, axes, a scalar) embedded in the graph."""
        from onnx import numpy_helper

        self._count += 1
        name = f"const_{self._count}"
        self.consts.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def weight(self, name: str) -> str:
        if name not in self.shapes:
            raise KeyError(f"the graph reads {name}, which its shapes do not declare")
        return name

    def linear(self, x: str, weight: str, bias: str | None = None) -> str:
        """``x @ weight.T + bias`` for rows x (R, in) and a torch-layout (out, in) weight:
        one ``Gemm``, or with ``matmul_linear`` a ``MatMul`` on the transposed weight (named
        ``weight + ".T"``, see :attr:`transposed`) and an ``Add``, the form ONNX Runtime's
        int8 quantization takes."""
        if not self.matmul_linear:
            inputs = [x, self.weight(weight)] + ([self.weight(bias)] if bias else [])
            return self.op("Gemm", *inputs, transB=1)
        self.transposed[weight + ".T"] = self.weight(weight)
        y = self.op("MatMul", x, weight + ".T")
        return self.op("Add", y, self.weight(bias)) if bias else y

    def layer_norm(self, x: str, prefix: str, eps: float) -> str:
        w, b = self.weight(prefix + "weight"), self.weight(prefix + "bias")
        return self.op("LayerNormalization", x, w, b, axis=-1, epsilon=eps)

    def activation(self, x: str, kind: str) -> str:
        """The MLP activations by the names of :data:`clipsearch.models.npmath.ACTIVATIONS`."""
        if kind == "quick":  # x * sigmoid(1.702 x)
            scaled = self.op("Mul", x, self.const(1.702, np.float32))
            return self.op("Mul", x, self.op("Sigmoid", scaled))
        if kind in ("none", "tanh"):
            return self.op("Gelu", x, approximate=kind)
        raise ValueError(f"unknown activation {kind!r}")

    def block(
        self,
        x: str,
        prefix: str,
        *,
        seq: int | None,
        heads: int,
        eps: float,
        activation: str,
        mask: str | None = None,
        first_only: bool = False,
    ) -> str:
        """open_clip's ``ResidualAttentionBlock`` over rows x (sequences * n, width), its
        weights ``prefix`` + state-dict name.

        Args:
            seq: positions per sequence (any number of sequences); None for one sequence of
                any length.
            mask: an additive (n, n) attention mask (the causal one of a text tower).
            first_only: only each sequence's first row comes out (sequences, width), for a
                last block whose first position alone is read (an image tower's class
                token): the other rows' output projection and MLP are skipped (exact).
        """
        width = self.shapes[prefix + "attn.out_proj.weight"][0]
        hd = width // heads
        h = self.layer_norm(x, prefix + "ln_1.", eps)
        qkv = self.linear(h, prefix + "attn.in_proj_weight", prefix + "attn.in_proj_bias")
        split = [-1, seq, 3, heads, hd] if seq is not None else [1, -1, 3, heads, hd]
        qkv = self.op("Reshape", qkv, self.const(split))
        qkv = self.op("Transpose", qkv, perm=[2, 0, 3, 1, 4])  # (3, seqs, heads, n, hd)
        q, k, v = (self.op("Gather", qkv, self.const(i), axis=0) for i in range(3))
        if first_only:  # the first position's query alone, and its residual row
            if seq is None:
                raise ValueError("first_only needs sequences of a known length")
            q = self.op("Slice", q, self.const([0]), self.const([1]), self.const([2]))
            rows = self.op("Reshape", x, self.const([-1, seq, width]))
            x = self.op("Gather", rows, self.const(0), axis=1)
        q = self.op("Mul", q, self.const(hd**-0.5, np.float32))
        scores = self.op("MatMul", q, self.op("Transpose", k, perm=[0, 1, 3, 2]))
        if mask is not None:
            scores = self.op("Add", scores, mask)
        attn = self.op("MatMul", self.op("Softmax", scores, axis=-1), v)
        attn = self.op("Transpose", attn, perm=[0, 2, 1, 3])  # (seqs, n, heads, hd)
        attn = self.op("Reshape", attn, self.const([-1, width]))
        out = self.linear(attn, prefix + "attn.out_proj.weight", prefix + "attn.out_proj.bias")
        x = self.op("Add", x, out)
        h = self.layer_norm(x, prefix + "ln_2.", eps)
        h = self.linear(h, prefix + "mlp.c_fc.weight", prefix + "mlp.c_fc.bias")
        h = self.activation(h, activation)
        h = self.linear(h, prefix + "mlp.c_proj.weight", prefix + "mlp.c_proj.bias")
        return self.op("Add", x, h)

    def model(
        self,
        inputs: Mapping[str, list[Any]],
        output: str,
        name: str,
        *,
        output_shape: list[Any] | None = None,
        weights_as_inputs: bool = False,
    ) -> bytes:
        """The serialized model: ``inputs`` (name -> shape, None or a name for a free
        axis), all float32, and one float32 output (of ``output_shape``). The weights are
        placeholders the session fills (see :func:`make_session`), or with
        ``weights_as_inputs`` inputs of the graph, fed to every run."""
        from onnx import TensorProto, helper

        if weights_as_inputs:
            inputs = {**inputs, **{n: list(shape) for n, shape in self.shapes.items()}}
        values = [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
            for n, shape in inputs.items()
        ]
        result = helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)
        shapes = {**self.shapes, **{t: self.shapes[w][::-1] for t, w in self.transposed.items()}}
        weights = [] if weights_as_inputs else [_placeholder(n, s) for n, s in shapes.items()]
        graph = helper.make_graph(self.nodes, name, values, [result], self.consts + weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = min(model.ir_version, 10)  # what ORT releases since 1.20 read
        return model.SerializeToString()


def _placeholder(name: str, shape: tuple[int, ...]) -> Any:
    """A float32 initializer whose data is external and never read: the session replaces it
    (ORT checks that what replaces it has this name, shape and type)."""
    from onnx import TensorProto

    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
    tensor.data_location = TensorProto.EXTERNAL
    length = 4 * math.prod(shape)
    for key, value in (("location", _PLACEHOLDER), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def tower_session(
    kind: str,
    config: Mapping[str, Any],
    build: Callable[[], bytes],
    tensors: Mapping[str, np.ndarray],
    threads: int,
    *,
    feed: bool = False,
) -> Any:
    """A session of the tower ``kind`` with this config (see :func:`make_session`), its graph
    built once by ``build`` and kept; a kept graph ONNX Runtime refuses is built again.

    Raises:
        ImportError: onnxruntime is missing, or onnx where the graph must be built.
        SessionError: ONNX Runtime refused a freshly built graph or a weight.
    """
    text = json.dumps(
        {"kind": kind, "config": dict(config), "version": GRAPH_VERSION, "opset": OPSET},
        sort_keys=True,
    )
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    path = cache_root(CACHE_KIND) / f"{kind}-{digest}.onnx"
    try:
        kept = path.read_bytes()
    except OSError:
        kept = None
    if kept is not None:
        try:
            return make_session(kept, tensors, threads, feed=feed)
        except SessionError as e:  # damaged, or from another onnx: build it again
            log.debug("the kept graph %s is refused: %s", path, e)
    graph = build()
    session = make_session(graph, tensors, threads, feed=feed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, graph, durable=False)
    except OSError as e:  # a read-only cache: build it again next time
        log.debug("cannot keep the graph %s: %s", path, e)
    return session


def make_session(
    graph: bytes, tensors: Mapping[str, np.ndarray], threads: int, *, feed: bool = False
) -> Any:
    """An ONNX Runtime CPU session of ``graph`` with its weights from ``tensors`` (float32,
    each as the graph declares it), running on ``threads`` threads (0: ORT's default).

    The weights go in one of two ways. By default they fill the graph's placeholders: ORT
    copies them into its own buffers and packs them for its kernels once, which makes thin
    products (a text query's few rows) several times faster. With ``feed`` (a graph built
    ``weights_as_inputs``) a :class:`FedSession` hands them to every run as ``OrtValue``
    objects over the arrays' own buffers: nothing is copied, and a memory-mapped weight stays
    the file's pages; for products of many rows (a batch of images) that runs as fast
    (benchmarks/RESULTS.md, #18).

    Raises:
        ImportError: onnxruntime is not installed.
        SessionError: ONNX Runtime refused the graph or a weight.
    """
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its warnings are not the user's business
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        arrays = {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in tensors.items()}
        values = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in arrays.items()}
        if not feed:
            options.add_external_initializers(list(values), list(values.values()))
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT's errors share no narrower base
        raise SessionError(f"ONNX Runtime refused the graph: {e}") from e
    return FedSession(session, arrays, values, ort) if feed else session


class FedSession:
    """A session whose weights are inputs, fed to every run from ``OrtValue`` objects over
    the weight arrays' own buffers; it holds the arrays, which the values point into."""

    def __init__(
        self, session: Any, arrays: Mapping[str, np.ndarray], weights: Mapping[str, Any], ort: Any
    ):
        self.session = session
        self.arrays = dict(arrays)
        self._weights = dict(weights)
        self._ort = ort

    def run(self, outputs: list[str] | None, inputs: Mapping[str, np.ndarray]) -> list[Any]:
        """``InferenceSession.run``: ``inputs`` besides the weights; NumPy arrays out."""
        feed = dict(self._weights)
        for name, array in inputs.items():
            feed[name] = self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
        return [v.numpy() for v in self.session.run_with_ort_values(outputs, feed)]
