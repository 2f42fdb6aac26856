"""NumPy building blocks of the torch-free towers (:mod:`clipsearch.models.texttower`,
:mod:`clipsearch.models.hftower`, :mod:`clipsearch.models.npimagetower`): thin matrix products,
LayerNorm, the GELUs, open_clip's residual attention block (causal for text, not for images),
and memory-mapped safetensors."""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from clipsearch.store.fileio import atomic_write

# Weight rows per block in linear: about 256 KB of them, which stay in a core's L2 cache.
_BLOCK_BYTES = 256 << 10


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``x @ weight.T + bias`` for a torch-layout (out, in) weight.

    A query is a few rows of x: OpenBLAS runs such thin products well below its speed (it
    repacks the whole weight for a handful of columns), and ``x @ weight.T`` slower still.
    ``weight @ x.T`` in blocks of weight rows that fit in L2 is faster (benchmarks/RESULTS.md);
    one row is a matrix-vector product anyway.
    """
    rows = x.shape[0]
    xt = np.ascontiguousarray(x.T)
    if 1 < rows <= 16:
        out = np.empty((weight.shape[0], rows), dtype=np.float32)
        step = max(8, _BLOCK_BYTES // (weight.itemsize * weight.shape[1]))
        for i in range(0, weight.shape[0], step):
            np.matmul(weight[i : i + step], xt, out=out[i : i + step])
    else:
        out = weight @ xt
    return out.T + bias if bias is not None else out.T


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.square(centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(eps)) * weight + bias


def quick_gelu(x: np.ndarray) -> np.ndarray:
    # x * sigmoid(1.702 x), with sigmoid(y) = (1 + tanh(y / 2)) / 2: no overflow for large |x|
    return x * (np.float32(0.5) + np.float32(0.5) * np.tanh(np.float32(0.851) * x))


# Abramowitz & Stegun 7.1.26: erf(z) = 1 - poly(t) exp(-z^2), t = 1 / (1 + p z), z >= 0, with an
# absolute error below 1.5e-7, about one float32 ulp of 1: as exact as torch's fp32 GELU.
_ERF_P = 0.3275911
_ERF_A = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x * Phi(x) = x/2 * (1 + erf(x / sqrt 2)), as ``torch.nn.GELU()``; numpy has no
    erf, and the tanh approximation differs by up to 4.7e-4.

    In float32 throughout (a float64 pass cost several times as much on an image tower's
    activations): the tail ``t = erfc(|x| / sqrt 2) / 2`` is small where x is large, so
    ``x - x t`` (x >= 0) and ``x t`` (x < 0) round like the result itself."""
    x = np.asarray(x, dtype=np.float32)
    z = np.abs(x) * np.float32(1.0 / math.sqrt(2.0))
    t = np.float32(1.0) / (np.float32(1.0) + np.float32(_ERF_P) * z)
    poly = np.zeros_like(t)
    for a in _ERF_A:  # Horner, highest power first
        poly += np.float32(a)
        poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    poly *= z
    poly *= np.float32(0.5)  # the tail: erfc(|x| / sqrt 2) / 2
    poly *= x
    return np.where(x >= 0, x - poly, poly).astype(np.float32, copy=False)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU's tanh approximation, as ``torch.nn.GELU(approximate="tanh")``."""
    inner = np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x * x * x)
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(inner))


# The MLP activations by the names the towers' configs use (torch's ``approximate``, and
# ``quick`` for open_clip's QuickGELU).
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "quick": quick_gelu,
    "none": gelu,
    "tanh": gelu_tanh,
}


def block_shapes(prefix: str, width: int, mlp_width: int) -> dict[str, tuple[int, ...]]:
    """The tensors of one open_clip ``ResidualAttentionBlock`` (``prefix`` + state-dict name)."""
    w, m = width, mlp_width
    shapes = {
        "ln_1.weight": (w,),
        "ln_1.bias": (w,),
        "attn.in_proj_weight": (3 * w, w),
        "attn.in_proj_bias": (3 * w,),
        "attn.out_proj.weight": (w, w),
        "attn.out_proj.bias": (w,),
        "ln_2.weight": (w,),
        "ln_2.bias": (w,),
        "mlp.c_fc.weight": (m, w),
        "mlp.c_fc.bias": (m,),
        "mlp.c_proj.weight": (w, m),
        "mlp.c_proj.bias": (w,),
    }
    return {prefix + k: v for k, v in shapes.items()}


