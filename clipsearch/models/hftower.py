"""A Hugging Face XLM-R / RoBERTa text tower of open_clip's ``CustomTextCLIP`` in NumPy, and
its tokenizer run by the ``tokenizers`` library: text queries of multilingual models such as
``xlm-roberta-base-ViT-B-32`` without importing torch or transformers.

What open_clip's ``HFTextEncoder`` computes, in fp32: word, position and token-type
embeddings and their LayerNorm; post-LayerNorm encoder layers (bidirectional multi-head
attention with the padding masked out, an exact-GELU MLP); mean pooling over the real tokens
(or the first token); the projection (linear or MLP, no bias); L2 normalization. RoBERTa
numbers positions from ``pad_token_id + 1`` over real tokens only, so trailing padding changes
nothing and is not computed.

The tokenizer is the backend of the ``transformers`` tokenizer open_clip loaded, saved as
JSON when the model is recorded (see :mod:`clipsearch.models.texttower`), so that the
pipeline is the one transformers ran, whatever its version added to ``tokenizer.json``; the
text is cleaned as open_clip's ``HFTokenizer`` cleans it. A parity check against open_clip on
probe texts in several scripts decides whether a model is recorded at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from clipsearch.models.npmath import gelu, layer_norm, linear
from clipsearch.models.openclip_private import hf_whitespace_cleaner
from clipsearch.models.tokenizer import clean
from clipsearch.store.fileio import atomic_write

ARCHITECTURES = ("xlm-roberta", "roberta")  # transformers model types this tower runs
POOLERS = {"MeanPooler": "mean", "ClsLastHiddenStatePooler": "cls"}
PREFIX = "text.transformer."
# Probe texts of the parity check, beyond the CLIP ones: the scripts multilingual models read.
PROBES = (
    "해변에서 노는 강아지",
    "закат над горами",
    "浜辺の犬と夕日",
    "빨간 원 red circle красный круг",
    "  spaces   and\ttabs  ",
)


@dataclass(frozen=True)
class HFTowerConfig:
    """The shape of an XLM-R / RoBERTa text tower, as :class:`HFTower` runs it."""

    kind: ClassVar[str] = "hf-roberta"
    context_length: int
    vocab_size: int
    positions: int
    token_types: int
    width: int
    heads: int
    layers: int
    mlp_width: int
    ln_eps: float
    pad_id: int
    pooler: str  # "mean" over real tokens, or "cls": the first token
    projection: str  # "linear", "mlp" (linear, GELU, linear) or "none"; never a bias
    projection_width: int  # the MLP's hidden width (0 otherwise)
    dim: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HFTowerConfig:
        config = cls(**{f.name: data[f.name] for f in fields(cls)})
        if config.pooler not in ("mean", "cls") or config.projection not in (
            "linear",
            "mlp",
            "none",
        ):
            raise ValueError(f"unsupported text tower: {config}")
        if config.width % config.heads:
            raise ValueError(f"width {config.width} is not a multiple of {config.heads} heads")
        return config

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the forward reads, by its ``CustomTextCLIP`` state-dict name."""
        w, m, e = self.width, self.mlp_width, PREFIX + "embeddings."
        shapes: dict[str, tuple[int, ...]] = {
            e + "word_embeddings.weight": (self.vocab_size, w),
            e + "position_embeddings.weight": (self.positions, w),
            e + "token_type_embeddings.weight": (self.token_types, w),
            e + "LayerNorm.weight": (w,),
            e + "LayerNorm.bias": (w,),
        }
        for i in range(self.layers):
            p = f"{PREFIX}encoder.layer.{i}."
            for name in ("query", "key", "value"):
                shapes[f"{p}attention.self.{name}.weight"] = (w, w)
                shapes[f"{p}attention.self.{name}.bias"] = (w,)
            shapes[p + "attention.output.dense.weight"] = (w, w)
            shapes[p + "attention.output.dense.bias"] = (w,)
            shapes[p + "attention.output.LayerNorm.weight"] = (w,)
            shapes[p + "attention.output.LayerNorm.bias"] = (w,)
            shapes[p + "intermediate.dense.weight"] = (m, w)
            shapes[p + "intermediate.dense.bias"] = (m,)
            shapes[p + "output.dense.weight"] = (w, m)
            shapes[p + "output.dense.bias"] = (w,)
            shapes[p + "output.LayerNorm.weight"] = (w,)
            shapes[p + "output.LayerNorm.bias"] = (w,)
        if self.projection == "linear":
            shapes["text.proj.weight"] = (self.dim, w)
        elif self.projection == "mlp":
            shapes["text.proj.0.weight"] = (self.projection_width, w)
            shapes["text.proj.2.weight"] = (self.dim, self.projection_width)
        return shapes


