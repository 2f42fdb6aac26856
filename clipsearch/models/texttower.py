"""Text queries without torch: CLIP's text tower in NumPy, and the cache that allows it.

A cold ``clipsearch search "text"`` spent most of its time importing torch and open_clip to
run a text transformer that, for one short query, is a handful of small matrix products
(benchmarks/RESULTS.md). This module runs that transformer in NumPy: token and
position embeddings, pre-LayerNorm residual blocks with causal multi-head attention and a
GELU (exact erf form, or QuickGELU) MLP, the final LayerNorm, pooling at the end-of-text token,
the projection and L2 normalization: what open_clip's ``CLIP.encode_text`` computes, in fp32.
Attention is causal and the output is read at the end-of-text token, so only the positions up
to it are computed (exact, and a tenth of the work for a short query).

Models whose text tower comes from Hugging Face (XLM-R / RoBERTa in ``CustomTextCLIP``, as in
``xlm-roberta-base-ViT-B-32``) take the same path with :mod:`clipsearch.models.hftower`: their
record also names a copy of the tokenizer transformers ran (``<record>.tokenizer``).

Which models may take this path is decided where open_clip has the model loaded: when
:func:`clipsearch.models.loading.load_spec` builds one (indexing, or a search that had to use
torch),
:func:`remember` inspects the model it built. If the text tower is open_clip's standard one
(``CLIP`` class, default blocks, causal mask, argmax or eos pooling, default tokenizer), it
records where the text-tower weights are and checks the NumPy forward against open_clip's on
probe texts. The record is a small JSON file in the cache (``$XDG_CACHE_HOME/clipsearch/
text-towers/``, ``~/.cache`` by default), keyed by the model's identity and by where its
weights come from (the local checkpoint, or the Hugging Face cache). The weights are read in
place, memory-mapped, when the checkpoint is a safetensors file holding them exactly as the
model has them; otherwise (``.bin``/``.pt`` checkpoints, converted weights) a float32 copy of
the text tower is written next to the record. :func:`cached_text_encoder` reads the record
back in a later process, without importing torch, and gives up (returns None: use the torch
path) whenever anything differs: another identity, a weights file that changed since, a
damaged or missing file. ``random`` weights are never recorded (each load draws new ones).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from clipsearch.models import towercache
from clipsearch.models.hftower import PROBES as HF_PROBES
from clipsearch.models.hftower import (
    HFTextTokenizer,
    HFTower,
    HFTowerConfig,
    describe_hf,
    save_tokenizer,
)
from clipsearch.models.identity import ModelIdentity, ModelSpec, spec_key
from clipsearch.models.npmath import (
    block_shapes,
    layer_norm,
    linear,
    read_safetensors,
    residual_block,
    save_safetensors,
)
from clipsearch.models.openclip_private import default_text_cleaner
from clipsearch.models.tokenizer import ClipTokenizer
from clipsearch.threads import BLAS, TORCH, limit_threads

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RECORD_VERSION = 1
CACHE_SUBDIR = "text-towers"
# Probe texts for the checks when a record is written: token ids for all (the long one is cut
# at any context length), vectors for the short ones; punctuation, digits, non-ASCII.
PROBES = (
    "a photo of a dog",
    "Sunset over the mountains, 2 people & 1 boat; it's late!",
    "café naïve résumé 東京 🙂",
    " ".join(f"word{i}" for i in range(120)),
)
PARITY_TOLERANCE = 1e-4  # max abs difference of unit vectors, NumPy fp32 vs torch fp32
FEW_TEXTS = 4  # a chunk this small is a query: thin products (one BLAS thread, ONNX Runtime)
ONNX_THREADS = 2  # ONNX Runtime's threads for a query (benchmarks/RESULTS.md)


@dataclass(frozen=True)
class TextTowerConfig:
    """The shape of an open_clip standard text tower, as :class:`TextTower` runs it."""

    kind: ClassVar[str] = "clip"

    context_length: int
    vocab_size: int
    width: int
    heads: int
    layers: int
    mlp_width: int
    quick_gelu: bool
    ln_eps: float
    pool: str  # "argmax": at the highest token id (end of text); "eos": at the first eos_id
    eos_id: int
    projection: str  # "matrix" (x @ P), "linear" (x @ W.T [+ b]) or "none"
    projection_bias: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TextTowerConfig:
        config = cls(**{f.name: data[f.name] for f in fields(cls)})
        if config.pool not in ("argmax", "eos") or config.projection not in (
            "matrix",
            "linear",
            "none",
        ):
            raise ValueError(f"unsupported text tower: {config}")
        if config.width % config.heads:
            raise ValueError(f"width {config.width} is not a multiple of {config.heads} heads")
        return config

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the forward reads, by its open_clip ``CLIP`` state-dict name."""
        w = self.width
        shapes: dict[str, tuple[int, ...]] = {
            "token_embedding.weight": (self.vocab_size, w),
            "positional_embedding": (self.context_length, w),
            "ln_final.weight": (w,),
            "ln_final.bias": (w,),
        }
        for i in range(self.layers):
            shapes.update(block_shapes(f"transformer.resblocks.{i}.", w, self.mlp_width))
        return shapes