def residual_block(
    x: np.ndarray,
    t: Mapping[str, np.ndarray],
    prefix: str,
    *,
    n: int,
    heads: int,
    eps: float,
    activation: str,
    causal: bool = False,
    pool: np.ndarray | None = None,
) -> np.ndarray:
    """open_clip's ``ResidualAttentionBlock`` (pre-LayerNorm, multi-head attention, MLP) over
    ``x``: sequences of ``n`` positions, one row each (sequences * n, width), its tensors
    ``t[prefix + name]`` (see :func:`block_shapes`).

    With ``pool`` (one position per sequence), only those rows come out: when nothing after
    this block reads another position (the last block), the other rows' output projection
    and MLP are skipped; exact, since a row's result does not depend on them.
    """
    p = prefix
    rows, width = len(x) // n, x.shape[1]
    hd = width // heads
    h = layer_norm(x, t[p + "ln_1.weight"], t[p + "ln_1.bias"], eps)
    qkv = linear(h, t[p + "attn.in_proj_weight"], t[p + "attn.in_proj_bias"])
    # (rows, n, 3, heads, hd) -> three (rows, heads, n, hd)
    q, k, v = qkv.reshape(rows, n, 3, heads, hd).transpose(2, 0, 3, 1, 4)
    mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1) if causal else None
    if pool is not None:
        q = q[np.arange(rows), :, pool][:, :, None, :]  # (rows, heads, 1, hd)
        mask = mask[pool][:, None, None, :] if mask is not None else None
        x = x[np.arange(rows) * n + pool]
    scores = (q * np.float32(hd**-0.5)) @ k.transpose(0, 1, 3, 2)
    if mask is not None:
        scores += mask
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    attn = (scores @ v).transpose(0, 2, 1, 3).reshape(len(x), width)
    x = x + linear(attn, t[p + "attn.out_proj.weight"], t[p + "attn.out_proj.bias"])
    h = layer_norm(x, t[p + "ln_2.weight"], t[p + "ln_2.bias"], eps)
    h = linear(h, t[p + "mlp.c_fc.weight"], t[p + "mlp.c_fc.bias"])
    h = ACTIVATIONS[activation](h)
    return x + linear(h, t[p + "mlp.c_proj.weight"], t[p + "mlp.c_proj.bias"])


# --- safetensors, memory-mapped ------------------------------------------------------------

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


def safetensors_header(path: str | os.PathLike[str]) -> tuple[dict, int]:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, data offsets) and
    the file offset its data offsets count from.

    Raises:
        ValueError: the file is not a valid safetensors file.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 << 20:
            raise ValueError(f"{path}: not a safetensors file (header of {n} bytes)")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (header is not an object)")
    return header, 8 + n


def read_safetensors(
    path: str | os.PathLike[str], names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Tensors of a safetensors file as float32 arrays; F32 ones are memory-mapped (no copy:
    pages are read when touched, so a large token embedding costs the few rows a query uses).

    Args:
        path: the file.
        names: the tensors wanted (default: all); absent names are left out.

    Raises:
        ValueError: the file is not a valid safetensors file or holds a dtype we do not read.
    """
    size = os.path.getsize(path)
    header, base = safetensors_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r") if size > base else np.empty(0, np.uint8)
    wanted = set(header) - {"__metadata__"} if names is None else set(names) & set(header)
    out: dict[str, np.ndarray] = {}
    for name in wanted:
        info = header[name]
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has dtype {info.get('dtype')}")
        shape = tuple(int(s) for s in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
        count = math.prod(shape)
        if not 0 <= begin <= end <= size - base or end - begin != count * np.dtype(dtype).itemsize:
            raise ValueError(f"{path}: tensor {name} lies outside the file")
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=base + begin).reshape(shape)
        if info["dtype"] == "BF16":  # the top half of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        elif dtype is not np.float32:
            arr = arr.astype(np.float32)
        out[name] = arr
    return out


def save_safetensors(tensors: Mapping[str, np.ndarray], path: Path) -> None:
    """Write float32 tensors as a safetensors file, atomically."""
    from safetensors.numpy import save

    data = save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()})
    atomic_write(path, data, durable=False)
