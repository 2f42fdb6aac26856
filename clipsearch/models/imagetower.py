"""Images without open_clip: a cached copy of open_clip's ViT image tower as our own module.

``import open_clip`` costs seconds (it pulls in torchvision and ``torch._dynamo``), and the
whole model holds a text tower that indexing never runs. Once open_clip has loaded a model,
:func:`remember` inspects its image tower; if it is open_clip's standard
``VisionTransformer`` (a class token or average pooling, with or without ``ln_pre``, with or
without a projection, standard residual blocks; no attentional pooler), it records the
tower's config beside the weights it reads, and checks our :class:`VisionTower` against
open_clip's ``encode_image`` on probe images (within :data:`PARITY_TOLERANCE` in fp32). Other
towers (ModifiedResNet, timm, CoCa's pooler, ...) are not recorded: they keep loading through
open_clip.

The records live with the NumPy text tower's, and are kept and invalidated the same way
(:mod:`clipsearch.models.towercache`): keyed by the model's identity and where its weights
come from, and dropped once the weights file, the checkpoint or the hub snapshot changes. The
weights are read in place when the checkpoint is a safetensors file holding the tower in
float32 exactly as the model has it, otherwise from a float32 copy beside the record. In fp32
they are memory-mapped (no copy, nothing read before it is used); in bf16 or fp16 each tensor
is read and cast on its own, so that a float32 and a half-precision copy of the tower are
never in memory together.

:func:`cached_image_encoder` builds an :class:`~clipsearch.models.encoder.Encoder` of the
image tower alone from a record, importing torch but neither open_clip nor torchvision
(preprocessing: :mod:`clipsearch.models.preprocess`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.models.encoder import Encoder
from clipsearch.models.identity import ModelIdentity, ModelSpec, spec_key
from clipsearch.models.npmath import (
    block_shapes,
    read_safetensors,
    safetensors_header,
    save_safetensors,
)
from clipsearch.models.preprocess import ImagePreprocess
from clipsearch.models.towercache import read_record, record_path, write_record
from clipsearch.threads import TORCH, limit_threads

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RECORD_VERSION = 1
CACHE_SUBDIR = "image-towers"
PREFIX = "visual."  # the image tower's tensors in an open_clip checkpoint
PARITY_TOLERANCE = 1e-5  # max abs difference of unit vectors, ours vs open_clip's, fp32
ACTIVATIONS = ("quick", "none", "tanh")  # QuickGELU, exact GELU, tanh GELU


@dataclass(frozen=True)
class ImageTowerConfig:
    """The shape of an open_clip ``VisionTransformer``, as :class:`VisionTower` runs it."""

    image_size: int
    patch_size: int
    width: int
    heads: int
    layers: int
    mlp_width: int
    output_dim: int  # the projection's output width; the width without a projection
    activation: str  # one of ACTIVATIONS
    ln_eps: float
    ln_pre: bool
    pool: str  # "tok": the class token; "avg": the mean of the patch tokens
    final_ln_after_pool: bool
    proj: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageTowerConfig:
        config = cls(**{f.name: data[f.name] for f in fields(cls)})
        if config.pool not in ("tok", "avg") or config.activation not in ACTIVATIONS:
            raise ValueError(f"unsupported image tower: {config}")
        if config.width % config.heads or config.image_size % config.patch_size:
            raise ValueError(f"inconsistent image tower: {config}")
        return config

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the tower, by its state-dict name inside open_clip's ``visual``."""
        w, p = self.width, self.patch_size
        shapes: dict[str, tuple[int, ...]] = {
            "conv1.weight": (w, 3, p, p),
            "class_embedding": (w,),
            "positional_embedding": (self.tokens, w),
        }
        if self.ln_pre:
            shapes.update({"ln_pre.weight": (w,), "ln_pre.bias": (w,)})
        for i in range(self.layers):
            shapes.update(block_shapes(f"transformer.resblocks.{i}.", w, self.mlp_width))
        shapes.update({"ln_post.weight": (w,), "ln_post.bias": (w,)})
        if self.proj:
            shapes["proj"] = (w, self.output_dim)
        return shapes

    def checked(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The tower's tensors of ``tensors`` (by state-dict name inside ``visual``), each
        checked to be float32 of its shape.

        Raises:
            ValueError: a tensor is missing or has the wrong shape or dtype.
        """
        out = {}
        for name, shape in self.tensor_shapes().items():
            t = tensors.get(name)
            if t is None or tuple(t.shape) != shape or t.dtype != np.float32:
                got = "missing" if t is None else f"{t.dtype} {tuple(t.shape)}"
                raise ValueError(f"image tower tensor {name}: {got}, expected float32 {shape}")
            out[name] = t
        return out

    @property
    def gflop(self) -> float:
        """The floating-point work of one image, in billions (a multiply-add counts 2)."""
        t, w, m, p = self.tokens, self.width, self.mlp_width, self.patch_size
        layer = 2 * t * (4 * w * w + 2 * w * m) + 4 * t * t * w  # projections, MLP, attention
        embed = 2 * (t - 1) * 3 * p * p * w
        return (embed + self.layers * layer + 2 * w * self.output_dim) / 1e9


def _modules():  # noqa: ANN202 - torch classes, made on first use so that import stays light
    """The torch module classes, defined when torch is first needed."""
    import torch
    from torch import nn

    class QuickGELU(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(1.702 * x)

    class Block(nn.Module):
        """open_clip's ``ResidualAttentionBlock``: the same submodules under the same names."""

        def __init__(self, c: ImageTowerConfig):
            super().__init__()
            self.ln_1 = nn.LayerNorm(c.width, eps=c.ln_eps)
            self.attn = nn.MultiheadAttention(c.width, c.heads, batch_first=True)
            self.ln_2 = nn.LayerNorm(c.width, eps=c.ln_eps)
            act = QuickGELU() if c.activation == "quick" else nn.GELU(approximate=c.activation)
            self.mlp = nn.Sequential(
                OrderedDict(
                    c_fc=nn.Linear(c.width, c.mlp_width),
                    gelu=act,
                    c_proj=nn.Linear(c.mlp_width, c.width),
                )
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.ln_1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.ln_2(x))

    class Tower(nn.Module):
        """open_clip's ``VisionTransformer.forward`` in eval mode, with its state-dict names."""

        def __init__(self, c: ImageTowerConfig):
            super().__init__()
            self.config = c
            self.conv1 = nn.Conv2d(3, c.width, c.patch_size, stride=c.patch_size, bias=False)
            self.class_embedding = nn.Parameter(torch.empty(c.width))
            self.positional_embedding = nn.Parameter(torch.empty(c.tokens, c.width))
            self.ln_pre = nn.LayerNorm(c.width, eps=c.ln_eps) if c.ln_pre else nn.Identity()
            self.transformer = nn.Module()
            self.transformer.resblocks = nn.ModuleList(Block(c) for _ in range(c.layers))
            self.ln_post = nn.LayerNorm(c.width, eps=c.ln_eps)
            self.proj = nn.Parameter(torch.empty(c.width, c.output_dim)) if c.proj else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            c = self.config
            x = self.conv1(x)
            x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
            cls = self.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
            x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
            x = self.ln_pre(x)
            for block in self.transformer.resblocks:
                x = block(x)
            if c.final_ln_after_pool:
                x = self.ln_post(_pool(x, c.pool))
            else:
                x = _pool(self.ln_post(x), c.pool)
            return x @ self.proj if self.proj is not None else x

        def encode_image(self, x: torch.Tensor) -> torch.Tensor:
            """What the ``Encoder`` calls: the image features, not normalized."""
            return self(x)

    return Tower


def _pool(x: torch.Tensor, pool: str) -> torch.Tensor:
    return x[:, 1:].mean(dim=1) if pool == "avg" else x[:, 0]


_TOWER_CLASS: Any = None


def build_tower(
    config: ImageTowerConfig, tensors: Mapping[str, torch.Tensor], device: str = "cpu"
) -> torch.nn.Module:
    """A :class:`VisionTower` that holds ``tensors`` (by open_clip's names inside ``visual``)
    as its weights, without a copy, in eval mode.

    Raises:
        ValueError: a tensor is missing, unexpected, or of the wrong shape.
    """
    tower = VisionTower(config)
    expected = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != got:
        wrong = sorted(set(expected.items()) ^ set(got.items()))[:3]
        raise ValueError(f"image tower tensors do not fit its config: {wrong}")
    tower.load_state_dict(tensors, strict=True, assign=True)
    return tower.to(device).eval().requires_grad_(False)


def VisionTower(config: ImageTowerConfig) -> torch.nn.Module:  # noqa: N802 - a class, made lazily
    """An empty (meta-device) tower of a config; see :func:`build_tower` for a loaded one."""
    import torch

    global _TOWER_CLASS
    if _TOWER_CLASS is None:
        _TOWER_CLASS = _modules()
    with torch.device("meta"):  # no memory, no random initialisation: the weights follow
        return _TOWER_CLASS(config)


# --- reading the weights --------------------------------------------------------------------


def read_tower_tensors(
    path: str, prefix: str, names: list[str], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The tower's tensors of a safetensors file (float32, each ``prefix + name``), in ``dtype``.

    float32: memory-mapped, no copy. Another dtype: each tensor read into a buffer of its own
    and cast, so that the float32 file is never resident beside the cast copy.
    """
    import torch

    if dtype == torch.float32:
        arrays = read_safetensors(path, [prefix + n for n in names])
        with warnings.catch_warnings():  # read-only pages: nothing here writes to them
            warnings.simplefilter("ignore", UserWarning)
            out = {n: torch.from_numpy(arrays[prefix + n]) for n in names if prefix + n in arrays}
        return out
    return {n: torch.from_numpy(a).to(dtype) for n, a in read_copies(path, prefix, names)}


def read_copies(path: str, prefix: str, names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Each float32 tensor ``prefix + name`` of a safetensors file that exists, read into a
    buffer of its own (not mapped: the file's pages do not stay resident), one at a time.

    Raises:
        ValueError: a tensor is not float32, or lies outside the file.
    """
    header, base = safetensors_header(path)
    with open(path, "rb", buffering=0) as f:
        for n in names:
            info = header.get(prefix + n)
            if info is None:
                continue
            if info.get("dtype") != "F32":
                raise ValueError(f"{path}: tensor {prefix + n} is not float32")
            begin, end = (int(o) for o in info["data_offsets"])
            buf = np.empty(tuple(int(s) for s in info["shape"]), dtype=np.float32)
            if buf.nbytes != end - begin or f.seek(base + begin) < 0:
                raise ValueError(f"{path}: tensor {prefix + n} lies outside the file")
            if f.readinto(memoryview(buf).cast("B")) != buf.nbytes:
                raise ValueError(f"{path}: tensor {prefix + n} lies outside the file")
            yield n, buf


def load_tower(
    config: ImageTowerConfig, path: str, prefix: str, *, device: str, precision: str
) -> torch.nn.Module:
    """The tower of a config, its weights read from a safetensors file."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    names = list(VisionTower(config).state_dict())
    return build_tower(config, read_tower_tensors(path, prefix, names, dtype), device)


# --- the cache record -----------------------------------------------------------------------


def _read_record(spec: ModelSpec, key: str, cache_dir: str | None = None) -> dict | None:
    return read_record(spec, key, CACHE_SUBDIR, RECORD_VERSION, cache_dir)


@dataclass(frozen=True)
class ImageRecord:
    """What a valid image tower record says: the identity the vectors get (the index's when
    one was given), the preprocessing, the tower's shape, and where its weights lie."""

    identity: ModelIdentity
    preprocess: ImagePreprocess
    config: ImageTowerConfig
    weights: str  # a float32 safetensors file
    prefix: str  # of the tower's tensors in it

    def tensors(self) -> dict[str, np.ndarray]:
        """The tower's weights by their names inside ``visual``, float32, memory-mapped
        (read when touched, never copied), for the torch-free engines.

        Raises:
            OSError, ValueError: the weights file cannot be read.
        """
        p = self.prefix
        arrays = read_safetensors(self.weights, [p + n for n in self.config.tensor_shapes()])
        return {n[len(p) :]: a for n, a in arrays.items()}


def read_image_record(
    spec: ModelSpec, identity: ModelIdentity | None = None, cache_dir: str | None = None
) -> ImageRecord | None:
    """The image tower record of a model if it is valid now (see :mod:`towercache`), without
    reading any weights; None where the tower must come through open_clip.

    Args:
        spec: the model.
        identity: the identity it must have (an index's); by default what the spec names now.
        cache_dir: the Hugging Face cache the model loads through (None: the default).
    """
    try:
        key = identity.key if identity is not None else spec_key(spec)
    except OSError:
        return None
    record = _read_record(spec, key, cache_dir)
    if record is None:
        return None
    try:
        recorded = ModelIdentity.from_dict(record["identity"])
        preprocess = ImagePreprocess.from_config(recorded.preprocess)
        config = ImageTowerConfig.from_dict(record["config"])
        weights, prefix = str(record["weights"]), str(record["prefix"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        log.debug("image tower record of %s is unusable: %s", spec, e)
        return None
    if (
        preprocess is None
        or config.output_dim != recorded.dim
        or (identity is not None and recorded.dim != identity.dim)
    ):
        return None
    return ImageRecord(identity or recorded, preprocess, config, weights, prefix)


def cached_image_encoder(
    spec: ModelSpec,
    identity: ModelIdentity | None = None,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
) -> Encoder | None:
    """The image tower of a model alone, without open_clip, if a valid record of it is cached.

    Args:
        spec: the model.
        identity: the identity it must have (an index's); by default what the spec names now.
        device: a resolved device (``cpu``, ``cuda``, ``mps``).
        precision: a resolved precision (``fp32``, ``bf16``, ``fp16``).
        cache_dir: the Hugging Face cache the model loads through (None: the default).

    Returns:
        An :class:`Encoder` with ``towers="image"``, or None (load through open_clip) when
        there is no record, the identity or weights changed, or anything cannot be read.
    """
    found = read_image_record(spec, identity, cache_dir)
    if found is None:
        return None
    try:
        c, weights, prefix = found.config, found.weights, found.prefix
        tower = load_tower(c, weights, prefix, device=device, precision=precision)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        log.debug("image tower record %s is unusable: %s", found.weights, e)
        return None
    return Encoder(tower, found.preprocess, None, found.identity, device, precision, "image")


def cached_identity(spec: ModelSpec, cache_dir: str | None = None) -> ModelIdentity | None:
    """The identity of a model as its valid image tower record holds it, without reading any
    weights (what a new index records); None where :func:`cached_image_encoder` would not
    apply."""
    found = read_image_record(spec, None, cache_dir)
    return found.identity if found is not None else None


def remember(
    spec: ModelSpec,
    identity: ModelIdentity,
    model: Any,
    checkpoint: Callable[[], str | None],
    cache_dir: str | None = None,
) -> bool:
    """Record a loaded open_clip model's image tower for :func:`cached_image_encoder`, if it
    qualifies and is not recorded yet. Call it with the model in float32, before any cast.

    Args:
        spec: what the user asked for.
        identity: the loaded model's identity.
        model: the open_clip model, float32.
        checkpoint: gives the weights file it was loaded from, if any; called only when a
            record is written.
        cache_dir: the Hugging Face cache the model was loaded through (None: the default).

    Returns:
        Whether a valid record exists now. Never raises: a failure only costs speed.
    """
    try:
        if spec.random_weights:
            return False
        if _read_record(spec, identity.key, cache_dir) is not None:
            return True
        config = describe(model)
        if config is None or ImagePreprocess.from_config(identity.preprocess) is None:
            return False
        return _write_record(spec, identity, model, config, checkpoint, cache_dir)
    except Exception as e:  # a cache: never let it break loading a model
        log.debug("could not record the image tower of %s: %s", identity.describe(), e)
        return False


def _write_record(
    spec: ModelSpec,
    identity: ModelIdentity,
    model: Any,
    config: ImageTowerConfig,
    checkpoint: Callable[[], str | None],
    cache_dir: str | None,
) -> bool:
    path = record_path(spec, identity.key, CACHE_SUBDIR, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").float() for k, v in model.visual.state_dict().items()}
    weights, prefix = _in_place(checkpoint(), state), PREFIX
    if weights is None:  # another format, another dtype, or converted on load: a float32 copy
        copy = path.with_suffix(".safetensors")
        save_safetensors({PREFIX + k: v.numpy() for k, v in state.items()}, copy)
        weights = str(copy)
    # The model's own tensors, which the weights file holds exactly (checked, or copied).
    device = str(next(model.visual.parameters()).device)
    tower = build_tower(config, dict(model.visual.state_dict()), device)
    del state
    if not _parity(model, tower, identity):
        log.debug("image tower of %s differs from open_clip's; not recorded", spec)
        return False
    write_record(
        path, spec, identity, RECORD_VERSION, weights, config=config.to_dict(), prefix=prefix
    )
    return True


def _in_place(path: str | None, state: Mapping[str, torch.Tensor]) -> str | None:
    """The checkpoint itself when it is a safetensors file that holds every tensor of the
    tower in float32, equal to what the model holds; else None."""
    if not path or not str(path).endswith(".safetensors"):
        return None
    with contextlib.suppress(OSError, ValueError):
        header, _ = safetensors_header(path)
        if any(header.get(PREFIX + k, {}).get("dtype") != "F32" for k in state):
            return None
        copies = read_copies(str(path), PREFIX, list(state))
        if all(np.array_equal(a, state[k].numpy()) for k, a in copies):
            return str(path)
    return None


def probe_images(size: int) -> list[Any]:
    """Three deterministic pictures for the parity check: a colour gradient, noise, bars."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size * 2, dtype=np.float32)
    grad = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), -1)
    noise = rng.integers(0, 256, (size + 8, size * 3 // 2, 3), dtype=np.uint8)
    bars = np.zeros((size * 3 // 2, size, 3), dtype=np.uint8)
    bars[:, ::4] = (250, 40, 90)
    return [Image.fromarray(a.astype(np.uint8)) for a in (grad, noise, bars)]


def _parity(model: Any, tower: torch.nn.Module, identity: ModelIdentity) -> bool:
    """Whether the tower gives open_clip's ``encode_image`` within PARITY_TOLERANCE (unit
    vectors, fp32) on the probe images, preprocessed alike."""
    import torch

    preprocess = ImagePreprocess.from_config(identity.preprocess)
    if preprocess is None:
        return False
    device = next(model.visual.parameters()).device
    pixels = torch.stack([preprocess(img) for img in probe_images(identity.image_size)])
    pixels = pixels.to(device)
    with torch.inference_mode(), limit_threads(1 if device.type == "cpu" else None, TORCH):
        want = torch.nn.functional.normalize(model.encode_image(pixels).float(), dim=-1)
        got = torch.nn.functional.normalize(tower(pixels).float(), dim=-1)
    return got.shape == want.shape and float((got - want).abs().max()) <= PARITY_TOLERANCE


def describe(model: Any) -> ImageTowerConfig | None:
    """The config of an open_clip model's image tower if :class:`VisionTower` computes it
    exactly, else None (another model class or tower, an attentional pooler, custom blocks,
    layer scale, another norm or activation, ...)."""
    import open_clip
    import torch
    from open_clip import transformer as oc

    if type(model) not in (open_clip.CLIP, open_clip.CustomTextCLIP):
        return None
    v = getattr(model, "visual", None)
    if (
        type(v) is not oc.VisionTransformer
        or v.attn_pool is not None
        or v.pool_type not in ("tok", "avg")
        or v.output_tokens
        or not getattr(v.transformer, "batch_first", False)
        or type(v.patch_dropout) not in (torch.nn.Identity, oc.PatchDropout)
    ):
        return None
    conv = v.conv1
    size, patch = tuple(v.image_size), tuple(v.patch_size)
    if (
        size[0] != size[1]
        or patch[0] != patch[1]
        or conv.bias is not None
        or tuple(conv.kernel_size) != patch
        or tuple(conv.stride) != patch
        or tuple(conv.padding) != (0, 0)
        or conv.groups != 1
        or tuple(conv.dilation) != (1, 1)
        or conv.in_channels != 3
    ):
        return None
    blocks = list(v.transformer.resblocks)
    acts = {_activation(b) for b in blocks}
    ln_pre = type(v.ln_pre) is not torch.nn.Identity
    norms = [v.ln_post, *([v.ln_pre] if ln_pre else [])]
    norms += [n for b in blocks for n in (b.ln_1, b.ln_2)]
    eps = _eps(norms)
    proj = v.proj
    if not blocks or None in acts or len(acts) != 1 or eps is None:
        return None
    if proj is not None and not (isinstance(proj, torch.nn.Parameter) and proj.ndim == 2):
        return None
    widths = {(b.attn.num_heads, b.mlp.c_fc.out_features) for b in blocks}
    if len(widths) != 1:
        return None
    heads, mlp_width = widths.pop()
    return ImageTowerConfig(
        image_size=int(size[0]),
        patch_size=int(patch[0]),
        width=int(conv.out_channels),
        heads=int(heads),
        layers=len(blocks),
        mlp_width=int(mlp_width),
        output_dim=int(proj.shape[1]) if proj is not None else int(conv.out_channels),
        activation=acts.pop(),
        ln_eps=eps,
        ln_pre=ln_pre,
        pool=v.pool_type,
        final_ln_after_pool=bool(v.final_ln_after_pool),
        proj=proj is not None,
    )


def _activation(block: Any) -> str | None:
    """The activation (see :data:`ACTIVATIONS`) of a standard residual attention block that
    takes its batch first; else None."""
    from clipsearch.models.texttower import block_activation  # record writing only

    act = block_activation(block)  # None for anything but a standard block
    return act if act is not None and block.attn.batch_first else None


def _eps(norms: list[Any]) -> float | None:
    """The one epsilon of plain, affine LayerNorms (not open_clip's fp32-upcasting one, which
    computes differently in half precision), else None."""
    import torch
    from open_clip import transformer as oc

    kinds = {oc.LayerNorm, torch.nn.LayerNorm}
    if any(type(n) not in kinds or n.weight is None or n.bias is None for n in norms):
        return None
    eps = {float(n.eps) for n in norms}
    return eps.pop() if len(eps) == 1 else None
