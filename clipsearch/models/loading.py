"""Loading open_clip models from every source: pretrained tags through the Hugging Face
cache, checkpoint files, ``hf-hub:`` repositories, ``local-dir:`` folders and the demo model.

A load fails fast with one :class:`~clipsearch.errors.ModelLoadError` line that says what to do
when the weights are not cached and the hub cannot be reached.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clipsearch.errors import ModelLoadError, one_line
from clipsearch.models.encoder import Encoder
from clipsearch.models.identity import (
    DEMO_DIR,
    DEMO_MODEL,
    HF_HUB_PREFIX,
    LOCAL_DIR_PREFIX,
    MODELS_DIR,
    RANDOM_WEIGHTS,
    TOWERS,
    ModelIdentity,
    ModelSpec,
    file_sha256,
    hf_cache_dir,
    looks_like_path,
    weights_file,
)
from clipsearch.models.openclip_private import safe_weight_names
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
        elif looks_like_path(pretrained):
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
                    else dropping_log(RANDOM_INIT_NOTICE)
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
        raise ModelLoadError(f"model {spec.describe()}: could not be loaded: {one_line(e)}") from e

    clip_model.eval()
    size = pp.get("size", 224)
    image_size = int(size if isinstance(size, int) else size[0])
    with torch.inference_mode(), limit_threads(1 if device == "cpu" else None, TORCH):
        dim = int(encode_text(clip_model, tokenizer(["x"]).to(device)).shape[-1])
    identity = ModelIdentity(
        model=spec.model,
        pretrained=None if local_weights else pretrained,
        weights_sha256=file_sha256(local_weights) if local_weights else None,
        dim=dim,
        image_size=image_size,
        preprocess=_jsonable(pp),
    )

    # While the model is still float32: let later text queries skip torch (models.texttower).
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
    with _skip_init(), dropping_log(RANDOM_INIT_NOTICE):  # the weights follow below
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