class HFTower:
    """open_clip's ``HFTextEncoder`` forward for an XLM-R / RoBERTa tower, in NumPy fp32.

    Args:
        config: the tower's shape.
        tensors: its weights by state-dict name, float32 (memory-mapped ones are fine).

    Raises:
        ValueError: a tensor is missing or has the wrong shape or dtype.
    """

    def __init__(self, config: HFTowerConfig, tensors: Mapping[str, np.ndarray]):
        self.config = config
        self.dim = config.dim
        self.t: dict[str, np.ndarray] = {}
        for name, shape in config.tensor_shapes().items():
            t = tensors.get(name)
            if t is None or tuple(t.shape) != shape or t.dtype != np.float32:
                got = "missing" if t is None else f"{t.dtype} {tuple(t.shape)}"
                raise ValueError(f"text tower tensor {name}: {got}, expected float32 {shape}")
            self.t[name] = t

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        """Unit vectors (N, dim) float32 of token rows (N, context_length)."""
        c, t, e = self.config, self.t, PREFIX + "embeddings."
        tokens = np.asarray(tokens, dtype=np.int64)
        real = tokens != c.pad_id
        used = np.flatnonzero(real.any(axis=0))
        n = int(used.max()) + 1 if used.size else 1
        ids, real = tokens[:, :n], real[:, :n]
        if ids.size and (ids.min() < 0 or ids.max() >= c.vocab_size):
            raise ValueError(f"token ids must lie in [0, {c.vocab_size})")
        positions = np.cumsum(real, axis=1) * real + c.pad_id  # RoBERTa's numbering
        if positions.max(initial=0) >= c.positions:
            raise ValueError(f"more than {c.positions - c.pad_id - 1} tokens")
        x = t[e + "word_embeddings.weight"][ids] + t[e + "position_embeddings.weight"][positions]
        x = x + t[e + "token_type_embeddings.weight"][0]
        x = layer_norm(x, t[e + "LayerNorm.weight"], t[e + "LayerNorm.bias"], c.ln_eps)
        rows = len(ids)
        x = x.reshape(rows * n, c.width).astype(np.float32, copy=False)
        masked = np.where(real, np.float32(0), np.float32(-np.inf))[:, None, None, :]
        for i in range(c.layers):
            x = self._layer(x, f"{PREFIX}encoder.layer.{i}.", rows, n, masked)
        x = x.reshape(rows, n, c.width)
        if c.pooler == "mean":
            weights = real[:, :, None].astype(np.float32)
            pooled = (x * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1)
        else:
            pooled = x[:, 0]
        if c.projection == "linear":
            pooled = linear(pooled, t["text.proj.weight"], None)
        elif c.projection == "mlp":
            hidden = gelu(linear(pooled, t["text.proj.0.weight"], None))
            pooled = linear(hidden, t["text.proj.2.weight"], None)
        norms = np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), np.float32(1e-12))
        return (pooled / norms).astype(np.float32, copy=False)

    def _layer(self, x: np.ndarray, p: str, rows: int, n: int, masked: np.ndarray) -> np.ndarray:
        """One post-LayerNorm encoder layer over (rows * n, width) activations."""
        c, t = self.config, self.t
        heads, hd = c.heads, c.width // c.heads
        a = p + "attention."

        def project(name: str) -> np.ndarray:  # (rows, heads, n, hd)
            y = linear(x, t[f"{a}self.{name}.weight"], t[f"{a}self.{name}.bias"])
            return y.reshape(rows, n, heads, hd).transpose(0, 2, 1, 3)

        q, k, v = project("query"), project("key"), project("value")
        scores = (q * np.float32(hd**-0.5)) @ k.transpose(0, 1, 3, 2) + masked
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        attn = (scores @ v).transpose(0, 2, 1, 3).reshape(rows * n, c.width)
        attn = linear(attn, t[a + "output.dense.weight"], t[a + "output.dense.bias"])
        x = layer_norm(
            attn + x, t[a + "output.LayerNorm.weight"], t[a + "output.LayerNorm.bias"], c.ln_eps
        )
        h = gelu(linear(x, t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"]))
        h = linear(h, t[p + "output.dense.weight"], t[p + "output.dense.bias"])
        return layer_norm(
            h + x, t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"], c.ln_eps
        )


class HFTextTokenizer:
    """Text to token ids as open_clip's ``HFTokenizer`` gives them (whitespace cleaning, the
    transformers tokenizer with padding to the context and truncation), with the
    ``tokenizers`` library only.

    Args:
        path: the tokenizer's JSON, as :func:`save_tokenizer` wrote it.
        context_length: tokens per text.
        pad_id: the padding token's id.
    """

    def __init__(self, path: str | Path, context_length: int, pad_id: int):
        from tokenizers import Tokenizer

        self.context_length = context_length
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=context_length)
        pad_token = self.tokenizer.id_to_token(pad_id)
        if pad_token is None:
            raise ValueError(f"the tokenizer has no token {pad_id}")
        self.tokenizer.enable_padding(length=context_length, pad_id=pad_id, pad_token=pad_token)

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        encoded = self.tokenizer.encode_batch([clean(t, lower=False) for t in texts])
        out = np.array([e.ids for e in encoded], dtype=np.int64).reshape(len(texts), -1)
        return out


def describe_hf(model: Any, tokenizer: Any) -> HFTowerConfig | None:
    """The config of a ``CustomTextCLIP``'s Hugging Face text tower if :class:`HFTower` and
    :class:`HFTextTokenizer` compute it exactly, else None (another architecture or pooler,
    another tokenizer mode, ...)."""
    import torch
    from open_clip import CustomTextCLIP
    from open_clip.hf_model import HFTextEncoder

    text = getattr(model, "text", None)
    if type(model) is not CustomTextCLIP or type(text) is not HFTextEncoder:
        return None
    cfg = text.config
    pooler = POOLERS.get(type(text.pooler).__name__)
    if (
        cfg.model_type not in ARCHITECTURES
        or getattr(cfg, "hidden_act", None) != "gelu"
        or getattr(cfg, "position_embedding_type", "absolute") != "absolute"
        or getattr(cfg, "is_decoder", False)
        or pooler is None
        or not _plain_hf_tokenizer(tokenizer)
    ):
        return None
    projection, hidden = _projection(text.proj, torch)
    if projection is None:
        return None
    dim = int(text.output_dim)
    return HFTowerConfig(
        context_length=int(tokenizer.context_length),
        vocab_size=int(cfg.vocab_size),
        positions=int(cfg.max_position_embeddings),
        token_types=int(cfg.type_vocab_size),
        width=int(cfg.hidden_size),
        heads=int(cfg.num_attention_heads),
        layers=int(cfg.num_hidden_layers),
        mlp_width=int(cfg.intermediate_size),
        ln_eps=float(cfg.layer_norm_eps),
        pad_id=int(cfg.pad_token_id),
        pooler=pooler,
        projection=projection,
        projection_width=hidden,
        dim=dim,
    )


def _plain_hf_tokenizer(tokenizer: Any) -> bool:
    """open_clip's ``HFTokenizer`` in its standard mode, over a fast (tokenizers) backend."""
    from open_clip.tokenizer import HFTokenizer

    return (
        type(tokenizer) is HFTokenizer
        and not tokenizer.tokenizer_mode
        and not tokenizer.strip_sep_token
        and tokenizer.clean_fn is hf_whitespace_cleaner()
        and bool(tokenizer.context_length)
        and getattr(tokenizer.tokenizer, "backend_tokenizer", None) is not None
        and getattr(tokenizer.tokenizer, "padding_side", "right") == "right"
        and getattr(tokenizer.tokenizer, "truncation_side", "right") == "right"
    )


def _projection(proj: Any, torch: Any) -> tuple[str | None, int]:
    """(``linear``, ``mlp`` or ``none``, the MLP's hidden width), or (None, 0) for another."""
    linear_types = (torch.nn.Linear,)
    if type(proj) is torch.nn.Identity:
        return "none", 0
    if type(proj) in linear_types and proj.bias is None:
        return "linear", 0
    if type(proj) is torch.nn.Sequential and len(proj) == 3:
        first, act, last = proj
        if (
            type(first) is torch.nn.Linear
            and type(last) is torch.nn.Linear
            and first.bias is None
            and last.bias is None
            and type(act) is torch.nn.GELU
            and act.approximate == "none"
        ):
            return "mlp", int(first.out_features)
    return None, 0


def save_tokenizer(tokenizer: Any, path: Path) -> None:
    """Write the ``tokenizers`` backend of open_clip's ``HFTokenizer`` as JSON, atomically."""
    atomic_write(path, tokenizer.tokenizer.backend_tokenizer.to_str().encode(), durable=False)