class TextTower:
    """open_clip's ``CLIP.encode_text`` for a standard text tower, in NumPy fp32.

    Args:
        config: the tower's shape.
        tensors: its weights by ``CLIP`` state-dict name, float32 (memory-mapped ones are
            fine); the projection is ``text_projection`` (matrix) or
            ``text_projection.weight`` [and ``.bias``] (linear).

    Raises:
        ValueError: a tensor is missing or has the wrong shape or dtype.
    """

    def __init__(self, config: TextTowerConfig, tensors: Mapping[str, np.ndarray]):
        self.config = config
        shapes = config.tensor_shapes()
        shapes.update(_projection_shapes(config, tensors))
        self.tensors: dict[str, np.ndarray] = {}
        for name, shape in shapes.items():
            t = tensors.get(name)
            if name == "positional_embedding" and t is not None and t.ndim == 2:
                t = t[: config.context_length]  # a longer table: the tokenizer uses the start
            if t is None or tuple(t.shape) != shape or t.dtype != np.float32:
                got = "missing" if t is None else f"{t.dtype} {tuple(t.shape)}"
                raise ValueError(f"text tower tensor {name}: {got}, expected float32 {shape}")
            self.tensors[name] = t
        names = _projection_names(config)
        if not names:
            self.dim = config.width
        else:
            first = shapes[names[0]]
            self.dim = first[1] if config.projection == "matrix" else first[0]

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        """Unit vectors (N, dim) float32 of token rows (N, context_length)."""
        c, t = self.config, self.tensors
        tokens = np.asarray(tokens, dtype=np.int64)
        ends = self.pooled_positions(tokens)
        n = int(ends.max()) + 1 if len(tokens) else 1
        x = self.embed(tokens[:, :n])
        x = x.reshape(len(x) * n, c.width)  # every position of every text, one row each
        for i in range(c.layers):
            x = self._block(i, x, n, ends if i == c.layers - 1 else None)
        if c.layers == 0:
            x = x[np.arange(len(ends)) * n + ends]
        # LayerNorm is per position: pooled first (the last block), then normalized
        x = layer_norm(x, t["ln_final.weight"], t["ln_final.bias"], c.ln_eps)
        if c.projection == "matrix":
            x = x @ t["text_projection"]
        elif c.projection == "linear":
            x = linear(x, t["text_projection.weight"], t.get("text_projection.bias"))
        norms = np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))
        return (x / norms).astype(np.float32, copy=False)

    def pooled_positions(self, tokens: np.ndarray) -> np.ndarray:
        """Each token row's pooled position. ``argmax``: the end-of-text token, which has the
        highest id; ``eos``: the first ``eos_id`` (else 0). The causal mask keeps later
        positions from reaching it, so a row may be cut after it."""
        c = self.config
        return (tokens if c.pool == "argmax" else tokens == c.eos_id).argmax(axis=1)

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """Token and positional embeddings (N, n, width) of token rows (N, n).

        Raises:
            ValueError: an id is outside the vocabulary.
        """
        c, t = self.config, self.tensors
        if ids.size and (ids.min() < 0 or ids.max() >= c.vocab_size):
            raise ValueError(f"token ids must lie in [0, {c.vocab_size})")
        return t["token_embedding.weight"][ids] + t["positional_embedding"][: ids.shape[1]]

    def _block(self, i: int, x: np.ndarray, n: int, pool: np.ndarray | None) -> np.ndarray:
        """Residual block ``i`` over ``x`` (texts * n positions, width), causal. With ``pool``
        (each text's pooled position; the last block), only those rows come out: nothing
        after this block reads another position."""
        c = self.config
        return residual_block(
            x,
            self.tensors,
            f"transformer.resblocks.{i}.",
            n=n,
            heads=c.heads,
            eps=c.ln_eps,
            activation="quick" if c.quick_gelu else "none",
            causal=True,
            pool=pool,
        )


