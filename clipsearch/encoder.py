"""open_clip model loading, preprocessing and batched encoding.

A model is named the way open_clip names it:

* a built-in architecture plus ``pretrained``: a tag (``dfn2b``, ``openai``) resolved through
  open_clip's registry and the Hugging Face cache, or a local checkpoint file
  (``.pt``/``.bin``/``.safetensors``), or ``random`` for untrained weights (benchmarks, tests);
* ``hf-hub:org/repo``: config and weights from the Hugging Face hub or its local cache;
* ``local-dir:/path``: a folder with ``open_clip_config.json`` and a checkpoint;
* ``demo``: the small model that ships inside this package (see ``clipsearch.demo``).

Every vector this module returns is float32 and L2-normalized.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ModelLoadError
from .fileio import atomic_write

if TYPE_CHECKING:  # heavy imports stay lazy: `clipsearch info` must not pay for torch
    import torch
    from PIL import Image

    from .texttower import NumpyTextEncoder

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-16-quickgelu"
DEFAULT_PRETRAINED = "dfn2b"
RANDOM_WEIGHTS = "random"
DEMO_MODEL = "demo"
DEMO_DIR = Path(__file__).parent / "models" / "demo"
LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"
RANDOM_INIT_NOTICE = "No pretrained weights loaded"  # open_clip's warning for random weights
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TOWERS = ("both", "text")
# Images per model call by device: CPU throughput is flat from 8 to 32 (benchmarks/RESULTS.md)
# and smaller batches commit sooner; GPUs need large batches to fill.
BATCH_SIZES = {"cpu": 16, "cuda": 128, "mps": 64}


@dataclass(frozen=True)
class ModelSpec:
    """What a user asked for: an open_clip model name and where its weights come from."""

    model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED

    @classmethod
    def from_user(cls, model: str | None, pretrained: str | None) -> ModelSpec:
        """Fill in defaults the way the CLI documents them.

        With no model, the default model and its default weights. A schema-named model
        (``hf-hub:``, ``local-dir:``) or ``demo`` carries its own weights, so ``pretrained``
        must be empty for it.
        """
        if model is None:
            return cls(DEFAULT_MODEL, pretrained or DEFAULT_PRETRAINED)
        model = model.strip()
        if not model:
            raise ModelLoadError("empty model name; pass an open_clip model name such as ViT-B-16")
        if model == DEMO_MODEL or model.startswith((LOCAL_DIR_PREFIX, HF_HUB_PREFIX)):
            if pretrained:
                raise ModelLoadError(
                    f"model {model} carries its own weights; drop --pretrained {pretrained}"
                )
            if model.startswith(LOCAL_DIR_PREFIX):
                path = Path(model[len(LOCAL_DIR_PREFIX) :]).expanduser().resolve()
                model = f"{LOCAL_DIR_PREFIX}{path}"
            return cls(model, None)
        if pretrained and _looks_like_path(pretrained):
            pretrained = str(Path(pretrained).expanduser().resolve())
        return cls(model, pretrained)

    def describe(self) -> str:
        return f"{self.model} ({self.pretrained})" if self.pretrained else self.model


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith(CHECKPOINT_SUFFIXES) or Path(value).is_file()


@dataclass(frozen=True)
class ModelIdentity:
    """What an index records about the model that made its vectors.

    Two identities are compatible when their ``key`` is equal: the weights' checksum where the
    weights are a local file (so a moved folder still matches), otherwise name plus tag.
    """

    model: str
    pretrained: str | None
    weights_sha256: str | None
    dim: int
    image_size: int
    preprocess: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        if self.weights_sha256:
            return f"sha256:{self.weights_sha256}"
        return f"{self.model}|{self.pretrained}"

    def describe(self) -> str:
        tag = self.pretrained or (self.weights_sha256 or "")[:12]
        return f"{self.model} ({tag})" if tag else self.model

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "pretrained": self.pretrained,
            "weights_sha256": self.weights_sha256,
            "dim": self.dim,
            "image_size": self.image_size,
            "preprocess": self.preprocess,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelIdentity:
        return cls(
            model=data["model"],
            pretrained=data.get("pretrained"),
            weights_sha256=data.get("weights_sha256"),
            dim=int(data["dim"]),
            image_size=int(data["image_size"]),
            preprocess=dict(data.get("preprocess") or {}),
        )


MODELS_DIR = Path(__file__).parent / "models"


def register_model_configs() -> None:
    """Make the architectures shipped in ``clipsearch/models/*.json`` (``clipsearch-demo``)
    known to open_clip by name."""
    import open_clip

    for cfg in sorted(MODELS_DIR.glob("*.json")):
        if open_clip.get_model_config(cfg.stem) is None:
            open_clip.add_model_config(cfg)


def weights_file(spec: ModelSpec) -> str | None:
    """The local file holding the spec's weights, or None for tags, hub models and random."""
    if spec.model == DEMO_MODEL or spec.model.startswith(LOCAL_DIR_PREFIX):
        folder = DEMO_DIR if spec.model == DEMO_MODEL else Path(spec.model[len(LOCAL_DIR_PREFIX) :])
        return checkpoint_in_folder(folder) if folder.is_dir() else None
    if spec.pretrained and spec.pretrained != RANDOM_WEIGHTS and _looks_like_path(spec.pretrained):
        return spec.pretrained if Path(spec.pretrained).is_file() else None
    return None


# open_clip's choice among the checkpoints of a local-dir: folder, best first.
_PREFERRED_CHECKPOINTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)


def checkpoint_in_folder(folder: Path) -> str | None:
    """The checkpoint open_clip loads from a ``local-dir:`` folder (the rule of its
    ``create_model``, kept here so that finding it does not import torch): a preferred name
    if there is one, else the first ``*.safetensors``, else the first ``*.bin``/``*.pth`` by
    name."""
    found = sorted(p for ext in ("safetensors", "bin", "pth") for p in folder.glob(f"*.{ext}"))
    if not found:
        return None
    preferred = [p for name in _PREFERRED_CHECKPOINTS for p in found if p.name == name]
    if preferred:
        return str(preferred[0])
    return str(min(found, key=lambda p: p.suffix != ".safetensors"))  # stable: first by name


def spec_key(spec: ModelSpec) -> str:
    """The :attr:`ModelIdentity.key` the spec's model will have, computed without loading it."""
    path = weights_file(spec)
    if path:
        return f"sha256:{file_sha256(path)}"
    return f"{spec.model}|{spec.pretrained}"


def cache_home() -> Path:
    """clipsearch's own cache: ``$XDG_CACHE_HOME/clipsearch`` (``~/.cache/clipsearch``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipsearch"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, remembered in the cache by path, size, times and inode: a
    600 MB checkpoint takes 0.4 s to hash, at every model load otherwise."""
    real = os.path.realpath(path)
    st = os.stat(real)
    stamp = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    memo = cache_home() / "sha256" / (hashlib.sha256(real.encode()).hexdigest()[:32] + ".json")
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        known = json.loads(memo.read_text())
        if known["path"] == real and known["stat"] == stamp:
            return str(known["sha256"])
    digest = hashlib.sha256()
    with open(real, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    sha = digest.hexdigest()
    if os.stat(real).st_mtime_ns == st.st_mtime_ns:  # not rewritten while we read it
        with contextlib.suppress(OSError):
            memo.parent.mkdir(parents=True, exist_ok=True)
            entry = {"path": real, "stat": stamp, "sha256": sha}
            atomic_write(memo, json.dumps(entry).encode(), durable=False)
    return sha


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
    """``auto`` means fp16 on CUDA/MPS, bf16 on CPUs with native bf16 arithmetic (AVX512-BF16
    or AMX: ~2x fp32 speed, embeddings within cosine 0.999 of fp32), else fp32. Explicit
    values are checked."""
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
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def default_batch_size(device: str) -> int:
    """Images per model call for a device (``auto`` resolved first)."""
    return BATCH_SIZES.get(pick_device(device), 32)


class Encoder:
    """A loaded open_clip model with its eval preprocessing and tokenizer.

    Build one with :func:`load_encoder`. Images must already be RGB (see
    :func:`clipsearch.images.load_image`); the preprocessing is open_clip's own eval transform
    for the model, so vectors equal ``model.encode_image(preprocess(img), normalize=True)``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Any,
        tokenizer: Any,
        identity: ModelIdentity,
        device: str,
        precision: str,
        towers: str = "both",
    ):
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.identity = identity
        self.device = device
        self.precision = precision
        self.towers = towers
        self._compiled: Any = None  # the compiled image tower, once asked for
        self._compiled_batch = 0  # the batch size it was compiled for; 0 before the first

    @property
    def batch_size(self) -> int:
        """Images per model call that suit this encoder's device."""
        return BATCH_SIZES.get(self.device, 32)

    @property
    def dim(self) -> int:
        return self.identity.dim

    @property
    def image_size(self) -> int:
        return self.identity.image_size

    def _dtype(self) -> torch.dtype:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
            self.precision
        ]

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Encode a batch of preprocessed image tensors (N, 3, H, W)."""
        import torch

        if self.towers == "text":
            raise ModelLoadError(
                f"model {self.identity.describe()} was loaded for text queries only; "
                "load it with towers='both' to encode images"
            )
        with torch.inference_mode():
            x = pixels.to(self.device, dtype=self._dtype(), non_blocking=True)
            if self._compiled is not None:
                return _normalize(self._run_compiled(x))
            features = self.model.encode_image(x)
            return _normalize(features)

    @property
    def compiled(self) -> bool:
        """Whether the image tower runs compiled (see :meth:`compile_image_tower`)."""
        return self._compiled is not None and self._compiled_batch > 0

    def compile_image_tower(self) -> None:
        """Run the image tower through ``torch.compile`` (inductor, frozen weights) from the
        next batch on.

        The first batch pays for the compilation (15-30 s for ViT-B/16 on a CPU, and it
        needs a C++ compiler there), later ones run faster: the bf16 ViT-B/16 tower 9%,
        indexing end to end 6% on a 2-core CPU (benchmarks/RESULTS.md), so it suits runs of
        thousands of images. Batches are
        padded or split to the first batch's size, so that it compiles once. Where the
        compilation fails, a warning is logged and the tower runs as before.
        """
        import torch

        if self.towers == "text" or self._compiled is not None:
            return
        self._compiled = torch.compile(self.model.encode_image, dynamic=False)

    def _run_compiled(self, x: torch.Tensor) -> torch.Tensor:
        import torch
        from torch._inductor import config as inductor_config

        n = x.shape[0]
        if self._compiled_batch == 0:
            # torch says it found no CUDA runtime while it sets up its C++ builds: irrelevant
            # on a CPU, and compiling for CUDA finds one.
            cpp_log = logging.getLogger("torch.utils.cpp_extension")
            level = cpp_log.level
            cpp_log.setLevel(logging.ERROR)
            try:
                with inductor_config.patch(freezing=True):
                    out = self._compiled(x)
            except Exception as e:  # inductor raises many kinds; each means "not here"
                log.warning(
                    "could not compile the image tower (%s); running it uncompiled",
                    _one_line(e),
                )
                self._compiled = None
                torch._dynamo.reset()
                return self.model.encode_image(x)
            finally:
                cpp_log.setLevel(level)
            self._compiled_batch = n
            return out
        size = self._compiled_batch
        parts = []
        for start in range(0, n, size):
            chunk = x[start : start + size]
            if chunk.shape[0] < size:  # pad with copies of the first image: same shape
                pad = chunk[:1].expand(size - chunk.shape[0], *chunk.shape[1:])
                chunk = torch.cat([chunk, pad])
            with inductor_config.patch(freezing=True):
                parts.append(self._compiled(chunk)[: min(size, n - start)])
        return torch.cat(parts)

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Encode RGB PIL images; returns (N, dim) float32 unit vectors."""
        import torch

        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            pixels = torch.stack([self.preprocess(img) for img in chunk])
            out[start : start + len(chunk)] = self.encode_pixels(pixels)
        return out

    def encode_file(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The unit vector of one image file (EXIF-upright, RGB).

        Raises:
            ImageReadError: the file is missing or not a readable image.
        """
        from .images import load_image

        return self.encode_images([load_image(path)])[0]

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Encode texts with the model's own tokenizer; returns (N, dim) float32 unit vectors."""
        import torch

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            tokens = self.tokenizer(chunk).to(self.device)
            # A query or two is a few small matmuls: more threads only wait on each other
            # (10x slower on a busy 2-core machine than one thread).
            few = self.device == "cpu" and len(chunk) <= 4
            with torch.inference_mode(), _torch_threads(1 if few else None):
                features = _encode_text(self.model, tokens)
            out[start : start + len(chunk)] = _normalize(features)
        return out

    @property
    def logit_scale(self) -> float:
        """The model's learned softmax temperature (100 for CLIP)."""
        return float(self.model.logit_scale.exp().clamp(max=100).item())


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _encode_text(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text``, run only up to the last end-of-text token.

    CLIP's text transformer is causal and pools at the end-of-text token, so the padding
    after it cannot change the result: a 5-word query needs ~10 of the 77 positions, a
    seventh of the work. Models that pool elsewhere or attend both ways run in full.
    """
    import open_clip
    import torch

    pool = getattr(model, "text_pool_type", None)
    mask = getattr(model, "attn_mask", None)
    if type(model) is not open_clip.CLIP or mask is None or pool not in ("argmax", "eos"):
        return model.encode_text(tokens)
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


def _normalize(features: torch.Tensor) -> np.ndarray:
    import torch

    features = features.float()
    features = torch.nn.functional.normalize(features, dim=-1)
    return features.cpu().numpy().astype(np.float32, copy=False)


def load_encoder(
    model: str | None = None,
    pretrained: str | None = None,
    *,
    device: str = "auto",
    precision: str = "fp32",
    cache_dir: str | None = None,
    towers: str = "both",
) -> Encoder:
    """Load an open_clip model for encoding.

    Args:
        model: open_clip model name, ``hf-hub:org/repo``, ``local-dir:/path`` or ``demo``;
            None for the default (ViT-B-16 with DFN-2B weights).
        pretrained: a pretrained tag, a checkpoint file, or ``random``; only for built-in names.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        cache_dir: where open_clip caches downloads (default: the Hugging Face cache).
        towers: ``both``, or ``text`` to read only the text tower's weights (about a third
            of the model) where the checkpoint is a safetensors file: for text queries.

    Raises:
        ModelLoadError: the model is unknown or its weights cannot be found or read.
    """
    spec = ModelSpec.from_user(model, pretrained)
    return load_spec(spec, device=device, precision=precision, cache_dir=cache_dir, towers=towers)


def load_text_encoder(
    model: str | None = None,
    pretrained: str | None = None,
    *,
    device: str = "auto",
    precision: str = "fp32",
) -> Encoder | NumpyTextEncoder:
    """The quickest encoder for text queries: the text tower in NumPy, without importing
    torch, when the model has a valid record in the cache (see :mod:`clipsearch.texttower`;
    CPU only, fp32); else the model's text tower in torch.

    Its ``encode_texts`` gives the same vectors as :class:`Encoder`'s at fp32 (within 1e-4).
    Arguments as for :func:`load_encoder`.
    """
    from .texttower import applies, cached_text_encoder

    spec = ModelSpec.from_user(model, pretrained)
    if applies(device, precision):
        fast = cached_text_encoder(spec)
        if fast is not None:
            return fast
    return load_spec(spec, device=device, precision=precision, towers="text")


def load_spec(
    spec: ModelSpec,
    *,
    device: str = "auto",
    precision: str = "fp32",
    cache_dir: str | None = None,
    towers: str = "both",
) -> Encoder:
    import open_clip
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2

    device = pick_device(device)
    precision = pick_precision(precision, device)
    name, pretrained = spec.model, spec.pretrained
    open_clip_name = f"{LOCAL_DIR_PREFIX}{DEMO_DIR}" if name == DEMO_MODEL else name
    kwargs: dict[str, Any] = {"device": device, "cache_dir": cache_dir}
    local_weights: str | None = None

    if name == DEMO_MODEL and not (DEMO_DIR / "open_clip_config.json").is_file():
        raise ModelLoadError(
            f"the demo model is missing from this installation ({DEMO_DIR}); reinstall clipsearch"
        )
    if open_clip_name.startswith(LOCAL_DIR_PREFIX):
        folder = Path(open_clip_name[len(LOCAL_DIR_PREFIX) :])
        if not (folder / "open_clip_config.json").is_file():
            raise ModelLoadError(
                f"model {name}: {folder} has no open_clip_config.json; a local-dir: model is a "
                "folder with open_clip_config.json and a weights file"
            )
        local_weights = weights_file(spec)
        if local_weights is None:
            raise ModelLoadError(
                f"model {name}: no weights file (*.safetensors, *.bin, *.pth) in {folder}"
            )
        kwargs["require_pretrained"] = True
    elif open_clip_name.startswith(HF_HUB_PREFIX):
        _check_hub_reachable_or_cached(spec, hf_repo=open_clip_name[len(HF_HUB_PREFIX) :])
        kwargs["require_pretrained"] = True
    else:
        register_model_configs()
        if open_clip.get_model_config(name) is None:
            raise ModelLoadError(
                f"unknown model {name!r}; see `python -c 'import open_clip; "
                "print(open_clip.list_models())'` for the names open_clip knows"
            )
        if not pretrained:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ModelLoadError(
                f"model {name} needs --pretrained: a tag ({', '.join(tags) or 'none known'}), "
                f"a weights file, or {RANDOM_WEIGHTS!r} for untrained weights"
            )
        if pretrained == RANDOM_WEIGHTS:
            pass
        elif _looks_like_path(pretrained):
            if not Path(pretrained).is_file():
                raise ModelLoadError(f"model {name}: weights file {pretrained} does not exist")
            local_weights = pretrained
            kwargs["pretrained"] = pretrained
            kwargs["require_pretrained"] = True
        else:
            tag_cfg = open_clip.pretrained.get_pretrained_cfg(name, pretrained)
            if not tag_cfg:
                tags = open_clip.list_pretrained_tags_by_model(name)
                raise ModelLoadError(
                    f"model {name}: {pretrained!r} is neither a pretrained tag nor a file; "
                    f"tags for {name}: {', '.join(tags) or 'none'}"
                )
            # A tag trained with QuickGELU must run with it, whatever the config name says:
            # `ViT-B-16` + `openai` is the paper's model only with QuickGELU.
            if tag_cfg.get("quick_gelu"):
                kwargs["force_quick_gelu"] = True
            _check_tag_reachable_or_cached(spec, tag_cfg, cache_dir)
            kwargs["pretrained"] = pretrained
            kwargs["require_pretrained"] = True

    if towers not in TOWERS:
        raise ModelLoadError(f"unknown towers {towers!r}; choose one of {', '.join(TOWERS)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            loaded = None
            if towers == "text":
                loaded = _create_text_only(open_clip_name, kwargs, local_weights, cache_dir)
            if loaded is None:
                towers = "both"
                # Every weight is about to be overwritten by the checkpoint: skip the random
                # initialisation (a second for ViT-B-16).
                # Otherwise random weights were asked for: open_clip's warning that it
                # "initialized randomly" would only alarm.
                init = (
                    _skip_init()
                    if kwargs.get("require_pretrained")
                    else _dropping_log(RANDOM_INIT_NOTICE)
                )
                with init:
                    model = open_clip.create_model(open_clip_name, **kwargs)
                loaded = model, open_clip.get_model_preprocess_cfg(model)
            clip_model, pp = loaded
            preprocess = image_transform_v2(PreprocessCfg(**pp), is_train=False)
        tokenizer = open_clip.get_tokenizer(open_clip_name)
    except ModelLoadError:
        raise
    except Exception as e:  # open_clip raises RuntimeError/ValueError/OSError for all of these
        raise ModelLoadError(f"model {spec.describe()}: could not be loaded: {_one_line(e)}") from e

    clip_model.eval()
    size = pp.get("size", 224)
    image_size = int(size if isinstance(size, int) else size[0])
    with torch.inference_mode(), _torch_threads(1 if device == "cpu" else None):
        dim = int(_encode_text(clip_model, tokenizer(["x"]).to(device)).shape[-1])
    identity = ModelIdentity(
        model=spec.model,
        pretrained=None if local_weights else pretrained,
        weights_sha256=file_sha256(local_weights) if local_weights else None,
        dim=dim,
        image_size=image_size,
        preprocess=_jsonable(pp),
    )
    # While the model is still float32: let later text queries skip torch (clipsearch.texttower).
    from .texttower import remember

    def checkpoint() -> str | None:
        if not kwargs.get("require_pretrained"):
            return None
        return _checkpoint(open_clip_name, kwargs, local_weights, cache_dir)

    remember(spec, identity, clip_model, tokenizer, checkpoint, cache_dir)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dtype is not torch.float32:
        clip_model.to(dtype=dtype)
    return Encoder(clip_model, preprocess, tokenizer, identity, device, precision, towers)


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """Build modules without random initialisation: for weights loaded right after.

    Patches ``torch.nn.init`` for the duration, so no other thread should build modules
    meanwhile (models are loaded at start-up).
    """
    import sys

    import torch

    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    originals = {getattr(torch.nn.init, n) for n in names}
    # Modules also hold them under their own names (`from torch.nn.init import xavier_uniform_`
    # in nn.MultiheadAttention): patch every such reference in torch.nn and open_clip.
    targets = [
        m
        for name, m in list(sys.modules.items())
        if m is not None and name.startswith(("torch.nn", "open_clip"))
    ]
    saved = [(m, n, fn) for m in targets for n in names if (fn := getattr(m, n, None)) in originals]
    try:
        for m, n, _ in saved:
            setattr(m, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for m, n, fn in saved:
            setattr(m, n, fn)


@contextlib.contextmanager
def _dropping_log(prefix: str) -> Iterator[None]:
    """Drop the root logger's records that start with ``prefix`` for the duration."""
    root = logging.getLogger()

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _checkpoint(name: str, kwargs: dict[str, Any], local: str | None, cache_dir: str | None):
    """The weights file open_clip would load for these arguments, if it is already local."""
    import open_clip

    if local:
        return local
    if name.startswith(HF_HUB_PREFIX):
        return open_clip.pretrained.download_pretrained_from_hf(
            name[len(HF_HUB_PREFIX) :], cache_dir=cache_dir
        )
    tag = kwargs.get("pretrained")
    if tag:
        cfg = open_clip.pretrained.get_pretrained_cfg(name, tag)
        return open_clip.pretrained.download_pretrained(cfg, cache_dir=cache_dir) if cfg else None
    return None


def _create_text_only(
    name: str, kwargs: dict[str, Any], local: str | None, cache_dir: str | None
) -> tuple[Any, dict[str, Any]] | None:
    """The model with the text tower's weights only, read from a safetensors checkpoint; the
    image tower is dropped. None where that does not apply (other checkpoint formats, random
    weights, a checkpoint that needs conversion): the caller loads the whole model then."""
    import open_clip
    import torch
    from safetensors import safe_open

    path = _checkpoint(name, kwargs, local, cache_dir) if kwargs.get("require_pretrained") else None
    if not path or not str(path).endswith(".safetensors"):
        return None
    args = {k: v for k, v in kwargs.items() if k not in ("pretrained", "require_pretrained")}
    with _skip_init(), _dropping_log(RANDOM_INIT_NOTICE):  # the weights follow below
        model = open_clip.create_model(name, load_weights=False, **args)
    pp = open_clip.get_model_preprocess_cfg(model)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        state = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("visual.")}  # noqa: SIM118
    # assign=True below keeps the stored dtype: make it the float32 the full load gives (a
    # checkpoint stored in fp16, like the demo model's, would otherwise run in fp16).
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    if getattr(model, "logit_bias", None) is not None and "logit_bias" not in state:
        state["logit_bias"] = torch.zeros_like(model.logit_bias)
    model.visual = None
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        log.debug("text-only load of %s does not apply: %s", name, result)
        return None
    return model.to(kwargs.get("device", "cpu")), pp


def _jsonable(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(cfg.items())}


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:400] + ("…" if len(text) > 400 else "")


def hf_cache_dir(cache_dir: str | None) -> str:
    """The Hugging Face hub cache folder: ``cache_dir``, else what huggingface_hub reads from
    HF_HUB_CACHE / HF_HOME (importing it costs a few ms, and no torch)."""
    if cache_dir:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _check_tag_reachable_or_cached(
    spec: ModelSpec, tag_cfg: dict[str, Any], cache_dir: str | None
) -> None:
    from open_clip.constants import HF_WEIGHTS_NAME
    from open_clip.pretrained import _get_safe_alternatives

    hub = tag_cfg.get("hf_hub", "")
    if not hub:
        return  # URL-only weights: open_clip's own download and cache handle them
    # open_clip's convention: "org/repo/filename", or "org/repo/" for the default file name.
    repo, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    _check_cached_or_online(spec, repo, [*_get_safe_alternatives(filename), filename], cache_dir)


def _check_hub_reachable_or_cached(spec: ModelSpec, hf_repo: str) -> None:
    _check_cached_or_online(spec, hf_repo, ["open_clip_config.json"], None)


def _check_cached_or_online(
    spec: ModelSpec, repo: str, filenames: list[str], cache_dir: str | None
) -> None:
    """Fail in a second, with a message that says what to do, instead of after a minute of
    retries when the weights are not cached and the hub cannot be reached."""
    from huggingface_hub import constants, try_to_load_from_cache

    cache = hf_cache_dir(cache_dir)
    for name in filenames:
        found = try_to_load_from_cache(repo_id=repo, filename=name, cache_dir=cache)
        if isinstance(found, str):
            return
    offline = constants.HF_HUB_OFFLINE
    if not offline and _hub_reachable(constants.ENDPOINT):
        return
    why = (
        "offline mode (HF_HUB_OFFLINE) is on" if offline else f"{constants.ENDPOINT} is unreachable"
    )
    raise ModelLoadError(
        f"model {spec.describe()}: weights not in the local cache ({cache}, repo {repo}) and "
        f"{why}; fix: go online once so they are cached, pass --pretrained /path/to/weights"
        ".safetensors, or use --model local-dir:/path/to/folder"
    )


def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
