"""ONNX models as bytes, without the ``onnx`` package.

ONNX Runtime takes a model as serialized protobuf. ``onnx.helper`` builds one, but ``import
onnx`` costs about 0.9 s here (benchmarks/RESULTS.md), half of an indexing run's start-up
budget, for a graph of a few hundred nodes. This module writes the few messages such a graph
needs (``ModelProto``, ``GraphProto``, ``NodeProto``, ``AttributeProto``, ``TensorProto``,
``ValueInfoProto``) in protobuf's wire format, with the field numbers of ``onnx.proto``;
tests/models/test_onnxtower.py checks that ``onnx`` parses what it writes into the messages
``onnx.helper`` makes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

FLOAT, INT64 = 1, 7  # TensorProto.DataType
_ELEM_TYPES = {np.dtype(np.float32): FLOAT, np.dtype(np.int64): INT64}
# AttributeProto.AttributeType
_ATTR_FLOAT, _ATTR_INT, _ATTR_STRING, _ATTR_INTS = 1, 2, 3, 7


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64: two's complement, ten bytes
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(field: int, n: int) -> bytes:
    return _varint(field << 3) + _varint(n)


def _bytes(field: int, data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return _varint(field << 3 | 2) + _varint(len(raw)) + raw


def _float(field: int, x: float) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<f", x)


def _attribute(name: str, value: float | int | str | Sequence[int]) -> bytes:
    """An ``AttributeProto``: name 1, f 2, i 3, s 4, ints 8, type 20."""
    out = _bytes(1, name)
    if isinstance(value, float):
        return out + _float(2, value) + _int(20, _ATTR_FLOAT)
    if isinstance(value, int):
        return out + _int(3, value) + _int(20, _ATTR_INT)
    if isinstance(value, str):
        return out + _bytes(4, value) + _int(20, _ATTR_STRING)
    return out + b"".join(_int(8, v) for v in value) + _int(20, _ATTR_INTS)


def node(
    op: str, inputs: Sequence[str], outputs: Sequence[str], name: str = "", **attrs: object
) -> bytes:
    """A ``NodeProto`` of the default domain: input 1, output 2, name 3, op_type 4,
    attribute 5. Attributes are floats, ints, strings or lists of ints."""
    out = b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
    out += (_bytes(3, name) if name else b"") + _bytes(4, op)
    for key in sorted(attrs):
        out += _bytes(5, _attribute(key, attrs[key]))  # type: ignore[arg-type]
    return out


def tensor(name: str, array: np.ndarray) -> bytes:
    """A ``TensorProto`` holding a small array (float32 or int64): dims 1, data_type 2,
    name 8, raw_data 9 (little-endian)."""
    a = np.asarray(array)
    elem = _ELEM_TYPES[a.dtype]
    dims = b"".join(_int(1, d) for d in a.shape)
    raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
    return dims + _int(2, elem) + _bytes(8, name) + _bytes(9, raw)


def value_info(name: str, shape: Sequence[int | str], elem: int = FLOAT) -> bytes:
    """A ``ValueInfoProto`` of a tensor: name 1, type 2 (``TypeProto.tensor_type`` 1:
    elem_type 1, shape 2 of dims 1, each dim_value 1 or dim_param 2)."""
    dims = b"".join(_bytes(1, _bytes(2, d) if isinstance(d, str) else _int(1, d)) for d in shape)
    tensor_type = _int(1, elem) + _bytes(2, dims)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def model(
    nodes: Sequence[bytes],
    inputs: Sequence[bytes],
    outputs: Sequence[bytes],
    initializers: Sequence[bytes],
    *,
    name: str,
    opset: int,
    ir_version: int,
) -> bytes:
    """A serialized ``ModelProto`` (ir_version 1, producer_name 2, graph 7, opset_import 8) of
    one graph (node 1, name 2, initializer 5, input 11, output 12), default domain only."""
    graph = b"".join(_bytes(1, n) for n in nodes) + _bytes(2, name)
    graph += b"".join(_bytes(5, t) for t in initializers)
    graph += b"".join(_bytes(11, i) for i in inputs) + b"".join(_bytes(12, o) for o in outputs)
    opset_id = _bytes(1, "") + _int(2, opset)
    return _int(1, ir_version) + _bytes(2, "clipsearch") + _bytes(7, graph) + _bytes(8, opset_id)
