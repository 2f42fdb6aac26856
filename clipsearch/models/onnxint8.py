"""int8 image towers: the linear layers' weights quantized to int8 (``--precision int8``).

ONNX Runtime's dynamic quantization stores each linear layer's weight as int8 with a scale
and quantizes the activations on the fly, then multiplies in integers (VNNI where the CPU has
it). On this project's 2-core test machine it ran the ViT-B/32 image tower 2.6x as fast as
fp32, at a cosine of 0.9998 to the fp32 vectors on random weights (benchmarks/RESULTS.md);
how close it stays on a given model's trained weights is for its user to check, hence an
opt-in precision, never the default. The patch embedding, LayerNorms, attention scores and
softmax stay in fp32.

A quantized tower is made once per model from its image tower record's weights (a few
seconds; ``onnx`` and ONNX Runtime's quantization tools) and kept under
``$XDG_CACHE_HOME/clipsearch/onnx-int8`` (about a quarter of the fp32 weights' size), keyed by
the model's identity and its weights file, so it stops applying when they change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping

import numpy as np

from clipsearch.models.imagetower import ImageRecord
from clipsearch.models.onnxgraph import GRAPH_VERSION, SessionError
from clipsearch.models.towercache import cache_root, file_stat

CACHE_KIND = "onnx-int8"
QUANT_VERSION = 1  # bump when the quantization's settings change: kept towers are then ignored


def int8_tower_model(
    found: ImageRecord, tensors: Mapping[str, np.ndarray], build: Callable[[], bytes]
) -> bytes:
    """The serialized int8 model of an image tower record, made once and then read back.

    Args:
        found: the record.
        tensors: its weights by state-dict name (those ``build``'s graph declares).
        build: the tower's graph in its int8 form (``onnxtower.tower_graph(int8_form=True)``).

    Raises:
        OSError: the kept model cannot be read or written.
        SessionError: quantizing failed (``onnx`` or the quantization tools missing or
            refusing the graph).
    """
    key = {
        "identity": found.identity.key,
        "weights": found.weights,
        "stat": file_stat(found.weights),
        "config": found.config.to_dict(),
        "graph": GRAPH_VERSION,
        "quant": QUANT_VERSION,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    path = cache_root(CACHE_KIND) / f"{digest}.onnx"
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        _quantize(build(), tensors, tmp)
        os.replace(tmp, path)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - onnx and the quantizer raise many kinds
        raise SessionError(f"could not quantize the image tower to int8: {e}") from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path.read_bytes()


def _quantize(graph: bytes, tensors: Mapping[str, np.ndarray], out: os.PathLike[str]) -> None:
    """Fill the graph's weight placeholders with ``tensors`` (transposed where a name ends in
    ``.T``), drop the ones no node reads, and quantize every product with a weight."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load_from_string(graph)
    read = {name for node in model.graph.node for name in node.input}
    kept = []
    for init in model.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            kept.append(init)  # a small constant
        elif init.name in read:
            name = init.name
            array = tensors[name[:-2]].T if name.endswith(".T") else tensors[name]
            kept.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    weights = {init.name for init in kept if init.name in tensors or init.name.endswith(".T")}
    products = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    logging.disable(logging.WARNING)  # its advice to pre-process goes to the root logger
    try:
        quantize_dynamic(
            model,
            out,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=products,
            weight_type=QuantType.QInt8,
        )
    finally:
        logging.disable(logging.NOTSET)
