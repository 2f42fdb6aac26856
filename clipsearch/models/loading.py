"""Loading open_clip models from every source: pretrained tags through the Hugging Face
cache, checkpoint files, ``hf-hub:`` repositories, ``local-dir:`` folders and the demo model.

A load fails fast with one :class:`~clipsearch.errors.ModelLoadError` line that says what to do
when the weights are not cached and the hub cannot be reached.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipsearch.errors import ModelLoadError, one_line
from clipsearch.models.cpuencoder import CpuImageEncoder
from clipsearch.models.encoder import Encoder
from clipsearch.models.engines import NUMPY, ONNX, image_engine
from clipsearch.models.hftext import (
    check_local_tokenizer,
    hub_files,
    local_dir_text_cfg,
    require_transformers,
)
from clipsearch.models.identity import (
    CONFIG_NAME,
    DEMO_DIR,
    MODELS_DIR,
    RANDOM_WEIGHTS,
    TOWERS,
    ModelIdentity,
    ModelSpec,
    file_sha256,
    hf_cache_dir,
    hf_text_cfg,
    hf_text_sha256,
    weights_file,
)
from clipsearch.models.imagetower import cached_image_encoder, read_image_record
from clipsearch.models.imagetower import remember as remember_image_tower
from clipsearch.models.npimagetower import numpy_image_encoder
from clipsearch.models.onnxgraph import available as onnxruntime_available
from clipsearch.models.onnxtower import onnx_image_encoder
from clipsearch.models.openclip_private import hf_hub_model_config, safe_weight_names
from clipsearch.models.preprocess import ImagePreprocess
from clipsearch.models.runtime import encode_text, pick_device, pick_precision
from clipsearch.models.texttower import NumpyTextEncoder, applies, cached_text_encoder, remember
from clipsearch.threads import TORCH, limit_threads

log = logging.getLogger(__name__)


RANDOM_INIT_NOTICE = "No pretrained weights loaded"  # open_clip's warning for random weights


def register_model_configs() -> None:
    """Make the architectures shipped in ``clipsearch/models/*.json`` (``clipsearch-demo``)
    known to open_clip by name."""
    import open_clip

    for cfg in sorted(MODELS_DIR.glob("*.json")):
        if open_clip.get_model_config(cfg.stem) is None:
            open_clip.add_model_config(cfg)


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
        towers: ``both``; ``text`` to read only the text tower's weights (about a third
            of the model) where the checkpoint is a safetensors file: for text queries;
            ``image`` for the image tower alone, without open_clip once the model has been
            loaded before (:mod:`clipsearch.models.imagetower`): for indexing.

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
    torch, when the model has a valid record in the cache (see :mod:`clipsearch.models.texttower`;
    CPU only, fp32); else the model's text tower in torch.

    Its ``encode_texts`` gives the same vectors as :class:`Encoder`'s at fp32 (within 1e-4).
    Arguments as for :func:`load_encoder`.
    """
    spec = ModelSpec.from_user(model, pretrained)
    if applies(device, precision):
        fast = cached_text_encoder(spec)
        if fast is not None:
            return fast
    return load_spec(spec, device=device, precision=precision, towers="text")


def load_image_encoder(
    spec: ModelSpec,
    identity: ModelIdentity | None = None,
    *,
    images: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    cache_dir: str | None = None,
) -> Encoder | CpuImageEncoder:
    """The quickest encoder for a run of ``images`` images, by
    :func:`clipsearch.models.engines.image_engine`: once the model has a valid image tower
    record (it was loaded before), the image tower in NumPy for a small run, or on ONNX
    Runtime for a larger one in fp32, neither importing torch; else the image tower in torch
    (:func:`load_spec`, ``towers="image"``).

    Args:
        spec: the model.
        identity: the identity it must have (an index's); by default what the spec names now.
        images: at most how many images will be encoded; None: many, or unknown.
        device, precision, cache_dir: as for :func:`load_encoder`.
    """
    found = read_image_record(spec, identity, cache_dir) if images is not None else None
    if found is not None:
        onnx = onnxruntime_available()
        engine = image_engine(images, found.config, device, precision, onnx=onnx)
        fast = None
        if engine == NUMPY:
            fast = numpy_image_encoder(found)
        elif engine == ONNX:
            fast = onnx_image_encoder(found, int8=precision == "int8")
        if fast is not None:
            return fast
    return load_spec(spec, device=device, precision=precision, cache_dir=cache_dir, towers="image")


@dataclass(frozen=True)
class LoadPlan:
    """What open_clip needs to build a spec's model, worked out before anything is built.

    Args:
        name: the name ``open_clip.create_model`` takes.
        kwargs: its keyword arguments besides the device (``pretrained``,
            ``require_pretrained``, ``force_quick_gelu``, ``cache_dir``).
        local_weights: the local checkpoint file the weights come from, if any.
        hf_repo: the Hugging Face repository of an ``hf-hub:`` model.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    local_weights: str | None = None
    hf_repo: str | None = None

    @property
    def pretrained(self) -> bool:
        """Whether weights are loaded (not ``random``)."""
        return bool(self.kwargs.get("require_pretrained"))

    def checkpoint(self) -> str | None:
        """The weights file open_clip loads for this plan, if it is already local (a hub
        file in the Hugging Face cache included); None for random weights."""
        import open_clip

        if not self.pretrained:
            return None
        if self.local_weights:
            return self.local_weights
        cache_dir = self.kwargs.get("cache_dir")
        if self.hf_repo:
            return open_clip.pretrained.download_pretrained_from_hf(
                self.hf_repo, cache_dir=cache_dir
            )
        tag = self.kwargs.get("pretrained")
        cfg = open_clip.pretrained.get_pretrained_cfg(self.name, tag) if tag else None
        return open_clip.pretrained.download_pretrained(cfg, cache_dir=cache_dir) if cfg else None


def load_spec(
    spec: ModelSpec,
    *,
    device: str = "auto",
    precision: str = "fp32",
    cache_dir: str | None = None,
    towers: str = "both",
) -> Encoder:
    """Load the model a :class:`ModelSpec` names: resolve it, create it, identify it, record
    its text tower for the NumPy path and its image tower for :mod:`clipsearch.models.imagetower`,
    then cast it to the precision. Arguments and errors as for :func:`load_encoder`;
    ``towers="image"`` gives the image tower alone from its cache record (without importing
    open_clip) where there is one or this load writes one, else the whole model."""
    device = pick_device(device)
    precision = pick_precision(precision, device)
    if towers not in TOWERS:
        raise ModelLoadError(f"unknown towers {towers!r}; choose one of {', '.join(TOWERS)}")
    if towers == "image":
        fast = cached_image_encoder(spec, device=device, precision=precision, cache_dir=cache_dir)
        if fast is not None:
            return fast
    plan = resolve(spec, cache_dir)
    asked = towers
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model, pp, towers = create(plan, device=device, towers=towers)
            preprocess = ImagePreprocess.from_config(pp) or _open_clip_transform(pp)
        tokenizer = load_tokenizer(plan.name)
    except ModelLoadError:
        raise
    except Exception as e:  # open_clip raises RuntimeError/ValueError/OSError for all of these
        raise ModelLoadError(f"model {spec.describe()}: could not be loaded: {one_line(e)}") from e
    identity = identify(spec, plan, model, tokenizer, pp, device)
    # While the model is still float32: let later loads skip open_clip, and text queries torch.
    remember(spec, identity, model, tokenizer, plan.checkpoint, cache_dir)
    recorded = remember_image_tower(spec, identity, model, plan.checkpoint, cache_dir)
    if recorded and asked == "image":  # now on disk: let the model go, load that tower alone
        del model
        image = (spec, identity)
        fast = cached_image_encoder(*image, device=device, precision=precision, cache_dir=cache_dir)
        if fast is None:  # the record became unusable at once: the whole model after all
            return load_spec(spec, device=device, precision=precision, cache_dir=cache_dir)
        return fast
    _cast(model, precision)
    return Encoder(model, preprocess, tokenizer, identity, device, precision, towers)


def _open_clip_transform(pp: dict[str, Any]) -> Any:
    """open_clip's own eval transform, for the configs :class:`ImagePreprocess` does not
    reproduce."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**pp), is_train=False)


# --- resolve: what the user named -> what open_clip needs ---------------------------------


def resolve(spec: ModelSpec, cache_dir: str | None = None) -> LoadPlan:
    """What open_clip needs for a spec: its name, keyword arguments and local weights file.

    Raises:
        ModelLoadError: the model is unknown, its folder or weights file is missing, or its
            weights are not cached and the hub cannot be reached.
    """
    if spec.kind in ("demo", "local-dir"):
        return _resolve_local_dir(spec, cache_dir)
    if spec.hf_repo is not None:
        _check_hub_reachable_or_cached(spec, spec.hf_repo)
        model_cfg: dict[str, Any] = {}
        with contextlib.suppress(Exception):  # an unreadable config fails in create, with why
            model_cfg = dict(hf_hub_model_config(spec.hf_repo, cache_dir)["model_cfg"])
        _check_hf_text(spec, model_cfg, cache_dir)
        kwargs = {"cache_dir": cache_dir, "require_pretrained": True}
        return LoadPlan(spec.open_clip_name, kwargs, hf_repo=spec.hf_repo)
    return _resolve_builtin(spec, cache_dir)


def _check_hf_text(
    spec: ModelSpec,
    model_cfg: dict[str, Any],
    cache_dir: str | None = None,
    folder: Path | None = None,
) -> dict[str, Any] | None:
    """For a model with a Hugging Face text tower: check that transformers is installed and
    that the tower's config and tokenizer are cached or reachable, as for the weights.
    Returns the tower's ``text_cfg``, or None for a CLIP-BPE model."""
    text = hf_text_cfg(model_cfg)
    if text is None:
        return None
    require_transformers(spec.describe(), text)
    if folder is not None:
        check_local_tokenizer(spec.describe(), folder)
    for repo, files, what in hub_files(text, folder):
        _check_cached_or_online(spec, repo, files, cache_dir, what=what)
    return text


def _resolve_local_dir(spec: ModelSpec, cache_dir: str | None) -> LoadPlan:
    """A ``local-dir:`` folder, or the demo model's folder inside the package."""
    name, folder = spec.model, spec.local_dir or DEMO_DIR
    if spec.kind == "demo" and not (DEMO_DIR / CONFIG_NAME).is_file():
        raise ModelLoadError(
            f"the demo model is missing from this installation ({DEMO_DIR}); reinstall clipsearch"
        )
    if not (folder / CONFIG_NAME).is_file():
        raise ModelLoadError(
            f"model {name}: {folder} has no open_clip_config.json; a local-dir: model is a "
            "folder with open_clip_config.json and a weights file"
        )
    local_weights = weights_file(spec)
    if local_weights is None:
        raise ModelLoadError(
            f"model {name}: no weights file (*.safetensors, *.bin, *.pth) in {folder}"
        )
    kwargs: dict[str, Any] = {"cache_dir": cache_dir, "require_pretrained": True}
    text = _check_hf_text(spec, _read_model_cfg(spec, folder), cache_dir, folder)
    if text is not None:  # open_clip would resolve a relative hf_model_name against the CWD
        kwargs["text_cfg"] = local_dir_text_cfg(folder, text)
    return LoadPlan(spec.open_clip_name, kwargs, local_weights)


def _read_model_cfg(spec: ModelSpec, folder: Path) -> dict[str, Any]:
    """The ``model_cfg`` of a ``local-dir:`` folder's open_clip_config.json."""
    import json

    try:
        cfg = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))["model_cfg"]
        if not isinstance(cfg, dict):
            raise TypeError("model_cfg is not an object")
        return cfg
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(
            f"model {spec.describe()}: {folder / CONFIG_NAME} is unreadable ({one_line(e)}); "
            "it must hold a JSON object with a model_cfg"
        ) from e


def _resolve_builtin(spec: ModelSpec, cache_dir: str | None) -> LoadPlan:
    """A built-in architecture with ``random`` weights, a checkpoint file or a pretrained tag."""
    import open_clip

    name, pretrained = spec.model, spec.pretrained
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
    _check_hf_text(spec, open_clip.get_model_config(name), cache_dir)
    if spec.random_weights:
        # pretrained_text=False: an HF text tower untrained too, not its hub weights
        return LoadPlan(name, {"cache_dir": cache_dir, "pretrained_text": False})
    path = spec.pretrained_file
    if path is not None:
        if not Path(path).is_file():
            raise ModelLoadError(f"model {name}: weights file {path} does not exist")
        kwargs = {"cache_dir": cache_dir, "pretrained": path, "require_pretrained": True}
        return LoadPlan(name, kwargs, local_weights=path)
    return _resolve_tag(spec, cache_dir)


def _resolve_tag(spec: ModelSpec, cache_dir: str | None) -> LoadPlan:
    """A pretrained tag of open_clip's registry, whose weights must be cached or reachable."""
    import open_clip

    name, tag = spec.model, spec.pretrained
    tag_cfg = open_clip.pretrained.get_pretrained_cfg(name, tag)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ModelLoadError(
            f"model {name}: {tag!r} is neither a pretrained tag nor a file; "
            f"tags for {name}: {', '.join(tags) or 'none'}"
        )
    kwargs: dict[str, Any] = {"cache_dir": cache_dir}
    # A tag trained with QuickGELU must run with it, whatever the config name says:
    # `ViT-B-16` + `openai` is the paper's model only with QuickGELU.
    if tag_cfg.get("quick_gelu"):
        kwargs["force_quick_gelu"] = True
    _check_tag_reachable_or_cached(spec, tag_cfg, cache_dir)
    kwargs.update(pretrained=tag, require_pretrained=True)
    return LoadPlan(name, kwargs)


# --- create: the open_clip model ----------------------------------------------------------


def load_tokenizer(name: str) -> Any:
    """open_clip's tokenizer for a model name (what ``open_clip.get_tokenizer`` gives).

    Building one reads its whole vocabulary, so each is made once per process for a name and
    the state of its config file; tokenizers keep nothing of a model, so models share them.
    """
    stamp: tuple[int, int] | None = None
    folder = ModelSpec(name, None).local_dir
    if folder is not None:
        with contextlib.suppress(OSError):
            st = (folder / CONFIG_NAME).stat()
            stamp = (st.st_mtime_ns, st.st_size)
    return _tokenizer(name, stamp)


@functools.lru_cache(maxsize=8)
def _tokenizer(name: str, stamp: tuple[int, int] | None) -> Any:
    import open_clip

    return open_clip.get_tokenizer(name)


def create(plan: LoadPlan, *, device: str, towers: str = "both") -> tuple[Any, dict[str, Any], str]:
    """Build the model a plan describes, in eval mode, float32, on ``device``.

    Returns:
        (model, its preprocess config, the towers loaded): ``text`` reads only the text
        tower's weights where the checkpoint allows it (see :func:`create_text_only`), and
        falls back to ``both``.
    """
    import open_clip

    loaded = create_text_only(plan, device) if towers == "text" else None
    if loaded is not None:
        model, pp = loaded
    else:
        towers = "both"
        # Every weight is about to be overwritten by the checkpoint: skip the random
        # initialisation, which costs noticeable time for a large model.
        # Otherwise random weights were asked for: open_clip's warning that it
        # "initialized randomly" would only alarm.
        init = _skip_init() if plan.pretrained else dropping_log(RANDOM_INIT_NOTICE)
        with init:
            model = open_clip.create_model(plan.name, device=device, **plan.kwargs)
        pp = open_clip.get_model_preprocess_cfg(model)
    model.eval()
    return model, pp, towers


def create_text_only(plan: LoadPlan, device: str) -> tuple[Any, dict[str, Any]] | None:
    """The model with the text tower's weights only, read from a safetensors checkpoint; the
    image tower is dropped. None where that does not apply (other checkpoint formats, random
    weights, a checkpoint that needs conversion): the caller loads the whole model then."""
    import open_clip
    from safetensors import safe_open

    path = plan.checkpoint()
    if not path or not str(path).endswith(".safetensors"):
        return None
    args = {k: v for k, v in plan.kwargs.items() if k not in ("pretrained", "require_pretrained")}
    args["pretrained_text"] = False  # an HF text tower: its weights too come from the checkpoint
    with _skip_init(), dropping_log(RANDOM_INIT_NOTICE):  # the weights follow below
        model = open_clip.create_model(plan.name, device=device, load_weights=False, **args)
    pp = open_clip.get_model_preprocess_cfg(model)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        state = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("visual.")}  # noqa: SIM118
    state = _text_state_for(model, state)
    model.visual = None
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        log.debug("text-only load of %s does not apply: %s", plan.name, result)
        return None
    return model.to(device), pp


def _text_state_for(model: Any, state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's text-tower tensors made to fit ``model`` as the full load would."""
    import torch

    # assign=True keeps the stored dtype: make it the float32 the full load gives (a
    # checkpoint stored in fp16, like the demo model's, would otherwise run in fp16).
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    if getattr(model, "logit_bias", None) is not None and "logit_bias" not in state:
        state["logit_bias"] = torch.zeros_like(model.logit_bias)
    return state


# --- identify: what the vectors will mean ---------------------------------------------------


def identify(
    spec: ModelSpec,
    plan: LoadPlan,
    model: Any,
    tokenizer: Any,
    preprocess_cfg: dict[str, Any],
    device: str,
) -> ModelIdentity:
    """The :class:`ModelIdentity` of a created model: its embedding width (from one text
    pass), image size, preprocessing, and the checksum of a local weights file or else the
    pretrained tag."""
    import torch

    size = preprocess_cfg.get("size", 224)
    with torch.inference_mode(), limit_threads(1 if device == "cpu" else None, TORCH):
        dim = int(encode_text(model, tokenizer(["x"]).to(device)).shape[-1])
    local = plan.local_weights
    folder = spec.local_dir
    return ModelIdentity(
        model=spec.model,
        pretrained=None if local else spec.pretrained,
        weights_sha256=file_sha256(local) if local else None,
        dim=dim,
        image_size=int(size if isinstance(size, int) else size[0]),
        preprocess=preprocess_record(preprocess_cfg),
        text_sha256=hf_text_sha256(folder) if folder is not None else None,
    )


def preprocess_record(cfg: dict[str, Any]) -> dict[str, Any]:
    """A preprocess config as an index records it: keys sorted, tuples as lists, so that it
    equals what a JSON round trip gives back."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(cfg.items())}


def _cast(model: Any, precision: str) -> None:
    """Cast a float32 model to ``fp32``, ``bf16`` or ``fp16`` in place."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dtype is not torch.float32:
        model.to(dtype=dtype)


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
def dropping_log(prefix: str) -> Iterator[None]:
    """Drop the root logger's records that start with ``prefix`` for the duration."""
    root = logging.getLogger()

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _check_tag_reachable_or_cached(
    spec: ModelSpec, tag_cfg: dict[str, Any], cache_dir: str | None
) -> None:
    from open_clip.constants import HF_WEIGHTS_NAME

    hub = tag_cfg.get("hf_hub", "")
    if not hub:
        return  # URL-only weights: open_clip's own download and cache handle them
    # open_clip's convention: "org/repo/filename", or "org/repo/" for the default file name.
    repo, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    _check_cached_or_online(spec, repo, [*safe_weight_names(filename), filename], cache_dir)


def _check_hub_reachable_or_cached(spec: ModelSpec, hf_repo: str) -> None:
    _check_cached_or_online(spec, hf_repo, [CONFIG_NAME], None)


def _check_cached_or_online(
    spec: ModelSpec, repo: str, filenames: list[str], cache_dir: str | None, what: str = "weights"
) -> None:
    """Fail at once, with a message that says what to do, instead of after long retries
    when the weights (or ``what`` else the model reads from the hub) are not cached and the
    hub cannot be reached."""
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
        f"model {spec.describe()}: {what} not in the local cache ({cache}, repo {repo}) and "
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