def _projection_names(config: TextTowerConfig) -> tuple[str, ...]:
    if config.projection == "matrix":
        return ("text_projection",)
    if config.projection == "linear":
        return ("text_projection.weight", "text_projection.bias")[: 1 + config.projection_bias]
    return ()


def _projection_shapes(
    config: TextTowerConfig, tensors: Mapping[str, np.ndarray]
) -> dict[str, tuple[int, ...]]:
    """The projection's shapes; its output width is whatever the stored tensor says."""
    names = _projection_names(config)
    if not names:
        return {}
    first = tensors.get(names[0])
    if first is None or first.ndim != 2:
        raise ValueError(f"text tower tensor {names[0]} is missing or not a matrix")
    if config.projection == "matrix":
        out = first.shape[1]
        shapes = {names[0]: (config.width, out)}
    else:
        out = first.shape[0]
        shapes = {names[0]: (out, config.width)}
    if len(names) > 1:
        shapes[names[1]] = (out,)
    return shapes


# --- the encoder and its cache record ------------------------------------------------------


class NumpyTextEncoder:
    """Encodes text queries like :class:`clipsearch.models.encoder.Encoder`, without torch.

    Made by :func:`cached_text_encoder`; vectors are float32 unit vectors, computed in fp32 on
    the CPU (whatever precision the torch path would use).
    """

    device = "cpu"
    precision = "fp32"
    towers = "text"

    def __init__(
        self,
        tokenizer: ClipTokenizer | HFTextTokenizer,
        tower: TextTower | HFTower,
        identity: ModelIdentity,
    ):
        self.tokenizer = tokenizer
        self.tower = tower
        self.identity = identity
        self._queries = 0
        self._onnx: Any = None  # the ONNX Runtime twin of the tower, once made; False: none
        self._making = threading.Lock()

    @property
    def dim(self) -> int:
        return self.identity.dim

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Encode texts; returns (N, dim) float32 unit vectors."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            few = len(chunk) <= FEW_TEXTS
            tower = self._query_tower() if few else self.tower
            # A query or two is a few thin matrix products: a second BLAS thread only waits,
            # and on a busy machine makes the forward many times slower.
            with limit_threads(1 if few else None, BLAS):
                out[start : start + len(chunk)] = tower(self.tokenizer(chunk))
        return out

    def warm(self) -> bool:
        """Make the ONNX Runtime twin of the tower now (a second or so for ViT-B/32), so that
        queries after this one are quick; True if there is one. A long-lived front end calls
        it when it starts; otherwise a process's second query does."""
        if self._onnx is None:
            with self._making:
                if self._onnx is None:
                    from clipsearch.models.onnxtext import onnx_text_tower

                    self._onnx = onnx_text_tower(self.tower, ONNX_THREADS) or False
        return bool(self._onnx)

    def _query_tower(self) -> Any:
        """The tower for a few texts: NumPy for a process's first query (a session costs more
        than a query), ONNX Runtime from the second on (much quicker warm, see
        :mod:`clipsearch.models.onnxtext`), unless another thread is making it right now."""
        self._queries += 1
        if self._onnx is None and self._queries > 1 and not self._making.locked():
            self.warm()
        return self._onnx or self.tower


def cache_root() -> Path:
    """Where records and text-tower copies live: ``$XDG_CACHE_HOME/clipsearch/text-towers``
    (see :mod:`clipsearch.models.towercache`)."""
    return towercache.cache_root(CACHE_SUBDIR)


