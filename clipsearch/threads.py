"""Run a block with a given number of threads in torch, FAISS's OpenMP or NumPy's OpenBLAS.

The one thread limiter of the package: a small query runs faster on one thread than on a
pool that has to wake up, and a training run is pinned to the threads it was given.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator

TORCH = "torch"
FAISS = "faiss"
BLAS = "blas"

_Control = tuple[Callable[[], int], Callable[[int], object]]


def default_threads() -> int | None:
    """The intra-op threads a model run takes when nothing limits it: ``OMP_NUM_THREADS``
    where it is set (torch and NumPy's OpenBLAS honour it), else None, each library's own
    default (torch and ONNX Runtime: one per physical core). For a pool that is sized once,
    when it is made (an ONNX Runtime session), so that it follows what torch would do."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return n if n > 0 else None


@contextlib.contextmanager
def limit_threads(n: int | None, *pools: str) -> Iterator[None]:
    """Run the block with ``n`` threads in each of ``pools`` (:data:`TORCH`, :data:`FAISS`,
    :data:`BLAS`), then restore what each had. ``n`` None runs as is, and so does a pool that
    cannot be reached here (NumPy without OpenBLAS)."""
    with contextlib.ExitStack() as stack:
        if n is not None:
            for pool in pools:
                control = _CONTROLS[pool]()
                if control is None:
                    continue
                get, set_ = control
                before = int(get())
                if before != n:
                    set_(n)
                    stack.callback(set_, before)
        yield


def _torch() -> _Control:
    import torch

    return torch.get_num_threads, torch.set_num_threads


def _faiss() -> _Control:
    import faiss

    return faiss.omp_get_max_threads, faiss.omp_set_num_threads


@functools.cache
def _numpy_openblas() -> _Control | None:
    """(get, set) of the thread count of the OpenBLAS that NumPy loaded, or None. Found among
    the mapped libraries under NumPy's own folders (FAISS brings its own OpenBLAS)."""
    import ctypes

    import numpy as np

    site = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line})
    except OSError:
        return None
    for path in paths:
        if not path.startswith(os.path.join(site, "numpy")):  # numpy/ or numpy.libs/
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    set_.argtypes = [ctypes.c_int]
                    return get, set_
    return None


_CONTROLS: dict[str, Callable[[], _Control | None]] = {
    TORCH: _torch,
    FAISS: _faiss,
    BLAS: _numpy_openblas,
}
