"""What a training run writes: resumable checkpoints, and the trained model exported as a
folder that open_clip and :func:`clipsearch.models.loading.load_encoder` open as
``local-dir:/that/folder`` (``open_clip_config.json`` and ``open_clip_model.safetensors``).

Every file goes through :func:`clipsearch.store.fileio.atomic_write`, so a run killed while
writing leaves the previous checkpoint or model whole.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipsearch.errors import TrainingError
from clipsearch.models.identity import CONFIG_NAME, WEIGHTS_NAME, ModelSpec
from clipsearch.models.openclip_private import hf_hub_model_config
from clipsearch.store.fileio import atomic_write
from clipsearch.training.config import TrainConfig

if TYPE_CHECKING:
    import torch

CHECKPOINT_GLOB = "step_*.pt"
RESUME_MUST_MATCH = ("model", "pretrained", "batch_size", "seed")
"""Settings a resumed run must share with its checkpoint: they decide the data order."""


# ---------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_files(folder: Path) -> list[Path]:
    """The checkpoints in ``folder``, oldest first."""
    return sorted(folder.glob(CHECKPOINT_GLOB))


def latest_checkpoint(config: TrainConfig) -> Path | None:
    """The newest checkpoint of a run, or None when it has none."""
    found = checkpoint_files(config.checkpoints)
    return found[-1] if found else None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's state, tensors on the CPU.

    Raises:
        TrainingError: the file is truncated, of another format or refused by the unpickler.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, wrong format, unpickling refused
        raise TrainingError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); delete it to resume "
            "from an older one"
        ) from e


def checkpoint_to_resume(config: TrainConfig) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of the run ``config`` describes, and its state.

    Raises:
        TrainingError: there is none, it cannot be read, or it was written with other
            :data:`RESUME_MUST_MATCH` settings.
    """
    path = latest_checkpoint(config)
    if path is None:
        raise TrainingError(
            f"nothing to resume: no checkpoint in {config.checkpoints}; drop resume to "
            "start a new run"
        )
    state = read_checkpoint(path)
    saved, now = state["config"], config.to_dict()
    changed = [k for k in RESUME_MUST_MATCH if saved.get(k) != now[k]]
    if changed:
        raise TrainingError(
            f"checkpoint {path} belongs to another run ({', '.join(changed)} differ); "
            "use the same settings or another checkpoint_dir"
        )
    return path, state


class Checkpointer:
    """Writes a run's checkpoints as ``step_0000123.pt`` and keeps only the newest few.

    Attributes:
        last: the newest checkpoint written or resumed from; None before the first.
    """

    def __init__(self, config: TrainConfig, last: Path | None = None):
        self.folder = config.checkpoints
        self.every = config.checkpoint_every
        self.keep = config.keep_checkpoints
        self.last = last

    def due(self, step: int) -> bool:
        """Whether the periodic schedule saves after ``step``."""
        return bool(self.every) and step % self.every == 0

    def has(self, step: int) -> bool:
        """Whether the newest checkpoint is the one of ``step``."""
        return self.last is not None and self.last.name == self._name(step)

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        """Write ``state`` as the checkpoint of ``step`` and delete all but the newest few.

        Raises:
            TrainingError: the folder or file cannot be written.
        """
        import torch

        path = self.folder / self._name(step)
        buffer = io.BytesIO()
        torch.save(dict(state), buffer)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, buffer.getvalue())
        except OSError as e:
            raise TrainingError(f"cannot write checkpoint {path}: {e}") from e
        for old in checkpoint_files(self.folder)[: -self.keep]:
            old.unlink(missing_ok=True)
        self.last = path
        return path

    @staticmethod
    def _name(step: int) -> str:
        return f"step_{step:07d}.pt"


# ---------------------------------------------------------------------------------------------
# Export


def model_config(name: str, model: torch.nn.Module) -> dict[str, Any]:
    """The open_clip model config that rebuilds ``model``, for ``open_clip_config.json``.

    Args:
        name: what ``model`` was loaded as: an architecture, ``local-dir:`` or ``hf-hub:``.
        model: the loaded open_clip model.

    Raises:
        TrainingError: open_clip has no config for the architecture.
    """
    import open_clip
    from open_clip.transformer import QuickGELU

    spec = ModelSpec(name, None)
    if spec.local_dir is not None:
        with open(spec.local_dir / CONFIG_NAME, encoding="utf-8") as f:
            cfg = json.load(f)["model_cfg"]
    elif spec.hf_repo is not None:
        cfg = hf_hub_model_config(spec.hf_repo)["model_cfg"]
    else:
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            raise TrainingError(f"model {name}: no open_clip config to export")
    cfg = dict(cfg)
    if any(isinstance(m, QuickGELU) for m in model.modules()):
        cfg["quick_gelu"] = True
    return cfg


def export_model(
    model: torch.nn.Module,
    model_cfg: Mapping[str, Any],
    output_dir: str | os.PathLike[str],
    *,
    save_dtype: str = "fp32",
) -> Path:
    """Write ``model`` as a folder that open_clip loads with ``local-dir:``.

    Args:
        model: an open_clip CLIP model.
        model_cfg: its open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``...).
        output_dir: the folder; created when missing, existing model files are replaced.
        save_dtype: ``fp32`` or ``fp16`` for the floating-point weights.

    Returns:
        The folder.

    Raises:
        TrainingError: the folder cannot be written.
    """
    import open_clip
    import torch
    from safetensors.torch import save

    out = Path(output_dir)
    dtype = torch.float16 if save_dtype == "fp16" else torch.float32
    tensors = {
        k: (v.detach().to("cpu", dtype=dtype) if v.is_floating_point() else v.detach().cpu())
        .contiguous()
        .clone()
        for k, v in model.state_dict().items()
    }
    config = {
        "model_cfg": dict(model_cfg),
        "preprocess_cfg": dict(open_clip.get_model_preprocess_cfg(model)),
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
        atomic_write(out / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode("utf-8"))
    except OSError as e:
        raise TrainingError(f"cannot write the trained model to {out}: {e}") from e
    return out