def _record_path(spec: ModelSpec, identity_key: str, cache_dir: str | None = None) -> Path:
    return towercache.record_path(spec, identity_key, CACHE_SUBDIR, cache_dir)


def _read_record(spec: ModelSpec, key: str, cache_dir: str | None = None) -> dict | None:
    """The record of the model with this identity key if it is valid now, else None."""
    return towercache.read_record(spec, key, CACHE_SUBDIR, RECORD_VERSION, cache_dir)


def applies(device: str = "auto", precision: str = "auto") -> bool:
    """Whether text may be encoded by the NumPy path under these options: the CPU (``auto``
    included: for one query it starts faster than any GPU) in fp32 (``auto`` included). An
    explicit ``bf16`` is the torch path's: a little faster warm, much slower to start
    (benchmarks/RESULTS.md); an explicit GPU or ``fp16`` too."""
    return device in ("auto", "cpu") and precision in ("auto", "fp32", "int8")


def cached_text_encoder(
    spec: ModelSpec, identity: ModelIdentity | None = None
) -> NumpyTextEncoder | None:
    """The torch-free text encoder of a model, if a valid record of it is cached.

    Args:
        spec: the model.
        identity: the identity it must have (an index's); by default what the spec names
            now (a local checkpoint is hashed, once per change of the file).

    Returns:
        None (use the torch path) when there is no record, when the model's identity or
        weights changed since it was written, or when anything cannot be read.
    """
    try:
        key = identity.key if identity is not None else spec_key(spec)
    except OSError:
        return None
    record = _read_record(spec, key)
    if record is None:
        return None
    try:
        recorded = ModelIdentity.from_dict(record["identity"])
        if identity is not None and recorded.dim != identity.dim:
            return None
        config = _config_from_record(record)
        encoder = _encoder(config, record["weights"], identity or recorded, record.get("tokenizer"))
        return encoder if encoder.tower.dim == recorded.dim else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError) as e:
        # ImportError: an HF tower's record, and the tokenizers package since uninstalled
        log.debug("text tower record %s is unusable: %s", record.get("weights"), e)
        return None


def remember(
    spec: ModelSpec,
    identity: ModelIdentity,
    model: Any,
    tokenizer: Any,
    checkpoint: Callable[[], str | None],
    cache_dir: str | None = None,
) -> bool:
    """Record a loaded open_clip model for :func:`cached_text_encoder`, if it qualifies and is
    not recorded yet. Call it with the model in float32, before any cast.

    Args:
        spec: what the user asked for.
        identity: the loaded model's identity.
        model: the open_clip model, float32.
        tokenizer: the tokenizer open_clip gave for it.
        checkpoint: gives the weights file it was loaded from, if any (read in place when it
            is a safetensors file that holds the text tower exactly as the model has it);
            called only when a record is written.
        cache_dir: the Hugging Face cache the model was loaded through (None: the default).

    Returns:
        Whether a valid record exists now. Never raises: a failure only costs speed.
    """
    try:
        if spec.random_weights:
            return False
        if _read_record(spec, identity.key, cache_dir) is not None:
            return True
        config = describe(model, tokenizer) or describe_hf(model, tokenizer)
        if config is None:
            return False
        return _write_record(spec, identity, model, tokenizer, config, checkpoint, cache_dir)
    except Exception as e:  # a cache: never let it break loading a model
        log.debug("could not record the text tower of %s: %s", identity.describe(), e)
        return False


def describe(model: Any, tokenizer: Any) -> TextTowerConfig | None:
    """The config of an open_clip model's text tower if :class:`TextTower` computes it exactly,
    else None (another model class, custom blocks, a bidirectional mask, another pooling or
    tokenizer, layer scale, ...)."""
    if not _standard_text_model(model) or not _standard_tokenizer(tokenizer):
        return None
    blocks = list(model.transformer.resblocks)
    acts = {_TEXT_ACTIVATIONS.get(block_activation(b)) for b in blocks}
    if not blocks or None in acts or len(acts) != 1:
        return None
    eps = _layer_norm_eps([model.ln_final, *(ln for b in blocks for ln in (b.ln_1, b.ln_2))])
    projection = _projection_kind(model.text_projection)
    if eps is None or projection is None:
        return None
    return TextTowerConfig(
        context_length=int(tokenizer.context_length),
        vocab_size=int(model.token_embedding.num_embeddings),
        width=int(model.transformer.width),
        heads=int(blocks[0].attn.num_heads),
        layers=len(blocks),
        mlp_width=int(blocks[0].mlp.c_fc.out_features),
        quick_gelu=acts == {"quick"},
        ln_eps=eps,
        pool=model.text_pool_type,
        eos_id=int(getattr(model, "text_eos_id", None) or 0),
        projection=projection[0],
        projection_bias=projection[1],
    )


