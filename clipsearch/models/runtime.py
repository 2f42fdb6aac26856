"""Torch at run time: the device and precision, thread limits, and the text pass that stops
at the end-of-text token. torch is imported inside each function, on first use."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.errors import ModelLoadError

if TYPE_CHECKING:
    import torch
from clipsearch.models.identity import DEVICES, PRECISIONS

# Images per model call by device: CPU throughput does not grow with larger batches
# (benchmarks/RESULTS.md) and smaller batches commit sooner; GPUs need large batches to fill.
BATCH_SIZES = {"cpu": 16, "cuda": 128, "mps": 64}


def pick_device(device: str = "auto") -> str:
    """Resolve ``auto`` to the best available device and check that an explicit one exists."""
    import torch

    if device not in DEVICES:
        raise ModelLoadError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device cuda requested but no CUDA GPU is available; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("device mps requested but MPS is not available; use --device cpu")
    return device


def pick_precision(precision: str, device: str) -> str:
    """The precision torch computes in. ``auto`` means fp16 on CUDA/MPS, bf16 on CPUs with
    native bf16 arithmetic (AVX512-BF16 or AMX: faster than fp32, with embeddings close to
    fp32's; benchmarks/RESULTS.md), else fp32. ``int8`` is the ONNX Runtime image tower's
    (:mod:`clipsearch.models.onnxint8`), on the CPU only: what torch runs meanwhile (a text
    tower, a first load) runs in fp32. Explicit values are checked."""
    if precision not in PRECISIONS:
        raise ModelLoadError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
        )
    if precision == "auto":
        if device in ("cuda", "mps"):
            return "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device == "cpu":
        raise ModelLoadError("fp16 is not supported on the CPU; use --precision bf16 or fp32")
    if precision == "int8":  # the image tower's products on ONNX Runtime; torch runs fp32
        if device != "cpu":
            raise ModelLoadError(
                f"int8 runs on the CPU (ONNX Runtime), not on {device}; add --device cpu, or "
                "use --precision fp16 or auto on a GPU"
            )
        return "fp32"
    return precision


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (x86 AVX512-BF16 or AMX). Elsewhere
    PyTorch emulates bf16 and it runs slower than fp32."""
    import torch

    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        with contextlib.suppress(Exception):
            if check is not None and check():
                return True
    return cpu_flags_have_bf16()


@functools.cache
def cpu_flags_have_bf16() -> bool:
    """The CPU flags' answer to :func:`cpu_has_native_bf16` (``avx512_bf16`` or ``amx_bf16``
    in /proc/cpuinfo), without importing torch: what a choice made before torch is imported
    goes by. False where there is no /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def may_have_gpu() -> bool:
    """Whether ``auto`` might resolve to a GPU here, told without importing torch: an NVIDIA
    or AMD driver's device files, or an Apple-silicon Mac. A false alarm only costs speed
    (the caller leaves the choice to torch)."""
    import glob
    import platform
    import sys

    if sys.platform == "darwin":
        return platform.machine() == "arm64"
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


def default_batch_size(device: str) -> int:
    """Images per model call for a device (``auto`` resolved first)."""
    return BATCH_SIZES.get(pick_device(device), 32)


def encode_text(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text``, run only up to the last end-of-text token.

    CLIP's text transformer is causal and pools at the end-of-text token, so the padding
    after it cannot change the result: a 5-word query needs ~10 of the 77 positions, a
    seventh of the work. A Hugging Face text tower runs up to its last non-padding token (see
    :func:`_without_trailing_padding`); other models run in full.
    """
    import open_clip
    import torch

    pool = getattr(model, "text_pool_type", None)
    mask = getattr(model, "attn_mask", None)
    if type(model) is not open_clip.CLIP or mask is None or pool not in ("argmax", "eos"):
        return model.encode_text(_without_trailing_padding(model, tokens))
    if pool == "argmax":
        ends = tokens.argmax(dim=-1)
    else:
        ends = (tokens == model.text_eos_id).int().argmax(dim=-1)
    n = int(ends.max()) + 1
    tokens = tokens[:, :n]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:n].to(cast_dtype)
    x = model.transformer(x, attn_mask=mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), ends]
    if model.text_projection is not None:
        if isinstance(model.text_projection, torch.nn.Linear):
            x = model.text_projection(x)
        else:
            x = x @ model.text_projection
    return x


def _without_trailing_padding(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """For a Hugging Face text tower, the tokens up to the last one that is not padding.

    Such a tower masks the padding out of its attention and pools over the other positions
    only (mean or first token), and RoBERTa-style position ids count real tokens only, so the
    padding columns cannot change the result: a short query is a few of the context's
    positions. Other towers (max pooling, open_clip's own) get every column."""
    from open_clip.hf_model import ClsLastHiddenStatePooler, ClsPooler, HFTextEncoder, MeanPooler

    text = getattr(model, "text", None)
    if not isinstance(text, HFTextEncoder) or tokens.ndim != 2 or not tokens.shape[1]:
        return tokens
    if type(text.pooler) not in (MeanPooler, ClsPooler, ClsLastHiddenStatePooler):
        return tokens
    real = (tokens != text.config.pad_token_id).any(dim=0).nonzero()
    n = int(real.max()) + 1 if len(real) else 1
    return tokens[:, :n]


def normalize(features: torch.Tensor) -> np.ndarray:
    import torch

    features = features.float()
    features = torch.nn.functional.normalize(features, dim=-1)
    return features.cpu().numpy().astype(np.float32, copy=False)
