"""Images on ONNX Runtime: the image tower of :mod:`clipsearch.models.imagetower` as an ONNX
graph, without torch.

``import torch`` costs seconds and most of a process's memory, and torch's fp32 on the CPU is
slower than ONNX Runtime's (benchmarks/RESULTS.md). :func:`tower_graph` builds the graph of an
:class:`~clipsearch.models.imagetower.ImageTowerConfig` with
:class:`~clipsearch.models.onnxgraph.GraphBuilder` (the computation of
:class:`~clipsearch.models.npimagetower.NumpyImageTower`: the patch embedding as a
convolution, the class token, the positional embedding, ``ln_pre``, the residual attention
blocks, the pooling, ``ln_post`` and the projection), once per tower shape (it is kept in the
graph cache). Its weights are inputs of the graph: :class:`OnnxImageTower` feeds the cache
record's memory-mapped safetensors arrays to every run as ``OrtValue`` objects over their
pages (``make_session(feed=True)``), so nothing is copied. (Filling placeholders at session
creation instead, as the text tower does, copies every weight into ONNX Runtime's buffers:
+363 MiB and 0.5 s more to start for ViT-B/32, for no speed gained on batches of images;
``add_initializer``, which would not copy, refuses an initializer declared without data;
benchmarks/RESULTS.md.)

Its vectors equal the torch tower's in fp32 (within :data:`PARITY_TOLERANCE`), so vectors of
every engine mix in one index.

:func:`clipsearch.models.engines.image_engine` says when it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from clipsearch.models.cpuencoder import CpuImageEncoder
from clipsearch.models.identity import ModelIdentity, ModelSpec
from clipsearch.models.imagetower import ImageRecord, ImageTowerConfig, read_image_record
from clipsearch.models.onnxgraph import (
    GraphBuilder,
    SessionError,
    available,
    make_session,
    tower_session,
)
from clipsearch.models.onnxint8 import int8_tower_model
from clipsearch.threads import default_threads

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5  # max abs difference of unit vectors, ONNX Runtime fp32 vs torch fp32
INPUT = "pixels"


def tower_graph(config: ImageTowerConfig, *, int8_form: bool = False) -> bytes:
    """The serialized ONNX model of an image tower: inputs ``pixels`` (N, 3, size, size)
    float32 and every tensor of ``config.tensor_shapes()`` by its name (the weights), output
    (N, output_dim), not normalized. With ``int8_form``, the form int8 quantization takes
    (:mod:`clipsearch.models.onnxint8`): the weights are placeholders, and each linear layer
    a ``MatMul`` on its transposed weight."""
    c = config
    g = GraphBuilder(c.tensor_shapes(), matmul_linear=int8_form)
    x = _tokens(g, c)
    for i in range(c.layers):
        last = i == c.layers - 1
        x = g.block(
            x,
            f"transformer.resblocks.{i}.",
            seq=c.tokens,
            heads=c.heads,
            eps=c.ln_eps,
            activation=c.activation,
            first_only=last and c.pool == "tok",  # the class token alone is read after it
        )
    x = _pool(g, c, x)
    if c.proj:
        x = g.op("MatMul", x, g.weight("proj"))
    size = c.image_size
    inputs = {INPUT: ["batch", 3, size, size]}
    return g.model(
        inputs,
        x,
        "clipsearch-clip-image",
        output_shape=["batch", c.output_dim],
        weights_as_inputs=not int8_form,
    )


def _tokens(g: GraphBuilder, c: ImageTowerConfig) -> str:
    """Patch embedding, class token, positional embedding, ``ln_pre``: (N * tokens, width)."""
    p, w = c.patch_size, c.width
    x = g.op("Conv", INPUT, g.weight("conv1.weight"), kernel_shape=[p, p], strides=[p, p])
    x = g.op("Transpose", g.op("Reshape", x, g.const([0, w, -1])), perm=[0, 2, 1])
    batch = g.op("Slice", g.op("Shape", INPUT), g.const([0]), g.const([1]))
    cls_shape = g.op("Concat", batch, g.const([1, w]), axis=0)
    cls = g.op("Reshape", g.weight("class_embedding"), g.const([1, 1, w]))
    x = g.op("Concat", g.op("Expand", cls, cls_shape), x, axis=1)
    x = g.op("Add", x, g.weight("positional_embedding"))
    if c.ln_pre:
        x = g.layer_norm(x, "ln_pre.", c.ln_eps)
    return g.op("Reshape", x, g.const([-1, w]))


def _pool(g: GraphBuilder, c: ImageTowerConfig, x: str) -> str:
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


class OnnxImageTower:
    """The image tower on an ONNX Runtime CPU session (:func:`tower_graph`, kept in the graph
    cache of :mod:`clipsearch.models.onnxgraph`), its weights ``tensors`` (float32 by
    state-dict name inside ``visual``) fed to every run; memory-mapped ones are read in place,
    never copied.

    Raises:
        ValueError: a tensor is missing or has the wrong shape or dtype.
        ImportError: onnxruntime is missing, or onnx where the graph is not kept yet.
        SessionError: ONNX Runtime refused the graph or a weight.
    """

    def __init__(
        self,
        config: ImageTowerConfig,
        tensors: Mapping[str, np.ndarray],
        threads: int | None,
        *,
        int8_model: bytes | None = None,
    ):
        self.config = config
        self.tensors = config.checked(tensors)
        if int8_model is not None:  # its own (int8) weights inside
            self.session = make_session(int8_model, {}, threads or 0)
            return
        build = lambda: tower_graph(config)  # noqa: E731
        self.session = tower_session(
            "clip-image", config.to_dict(), build, self.tensors, threads or 0, feed=True
        )

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """The image features (N, output_dim) of preprocessed pixels (N, 3, size, size),
        not normalized."""
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        s = self.config.image_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(f"pixels of shape {x.shape}, expected (N, 3, {s}, {s})")
        return self.session.run(None, {INPUT: x})[0]


class OnnxImageEncoder(CpuImageEncoder):
    """Encodes images like :class:`~clipsearch.models.npimagetower.NumpyImageEncoder`, on
    ONNX Runtime: fp32 (or, for ``--precision int8``, int8 weights) on the CPU, without
    torch. Made by :func:`cached_onnx_image_encoder` or :func:`onnx_image_encoder`."""

    engine = "onnx"


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


def onnx_image_encoder(found: ImageRecord, *, int8: bool = False) -> OnnxImageEncoder | None:
    """The ONNX Runtime image encoder of a valid record, in fp32 or, with ``int8``, with the
    linear layers' weights quantized to int8 (:mod:`clipsearch.models.onnxint8`); None
    (logged) where onnxruntime is not installed, or the weights or the session fail."""
    if not available():
        log.debug("onnxruntime is not installed")
        return None
    try:
        tensors = found.tensors()
        build = lambda: tower_graph(found.config, int8_form=True)  # noqa: E731
        model = int8_tower_model(found, tensors, build) if int8 else None
        tower = OnnxImageTower(found.config, tensors, default_threads(), int8_model=model)
    except (OSError, ValueError, ImportError, SessionError) as e:
        log_ = log.warning if int8 else log.debug  # int8 was asked for: say why it is not
        log_("no ONNX Runtime %ssession for %s: %s", "int8 " if int8 else "", found.weights, e)
        return None
    encoder = OnnxImageEncoder(tower, found.preprocess, found.identity)
    encoder.precision = "int8" if int8 else "fp32"
    return encoder