def _standard_text_model(model: Any) -> bool:
    """Whether the model is open_clip's ``CLIP`` with a causal text mask, pooled at the end of
    text."""
    import open_clip

    return (
        type(model) is open_clip.CLIP
        and getattr(model, "attn_mask", None) is not None
        and model.text_pool_type in ("argmax", "eos")
    )


def _standard_tokenizer(tokenizer: Any) -> bool:
    """Whether the tokenizer is open_clip's default one, which :class:`ClipTokenizer` copies."""
    from open_clip import tokenizer as oc_tokenizer

    return (
        type(tokenizer) is oc_tokenizer.SimpleTokenizer
        and tokenizer.clean_fn is default_text_cleaner()
        and tokenizer.reduction_fn is None
        and len(tokenizer.encoder) == 49408
        and bool(tokenizer.context_length)
    )


# block_activation's names -> the text tower's: QuickGELU, or exact GELU
_TEXT_ACTIVATIONS = {"quick": "quick", "none": "exact"}


def block_activation(block: Any) -> str | None:
    """The activation of a standard open_clip residual attention block: ``quick``
    (QuickGELU), ``none`` (exact GELU) or ``tanh`` (GELU's tanh approximation); None for any
    other block (layer scale, cross-attention, unbiased projections, another MLP, ...). The
    one check both NumPy towers and the image tower rely on."""
    import torch
    from open_clip import transformer as oc

    attn = block.attn
    if (
        type(block) is not oc.ResidualAttentionBlock
        or hasattr(block, "ln_1_kv")
        or type(block.ls_1) is not torch.nn.Identity
        or type(block.ls_2) is not torch.nn.Identity
        or type(attn) is not torch.nn.MultiheadAttention
        or attn.in_proj_weight is None  # separate q, k, v projections
        or attn.in_proj_bias is None
        or attn.out_proj.bias is None
        or attn.bias_k is not None
        or attn.add_zero_attn
        or [name for name, _ in block.mlp.named_children()] != ["c_fc", "gelu", "c_proj"]
        or block.mlp.c_fc.bias is None
        or block.mlp.c_proj.bias is None
    ):
        return None
    gelu = block.mlp.gelu
    if type(gelu) is oc.QuickGELU:
        return "quick"
    if type(gelu) is torch.nn.GELU:
        return gelu.approximate
    return None


def _layer_norm_eps(lns: Sequence[Any]) -> float | None:
    """The one epsilon of plain, affine LayerNorms, else None."""
    import torch
    from open_clip import transformer as oc

    norms = {oc.LayerNorm, oc.LayerNormFp32, torch.nn.LayerNorm}
    if any(type(ln) not in norms or ln.weight is None or ln.bias is None for ln in lns):
        return None
    eps = {float(ln.eps) for ln in lns}
    return eps.pop() if len(eps) == 1 else None


def _projection_kind(proj: Any) -> tuple[str, bool] | None:
    """(``none``, ``linear`` or ``matrix``, whether it has a bias) of the text projection, or
    None for another kind."""
    import torch

    if proj is None:
        return "none", False
    if type(proj) is torch.nn.Linear:
        return "linear", proj.bias is not None
    if isinstance(proj, torch.nn.Parameter) and proj.ndim == 2:
        return "matrix", False
    return None


TowerConfig = TextTowerConfig | HFTowerConfig


def _tensor_names(config: TowerConfig) -> list[str]:
    """The state-dict names of every tensor a tower reads."""
    if isinstance(config, HFTowerConfig):
        return list(config.tensor_shapes())
    return [*config.tensor_shapes(), *_projection_names(config)]


