"""What names a model and what identifies its vectors, without importing torch.

A model is named the way open_clip names it:

* a built-in architecture plus ``pretrained``: a tag (``dfn2b``, ``openai``) resolved through
  open_clip's registry and the Hugging Face cache, or a local checkpoint file
  (``.pt``/``.bin``/``.safetensors``), or ``random`` for untrained weights (benchmarks, tests);
* ``hf-hub:org/repo``: config and weights from the Hugging Face hub or its local cache;
* ``local-dir:/path``: a folder with ``open_clip_config.json`` and a checkpoint;
* ``demo``: the small model that ships inside this package (``clipsearch/models/demo``).

:class:`ModelSpec` is what the user asked for; :class:`ModelIdentity` is what a loaded model
is, recorded in every index so that vectors of different models never mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from clipsearch.errors import ModelLoadError
from clipsearch.store.fileio import atomic_write

DEFAULT_MODEL = "ViT-B-16-quickgelu"


DEFAULT_PRETRAINED = "dfn2b"


RANDOM_WEIGHTS = "random"


DEMO_MODEL = "demo"


DEMO_DIR = Path(__file__).parent / "demo"


LOCAL_DIR_PREFIX = "local-dir:"


HF_HUB_PREFIX = "hf-hub:"


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
CONFIG_NAME = "open_clip_config.json"  # what makes a folder a local-dir: model
WEIGHTS_NAME = "open_clip_model.safetensors"  # the weights file clipsearch writes there
MAX_LOGIT_SCALE = 100.0
"""CLIP's cap on its softmax temperature, as open_clip clamps it: the scale of zero-shot logits."""


DEVICES = ("auto", "cpu", "cuda", "mps")


# int8: the image tower of CPU index runs with int8 weights on ONNX Runtime, the rest fp32
# (clipsearch/models/onnxint8.py).
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


TOWERS = ("both", "text", "image")


ModelKind = Literal["builtin", "hf-hub", "local-dir", "demo"]
"""How a model is named: a built-in open_clip architecture (weights from ``pretrained``), an
``hf-hub:`` repository, a ``local-dir:`` folder, or the shipped ``demo``."""


@dataclass(frozen=True)
class ModelSpec:
    """What a user asked for: an open_clip model name and where its weights come from.

    The one parser of model names: every other module asks a spec for its :attr:`kind`, its
    :attr:`local_dir`, :attr:`hf_repo` or :attr:`open_clip_name`, and for what its
    ``pretrained`` is (:attr:`random_weights`, :attr:`pretrained_file`).
    """

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
        named = cls(model, None)
        if named.kind != "builtin":
            if pretrained:
                raise ModelLoadError(
                    f"model {model} carries its own weights; drop --pretrained {pretrained}"
                )
            if named.kind == "local-dir" and named.local_dir is not None:
                return cls(local_dir_name(named.local_dir.expanduser().resolve()), None)
            return named
        if pretrained and looks_like_path(pretrained):
            pretrained = str(Path(pretrained).expanduser().resolve())
        return cls(model, pretrained)

    @property
    def kind(self) -> ModelKind:
        """Which of the four ways of naming a model this is."""
        if self.model == DEMO_MODEL:
            return "demo"
        if self.model.startswith(LOCAL_DIR_PREFIX):
            return "local-dir"
        if self.model.startswith(HF_HUB_PREFIX):
            return "hf-hub"
        return "builtin"

    @property
    def local_dir(self) -> Path | None:
        """The model folder of a ``local-dir:`` or ``demo`` model, else None."""
        if self.kind == "demo":
            return DEMO_DIR
        if self.kind == "local-dir":
            return Path(self.model[len(LOCAL_DIR_PREFIX) :])
        return None

    @property
    def hf_repo(self) -> str | None:
        """The ``org/repo`` of an ``hf-hub:`` model, else None."""
        return self.model[len(HF_HUB_PREFIX) :] if self.kind == "hf-hub" else None

    @property
    def open_clip_name(self) -> str:
        """The name open_clip's ``create_model`` takes: ``demo`` is its ``local-dir:`` folder."""
        return local_dir_name(DEMO_DIR) if self.kind == "demo" else self.model

    @property
    def random_weights(self) -> bool:
        """Whether untrained weights were asked for (``--pretrained random``)."""
        return self.pretrained == RANDOM_WEIGHTS

    @property
    def pretrained_file(self) -> str | None:
        """``pretrained`` where it names a checkpoint file rather than a tag (it may not
        exist), else None."""
        p = self.pretrained
        return p if p and p != RANDOM_WEIGHTS and looks_like_path(p) else None

    def describe(self) -> str:
        return f"{self.model} ({self.pretrained})" if self.pretrained else self.model


def local_dir_name(folder: str | os.PathLike[str]) -> str:
    """The model name that loads an open_clip folder: ``local-dir:FOLDER``."""
    return f"{LOCAL_DIR_PREFIX}{folder}"


def looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith(CHECKPOINT_SUFFIXES) or Path(value).is_file()


@dataclass(frozen=True)
class ModelIdentity:
    """What an index records about the model that made its vectors.

    Two identities are compatible when their ``key`` is equal: the weights' checksum where the
    weights are a local file (so a moved folder still matches), otherwise name plus tag; for a
    ``local-dir:`` folder with a Hugging Face text tower, plus ``text_sha256``, the checksum of
    the tokenizer and tower config files in it (see :func:`hf_text_sha256`). CLIP-BPE models
    have none, so their keys, and the identities that indexes of older releases recorded,
    are unchanged.
    """

    model: str
    pretrained: str | None
    weights_sha256: str | None
    dim: int
    image_size: int
    preprocess: dict[str, Any] = field(default_factory=dict)
    text_sha256: str | None = None

    @property
    def key(self) -> str:
        base = f"sha256:{self.weights_sha256}" if self.weights_sha256 else None
        base = base or f"{self.model}|{self.pretrained}"
        return f"{base}|text:{self.text_sha256}" if self.text_sha256 else base

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
            # only where there is one: a CLIP-BPE model's record stays as older releases wrote it
            **({"text_sha256": self.text_sha256} if self.text_sha256 else {}),
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
            text_sha256=data.get("text_sha256"),
        )


MODELS_DIR = Path(__file__).parent


def weights_file(spec: ModelSpec) -> str | None:
    """The local file holding the spec's weights, or None for tags, hub models and random."""
    folder = spec.local_dir
    if folder is not None:
        return checkpoint_in_folder(folder) if folder.is_dir() else None
    path = spec.pretrained_file
    return path if path and Path(path).is_file() else None


# open_clip's choice among the checkpoints of a local-dir: folder, best first.
_PREFERRED_CHECKPOINTS = (
    WEIGHTS_NAME,
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
    base = f"sha256:{file_sha256(path)}" if path else f"{spec.model}|{spec.pretrained}"
    folder = spec.local_dir
    text = hf_text_sha256(folder) if folder is not None else None
    return f"{base}|text:{text}" if text else base


# The files a Hugging Face tokenizer or model config may be read from, in a local-dir: folder
# or the tower's own folder (transformers' names; whichever of them exist are hashed).
HF_TEXT_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)


def hf_text_cfg(model_cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The ``text_cfg`` of an open_clip model config whose text tower comes from Hugging Face
    transformers (``hf_model_name`` or ``hf_tokenizer_name`` set), else None."""
    text = model_cfg.get("text_cfg") or {}
    return text if text.get("hf_model_name") or text.get("hf_tokenizer_name") else None


def local_hf_model_dir(folder: Path, hf_model_name: str) -> Path | None:
    """The folder an HF tower's ``hf_model_name`` names relative to a ``local-dir:`` model
    folder (``"."``, ``"text"``), or an absolute folder; None where it names a hub model."""
    path = Path(hf_model_name).expanduser()
    path = path if path.is_absolute() else folder / path
    return path if (path / "config.json").is_file() else None


def hf_text_sha256(folder: Path) -> str | None:
    """The checksum of what a ``local-dir:`` folder's Hugging Face text tower is read from,
    besides the weights (the checkpoint holds those): its ``text_cfg``, and the tokenizer and
    config files of the folder (open_clip reads the tokenizer from there) and of the tower's
    own folder. None for a CLIP-BPE model, or a folder without a readable config."""
    try:
        model_cfg = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))["model_cfg"]
        text = hf_text_cfg(model_cfg)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if text is None:
        return None
    digest = hashlib.sha256(json.dumps(text, sort_keys=True).encode())
    tower = local_hf_model_dir(folder, str(text.get("hf_model_name") or ""))
    for where in dict.fromkeys(d.resolve() for d in (folder, tower) if d is not None):
        for name in HF_TEXT_FILES:
            if (where / name).is_file():
                digest.update(f"\n{name}:{file_sha256(where / name)}".encode())
    return digest.hexdigest()


def cache_home() -> Path:
    """clipsearch's own cache: ``$XDG_CACHE_HOME/clipsearch`` (``~/.cache/clipsearch``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipsearch"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, remembered in the cache by path, size, times and inode, so that
    a large checkpoint is not read through again at every model load."""
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


def hf_cache_dir(cache_dir: str | None) -> str:
    """The Hugging Face hub cache folder: ``cache_dir``, else what huggingface_hub reads from
    HF_HUB_CACHE / HF_HOME (a light import, without torch)."""
    if cache_dir:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def model_names() -> list[str]:
    """The names ``--model`` takes without a prefix: ``demo``, clipsearch's own architectures
    and open_clip's, read from their config files without importing open_clip (for shell
    completion, which runs on every key press)."""
    folders = [MODELS_DIR]
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        folders.append(Path(folder) / "model_configs")
    names = {cfg.stem for folder in folders for cfg in folder.glob("*.json")}
    return [DEMO_MODEL, *sorted(names)]
