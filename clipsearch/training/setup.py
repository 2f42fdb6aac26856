"""The model under training and what trains it: weights loaded, precision chosen, optimizer,
gradient scaler and auxiliary classifiers built, or restored from a checkpoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipsearch.errors import TrainingError
from clipsearch.training.checkpoints import model_config
from clipsearch.training.config import TrainConfig
from clipsearch.training.loss import LabelLoss
from clipsearch.training.optim import build_optimizer, param_groups

if TYPE_CHECKING:
    import torch

    from clipsearch.models.encoder import Encoder

log = logging.getLogger(__name__)


def model_source(config: TrainConfig) -> tuple[str, str | None]:
    """The name and pretrained tag to load ``config.model`` with: the shipped demo model as its
    folder, and a bare architecture without ``pretrained`` with random weights."""
    from clipsearch.models.identity import RANDOM_WEIGHTS, ModelSpec

    spec = ModelSpec(config.model.strip(), config.pretrained)
    if spec.kind == "builtin" and not spec.pretrained:
        return spec.model, RANDOM_WEIGHTS
    return spec.open_clip_name, spec.pretrained


def autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """The autocast type of ``precision`` on ``device``; None trains in fp32.

    Raises:
        TrainingError: fp16 asked for without CUDA.
    """
    import torch

    if precision == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device != "cuda":
            raise TrainingError(f"fp16 training needs a CUDA GPU, not {device}; use bf16 or fp32")
        return torch.float16
    return torch.bfloat16


@dataclass
class Trainee:
    """The model under training and its training state.

    Attributes:
        encoder: the loaded model, whose preprocessing and tokenizer make the batches.
        model_cfg: the open_clip config that rebuilds the model, for the export.
        device: where it trains.
        autocast_dtype: the autocast type; None trains in fp32.
        optimizer: AdamW over the model and the auxiliary classifiers.
        scaler: the gradient scaler of fp16 training, else None.
        label_loss: the auxiliary classifiers, or None when they are off.
    """

    encoder: Encoder
    model_cfg: dict[str, Any]
    device: str
    autocast_dtype: torch.dtype | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    label_loss: LabelLoss | None

    @property
    def model(self) -> torch.nn.Module:
        return self.encoder.model

    def state_dict(self) -> dict[str, Any]:
        """The weights and optimizer state a checkpoint keeps."""
        label_loss = self.label_loss
        return {
            "model": self.model.state_dict(),
            "label_head": label_loss.head.state_dict() if label_loss is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        """Restore what :meth:`state_dict` kept, from the checkpoint at ``path``.

        Raises:
            TrainingError: the run has auxiliary classifiers and the checkpoint has none.
        """
        self.model.load_state_dict(state["model"])
        if self.label_loss is not None:
            if not state.get("label_head"):
                raise TrainingError(
                    f"checkpoint {path} was written without the auxiliary label loss; "
                    "resume it with the settings it was started with"
                )
            self.label_loss.head.load_state_dict(state["label_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def build_trainee(config: TrainConfig) -> Trainee:
    """Load the model ``config`` names in fp32 and build what trains it.

    Raises:
        ModelLoadError: the model or its starting weights cannot be loaded.
        TrainingError: open_clip has no config to export it with, or fp16 without CUDA.
    """
    import torch

    from clipsearch.models.identity import RANDOM_WEIGHTS
    from clipsearch.models.loading import load_encoder
    from clipsearch.models.runtime import pick_device

    device = pick_device(config.device)
    name, pretrained = model_source(config)
    encoder = load_encoder(name, pretrained, device=device, precision="fp32")
    model_cfg = model_config(name, encoder.model)
    if config.lock_image:
        if pretrained == RANDOM_WEIGHTS:
            raise TrainingError(
                f"lock_image freezes the image tower of {config.model}, which has random "
                "weights here; start from trained weights (a local-dir: model or a tag)"
            )
        encoder.model.lock_image_tower()
    dtype = autocast_dtype(config.precision, device)
    groups = param_groups(encoder.model, config.weight_decay)
    label_loss = None
    if config.label_keys:
        torch.manual_seed(config.seed)
        label_loss = LabelLoss(
            config.label_keys,
            [len(config.labels[k]) for k in config.label_keys],
            encoder.dim,
            config.label_weight,
            device,
        )
        groups.append({"params": list(label_loss.head.parameters()), "weight_decay": 0.0})
    return Trainee(
        encoder=encoder,
        model_cfg=model_cfg,
        device=device,
        autocast_dtype=dtype,
        optimizer=build_optimizer(config, groups, device),
        scaler=torch.amp.GradScaler("cuda") if dtype is torch.float16 else None,
        label_loss=label_loss,
    )