def _config_from_record(record: Mapping[str, Any]) -> TowerConfig:
    """The tower config a record holds: open_clip's own text tower unless it says otherwise
    (records of older releases say nothing)."""
    if record.get("kind", "clip") == HFTowerConfig.kind:
        return HFTowerConfig.from_dict(record["config"])
    return TextTowerConfig.from_dict(record["config"])


def _encoder(
    config: TowerConfig, weights: str, identity: ModelIdentity, tokenizer: str | None
) -> NumpyTextEncoder:
    """The NumPy encoder of a tower config, its weights file and (HF) tokenizer file."""
    tensors = read_safetensors(weights, _tensor_names(config))
    if isinstance(config, HFTowerConfig):
        if not tokenizer:
            raise ValueError("the record names no tokenizer")
        text = HFTextTokenizer(tokenizer, config.context_length, config.pad_id)
        return NumpyTextEncoder(text, HFTower(config, tensors), identity)
    clip = ClipTokenizer(config.context_length)
    return NumpyTextEncoder(clip, TextTower(config, tensors), identity)


def _model_tensors(model: Any, config: TowerConfig) -> dict[str, np.ndarray]:
    state = model.state_dict()
    return {n: state[n].detach().to("cpu").float().numpy() for n in _tensor_names(config)}


def _write_record(
    spec: ModelSpec,
    identity: ModelIdentity,
    model: torch.nn.Module,
    tokenizer: Any,
    config: TowerConfig,
    checkpoint: Callable[[], str | None],
    cache_dir: str | None,
) -> bool:
    record_path = _record_path(spec, identity.key, cache_dir)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    expected = _model_tensors(model, config)
    weights = None
    path = checkpoint()
    if path and str(path).endswith(".safetensors"):
        with contextlib.suppress(OSError, ValueError):
            stored = read_safetensors(path, list(expected))
            if stored.keys() == expected.keys() and all(
                np.array_equal(stored[n], expected[n]) for n in expected
            ):
                weights = str(path)
    if weights is None:  # another format, or converted on load: keep a float32 copy
        copy = record_path.with_suffix(".safetensors")
        save_safetensors(expected, copy)
        weights = str(copy)
    tokenizer_file = None
    if isinstance(config, HFTowerConfig):  # the pipeline transformers runs, as it runs it
        tokenizer_file = str(record_path.with_suffix(".tokenizer"))
        save_tokenizer(tokenizer, Path(tokenizer_file))
    encoder = _encoder(config, weights, identity, tokenizer_file)
    if not _parity(model, tokenizer, encoder):
        log.debug("NumPy text tower of %s differs from open_clip's; not recorded", spec)
        return False
    towercache.write_record(
        record_path,
        spec,
        identity,
        RECORD_VERSION,
        weights,
        config=config.to_dict(),
        kind=config.kind,
        tokenizer=tokenizer_file,
    )
    return True


def _parity(model: Any, tokenizer: Any, encoder: NumpyTextEncoder) -> bool:
    """Whether the NumPy path gives open_clip's token ids for the probe texts, and its vectors
    within PARITY_TOLERANCE for the short ones (a full context of 77 positions would cost
    much more torch time, and tests nothing more)."""
    import torch

    from clipsearch.models.runtime import encode_text

    clip = isinstance(encoder.tower, TextTower)
    texts = list(PROBES) if clip else [*PROBES, *HF_PROBES]
    ours = encoder.tokenizer(texts)
    if not np.array_equal(ours, tokenizer(texts).numpy()):
        return False
    # CLIP's: the short ones (the end-of-text token has the highest id); an HF tower runs up
    # to its last real token anyway
    short = ours[ours.argmax(axis=1) < 24] if clip else ours
    device = next(model.parameters()).device
    with torch.inference_mode(), limit_threads(1 if device.type == "cpu" else None, TORCH):
        reference = encode_text(model, torch.from_numpy(short).to(device)).float()
        reference = torch.nn.functional.normalize(reference, dim=-1).cpu().numpy()
    with limit_threads(1, BLAS):
        got = encoder.tower(short)
    return got.shape == reference.shape and float(np.abs(got - reference).max()) < PARITY_TOLERANCE
