"""Images on ONNX Runtime: the image tower of :mod:`clipsearch.models.imagetower` as an ONNX
graph, without torch.

``import torch`` costs seconds and most of a process's memory, and torch's fp32 on the CPU is
slower than ONNX Runtime's (benchmarks/RESULTS.md). :func:`tower_graph` writes the graph of an
:class:`~clipsearch.models.imagetower.ImageTowerConfig` (the computation of
:class:`~clipsearch.models.npimagetower.NumpyImageTower`: the patch embedding as a
convolution, the class token, the positional embedding, ``ln_pre``, the residual attention
blocks, the pooling, ``ln_post`` and the projection) with standard operators of opset
:data:`OPSET` (LayerNormalization and Gelu each one kernel; Gemm on the torch-layout weights
as they are stored). The weights are inputs of the graph, not initializers:
:class:`OnnxImageTower` feeds the cache record's memory-mapped safetensors arrays to every run
as ``OrtValue`` objects over their pages, so nothing is copied, into a model file or into ONNX
Runtime's memory. (Weights as initializers given at session creation were tried:
``add_initializer`` refuses an initializer declared without data, and
``add_external_initializers`` copies every weight into ONNX Runtime's own buffers, +363 MiB
and 0.5 s more to start for ViT-B/32, for no speed gained; benchmarks/RESULTS.md.)

Its vectors equal the torch tower's in fp32 (within :data:`PARITY_TOLERANCE`), so vectors of
every engine mix in one index.

:func:`clipsearch.models.engines.image_engine` says when it runs.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from clipsearch.models import onnxproto as pb
from clipsearch.models.cpuencoder import CpuImageEncoder
from clipsearch.models.identity import ModelIdentity, ModelSpec
from clipsearch.models.imagetower import ImageRecord, ImageTowerConfig, read_image_record
from clipsearch.models.npmath import read_safetensors
from clipsearch.threads import default_threads

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5  # max abs difference of unit vectors, ONNX Runtime fp32 vs torch fp32
OPSET = 20  # Gelu from 20, LayerNormalization from 17, ReduceMean's axes as an input from 18
IR_VERSION = 9  # what opset 20 needs, and ONNX Runtime 1.20 reads
INPUT, OUTPUT = "pixels", "features"


class _Graph:
    """Nodes and small constants of a graph being written; every value gets a fresh name."""

    def __init__(self) -> None:
        self.nodes: list[bytes] = []
        self.constants: list[bytes] = []
        self._count = 0

    def op(self, op: str, *inputs: str, **attrs: object) -> str:
        self._count += 1
        out = f"{op.lower()}_{self._count}"
        self.nodes.append(pb.node(op, inputs, [out], **attrs))
        return out

    def const(self, value: Any, dtype: type = np.int64) -> str:
        self._count += 1
        name = f"const_{self._count}"
        self.constants.append(pb.tensor(name, np.asarray(value, dtype=dtype)))
        return name

    def gemm(self, x: str, weight: str, bias: str) -> str:
        """``x @ weight.T + bias`` for a torch-layout (out, in) weight, x (rows, in)."""
        return self.op("Gemm", x, weight, bias, transB=1)

    def layer_norm(self, x: str, prefix: str, eps: float) -> str:
        return self.op(
            "LayerNormalization", x, prefix + "weight", prefix + "bias", axis=-1, epsilon=eps
        )

    def activation(self, x: str, kind: str) -> str:
        if kind == "quick":  # x * sigmoid(1.702 x)
            scaled = self.op("Mul", x, self.const(1.702, np.float32))
            return self.op("Mul", x, self.op("Sigmoid", scaled))
        return self.op("Gelu", x, approximate=kind)  # "none" (exact, erf) or "tanh"


def tower_graph(config: ImageTowerConfig) -> bytes:
    """The serialized ONNX model of an image tower: inputs ``pixels`` (N, 3, size, size)
    float32 and every tensor of ``config.tensor_shapes()`` by its name (the weights), output
    ``features`` (N, output_dim), not normalized."""
    c, g = config, _Graph()
    x = _tokens(g, c)
    for i in range(c.layers):
        last = i == c.layers - 1
        x = _block(g, c, x, f"transformer.resblocks.{i}.", tok=last and c.pool == "tok")
    x = _pool(g, c, x)
    if c.proj:
        x = g.op("MatMul", x, "proj")
    g.nodes.append(pb.node("Identity", [x], [OUTPUT]))
    weights = [pb.value_info(n, s) for n, s in c.tensor_shapes().items()]
    size = c.image_size
    return pb.model(
        g.nodes,
        [pb.value_info(INPUT, ["batch", 3, size, size]), *weights],
        [pb.value_info(OUTPUT, ["batch", c.output_dim])],
        g.constants,
        name="clipsearch_image_tower",
        opset=OPSET,
        ir_version=IR_VERSION,
    )


def _tokens(g: _Graph, c: ImageTowerConfig) -> str:
    """Patch embedding, class token, positional embedding, ``ln_pre``: (N * tokens, width)."""
    p, w = c.patch_size, c.width
    x = g.op("Conv", INPUT, "conv1.weight", kernel_shape=[p, p], strides=[p, p])  # (N, w, g, g)
    x = g.op("Transpose", g.op("Reshape", x, g.const([0, w, -1])), perm=[0, 2, 1])
    batch = g.op("Slice", g.op("Shape", INPUT), g.const([0]), g.const([1]))
    cls_shape = g.op("Concat", batch, g.const([1, w]), axis=0)
    cls = g.op("Expand", g.op("Reshape", "class_embedding", g.const([1, 1, w])), cls_shape)
    x = g.op("Add", g.op("Concat", cls, x, axis=1), "positional_embedding")
    if c.ln_pre:
        x = g.layer_norm(x, "ln_pre.", c.ln_eps)
    return g.op("Reshape", x, g.const([-1, w]))


def _block(g: _Graph, c: ImageTowerConfig, x: str, p: str, *, tok: bool) -> str:
    """open_clip's ``ResidualAttentionBlock`` on rows (N * tokens, width). With ``tok`` (the
    last block of a class-token tower), only the class token's row comes out: nothing after
    reads the others, so their output projection and MLP are skipped (exact)."""
    n, w, heads = c.tokens, c.width, c.heads
    hd = w // heads
    h = g.layer_norm(x, p + "ln_1.", c.ln_eps)
    qkv = g.gemm(h, p + "attn.in_proj_weight", p + "attn.in_proj_bias")
    qkv = g.op("Reshape", qkv, g.const([-1, n, 3, heads, hd]))
    qkv = g.op("Transpose", qkv, perm=[2, 0, 3, 1, 4])  # (3, N, heads, n, hd)
    q, k, v = (g.op("Gather", qkv, g.const(i), axis=0) for i in range(3))
    if tok:  # the class token's query alone, and its residual row
        q = g.op("Slice", q, g.const([0]), g.const([1]), g.const([2]))
        x = g.op("Gather", g.op("Reshape", x, g.const([-1, n, w])), g.const(0), axis=1)
    q = g.op("Mul", q, g.const(hd**-0.5, np.float32))
    scores = g.op("Softmax", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), axis=-1)
    attn = g.op("Transpose", g.op("MatMul", scores, v), perm=[0, 2, 1, 3])
    attn = g.op("Reshape", attn, g.const([-1, w]))
    x = g.op("Add", x, g.gemm(attn, p + "attn.out_proj.weight", p + "attn.out_proj.bias"))
    h = g.gemm(g.layer_norm(x, p + "ln_2.", c.ln_eps), p + "mlp.c_fc.weight", p + "mlp.c_fc.bias")
    h = g.gemm(g.activation(h, c.activation), p + "mlp.c_proj.weight", p + "mlp.c_proj.bias")
    return g.op("Add", x, h)


def _pool(g: _Graph, c: ImageTowerConfig, x: str) -> str:
    """The pooled, ``ln_post``-normed features (N, width) of the last block's output: the
    class token's rows (N, width) already, or every position's (N * tokens, width)."""
    if c.pool == "tok":  # LayerNorm is per position: before or after pooling alike
        return g.layer_norm(x, "ln_post.", c.ln_eps)
    x = g.op("Reshape", x, g.const([-1, c.tokens, c.width]))
    if not c.final_ln_after_pool:
        x = g.layer_norm(x, "ln_post.", c.ln_eps)
    patches = g.op("Slice", x, g.const([1]), g.const([c.tokens]), g.const([1]))
    x = g.op("ReduceMean", patches, g.const([1]), keepdims=0)
    return g.layer_norm(x, "ln_post.", c.ln_eps) if c.final_ln_after_pool else x


# --- the session ------------------------------------------------------------------------------

# ORT_ENABLE_ALL and ORT_ENABLE_EXTENDED ran at the same speed (benchmarks/RESULTS.md, #18):
# with the weights as inputs there is nothing to fold or pre-pack; ALL also lays out the
# patch convolution for the CPU.
OPTIMIZATION = "ORT_ENABLE_ALL"


class OnnxImageTower:
    """The image tower on an ONNX Runtime CPU session, its weights ``tensors`` (float32 by
    state-dict name inside ``visual``; memory-mapped ones are read in place, never copied).

    Raises:
        ValueError: a tensor is missing or has the wrong shape or dtype.
        ImportError: onnxruntime is not installed.
        Exception: ONNX Runtime's own (``onnxruntime.capi.onnxruntime_pybind11_state.Fail``
            and its kin) where it cannot build the session.
    """

    def __init__(
        self, config: ImageTowerConfig, tensors: Mapping[str, np.ndarray], threads: int | None
    ):
        import onnxruntime as ort

        self.config = config
        self._ort = ort
        # contiguous: an OrtValue is a view of the array's buffer (mapped arrays are)
        self.tensors = {n: np.ascontiguousarray(t) for n, t in config.checked(tensors).items()}
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION)
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # OrtValues over the arrays' own buffers (no copy), fed to every run with the pixels
        self._values = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in self.tensors.items()}
        self.session = ort.InferenceSession(
            tower_graph(config), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """The image features (N, output_dim) of preprocessed pixels (N, 3, size, size),
        not normalized."""
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        s = self.config.image_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(f"pixels of shape {x.shape}, expected (N, 3, {s}, {s})")
        feed = {**self._values, INPUT: self._ort.OrtValue.ortvalue_from_numpy(x)}
        return self.session.run_with_ort_values([OUTPUT], feed)[0].numpy()


class OnnxImageEncoder(CpuImageEncoder):
    """Encodes images like :class:`~clipsearch.models.npimagetower.NumpyImageEncoder`, on
    ONNX Runtime: fp32 on the CPU, without torch. Made by :func:`cached_onnx_image_encoder`."""

    engine = "onnx"

    def features(self, pixels: np.ndarray) -> np.ndarray:
        return self.tower(pixels)


def onnxruntime_available() -> bool:
    """Whether onnxruntime is installed, told without importing it (0.1 s)."""
    if "onnxruntime" in sys.modules:  # imported, or blocked (None)
        return sys.modules["onnxruntime"] is not None
    try:
        return importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):
        return False


def cached_onnx_image_encoder(
    spec: ModelSpec, identity: ModelIdentity | None = None, cache_dir: str | None = None
) -> OnnxImageEncoder | None:
    """The ONNX Runtime image encoder of a model, if a valid image tower record of it is
    cached (see :func:`clipsearch.models.imagetower.read_image_record`); its weights are
    mapped, not read. None (use another engine) where onnxruntime is not installed, there is
    no valid record, or the session cannot be built; the reason is logged at debug level."""
    found = read_image_record(spec, identity, cache_dir)
    if found is None:
        log.debug("no valid image tower record of %s", spec.describe())
        return None
    return onnx_image_encoder(found)


def onnx_image_encoder(found: ImageRecord) -> OnnxImageEncoder | None:
    """The ONNX Runtime image encoder of a valid record; None (logged at debug level) where
    onnxruntime is not installed, or the weights or the session fail."""
    if not onnxruntime_available():
        log.debug("onnxruntime is not installed")
        return None
    prefix = found.prefix
    try:
        arrays = read_safetensors(found.weights, [prefix + n for n in found.config.tensor_shapes()])
        tensors = {n[len(prefix) :]: a for n, a in arrays.items()}
        tower = OnnxImageTower(found.config, tensors, default_threads())
    except Exception as e:  # ORT's errors derive from Exception only; each means "not here"
        log.debug("no ONNX Runtime session for %s: %s", found.weights, e)
        return None
    return OnnxImageEncoder(tower, found.preprocess, found.identity)
