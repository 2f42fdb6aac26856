"""Which engine encodes a run's images: the one policy. Torch-free.

Three engines compute the same image tower (the same vectors, within 1e-5 in fp32; they mix
in one index), at different start-up costs and rates (benchmarks/RESULTS.md, #18):

* ``numpy`` (:mod:`clipsearch.models.npimagetower`): starts at once (nothing to import), slow;
* ``onnx`` (:mod:`clipsearch.models.onnxtower`): ONNX Runtime fp32, a fraction of a second to
  start, faster than torch's fp32 on the CPU;
* ``torch`` (:mod:`clipsearch.models.imagetower`): seconds and most of the memory to import,
  the only one for GPUs, bf16 or fp16, compiling, decoding on the device, several devices;
  bf16 on a CPU that has it is the fastest CPU rate.

The choice goes by the run's work (images x GFLOP per image) against the break-evens measured
by benchmarks/bench_encode.py, where the faster engine's rate has not yet paid back the
slower start of the next.
"""

from __future__ import annotations

from clipsearch.models.imagetower import ImageTowerConfig
from clipsearch.models.runtime import cpu_flags_have_bf16, may_have_gpu

NUMPY, ONNX, TORCH = "numpy", "onnx", "torch"

# The most work (images x GFLOP per image) a run may ask for and still be encoded in NumPy:
# where NumPy fp32 at its rate finishes no later than torch, counting the time torch takes to
# import and load the tower. benchmarks/bench_encode.py measures that break-even for ViT-B/32
# and B/16 (RESULTS.md); this is the lower of the two, rounded down.
NUMPY_MAX_GFLOP = 175.0

# On a CPU with native bf16, the most work ONNX Runtime fp32 takes before torch bf16, whose
# faster rate has by then paid back its import and load: bench_encode.py's ONNX Runtime
# break-even, 494 GFLOP for ViT-B/32 (56 images; RESULTS.md, #18), rounded down.
ONNX_MAX_GFLOP = 450.0


def image_engine(
    images: int | None,
    config: ImageTowerConfig,
    device: str = "auto",
    precision: str = "auto",
    *,
    onnx: bool = True,
) -> str:
    """The engine for a run that encodes at most ``images`` images: ``numpy``, ``onnx`` or
    ``torch``.

    Args:
        images: at most how many the run encodes; None when unknown, or when the run asks for
            what only torch does (compiling, decoding on the device, several devices).
        config: the tower.
        device: as the user gave it: NumPy and ONNX Runtime run on the CPU, so ``auto`` or
            ``cpu`` (``auto`` goes to torch for a run past NumPy's where a GPU may be here).
        precision: as the user gave it: NumPy and ONNX Runtime compute in fp32, so ``auto``
            or ``fp32`` (an explicit ``bf16`` or ``fp16`` is torch's); ``int8`` is ONNX
            Runtime's int8 tower (torch's fp32 where ONNX Runtime is missing).
        onnx: whether ONNX Runtime is installed.
    """
    if precision == "int8":  # asked for: ONNX Runtime's int8 tower, whatever the run's size
        return ONNX if onnx and device in ("auto", "cpu") else TORCH
    if images is None or device not in ("auto", "cpu") or precision not in ("auto", "fp32"):
        return TORCH
    work = images * config.gflop
    if work <= NUMPY_MAX_GFLOP:
        return NUMPY
    if not onnx or (device == "auto" and may_have_gpu()):
        return TORCH
    if precision == "fp32" or not cpu_flags_have_bf16():  # fp32 in any case: ORT's is faster
        return ONNX
    return ONNX if work <= ONNX_MAX_GFLOP else TORCH
