"""The settings of one training run and their validation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clipsearch.errors import TrainingError
from clipsearch.models.identity import PRECISIONS

SAVE_DTYPES = ("fp32", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run.

    Attributes:
        output_dir: where the trained model is written (``open_clip_config.json`` and
            ``open_clip_model.safetensors``).
        model: an open_clip architecture name (``clipsearch-demo``, ``ViT-B-32``), or
            ``local-dir:/path`` / ``hf-hub:org/repo`` to start from those weights.
        pretrained: weights for a built-in architecture: a tag, a checkpoint file, or None to
            start from random weights.
        steps: optimizer steps in all, counting those done before a resume.
        batch_size: pairs per step; contrastive learning likes large batches.
        lr: peak learning rate, reached after ``warmup_steps``.
        weight_decay: AdamW weight decay (not applied to gains, biases and the temperature).
        warmup_steps: steps of linear warmup from zero.
        final_lr_fraction: the cosine schedule ends at ``lr * final_lr_fraction``.
        betas: AdamW betas.
        eps: AdamW epsilon.
        grad_clip_norm: clip the gradient to this global norm; None leaves it.
        precision: ``auto`` (bf16 or fp16 autocast on CUDA, fp32 elsewhere), ``fp32``,
            ``bf16`` (autocast; on CPU only where it pays) or ``fp16`` (CUDA only).
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        seed: seeds weight init, data order, augmentation and stream data.
        checkpoint_every: save a resumable checkpoint every this many steps; 0 only at the end.
        keep_checkpoints: how many of the newest checkpoints to keep.
        checkpoint_dir: where checkpoints go; default ``output_dir/checkpoints``.
        resume: continue from the newest checkpoint in ``checkpoint_dir``.
        eval_every: measure validation recall every this many steps; 0 only at the end.
        val_size: validation pairs: taken from a stream with another seed, or held out of a
            dataset (at most a tenth of it; datasets under 50 pairs are not split and are
            evaluated on the training pairs).
        augment: mild photometric augmentation (brightness, contrast, saturation, blur). No
            flips or crops, which would make captions such as "on the left" false.
        save_dtype: ``fp32`` or ``fp16`` for the exported weights (fp16 halves the file).
        time_limit_minutes: a wall-clock budget for the training loop (resumed runs count the
            time before the checkpoint). The cosine schedule then follows whichever of steps and
            time is further along, so a run cut short by the clock still ends with a fully
            decayed learning rate; it stops at the limit with a checkpoint and an exported
            model. None runs all ``steps`` on a schedule of steps alone, which repeats exactly.
        num_threads: torch intra-op threads during this run only; None leaves torch's setting.
        labels: ``image_facts`` keys whose values are class labels of each picture, each with
            its classes in a fixed order, such as ``{"style": ("photo", "sketch")}``. With
            ``label_weight`` above zero, a linear classifier per key on the image embedding is
            trained alongside the model and their cross-entropies, times ``label_weight``, are
            added to the contrastive loss, so that the embedding keeps those attributes linearly
            separable even where captions rarely state them. The classifiers are a training aid
            and are not exported. Pictures without a key (or with a value outside its classes)
            do not count towards that key's loss.
        label_weight: the weight of each auxiliary loss; 0 turns them off.
        lock_image: freeze the image tower and train only the text tower and the temperature
            (locked-image text tuning, LiT): the image embeddings stay exactly those of the
            starting weights, so vectors and heads made from them stay valid, and each step
            is cheaper (the image forward runs without gradients). Needs starting weights.
    """

    output_dir: Path | str
    model: str = "clipsearch-demo"
    pretrained: str | None = None
    steps: int = 1000
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    final_lr_fraction: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip_norm: float | None = 1.0
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    checkpoint_dir: Path | str | None = None
    resume: bool = False
    eval_every: int = 0
    val_size: int = 500
    augment: bool = True
    save_dtype: str = "fp32"
    time_limit_minutes: float | None = None
    num_threads: int | None = None
    labels: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    label_weight: float = 0.0
    lock_image: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.steps < 1:
            problems.append(f"steps must be at least 1, not {self.steps}")
        if self.batch_size < 2:
            problems.append(
                f"batch_size must be at least 2 for a contrastive loss, not {self.batch_size}"
            )
        if self.lr <= 0:
            problems.append(f"lr must be positive, not {self.lr}")
        if self.warmup_steps < 0 or self.checkpoint_every < 0 or self.eval_every < 0:
            problems.append("warmup_steps, checkpoint_every and eval_every must be >= 0")
        if self.keep_checkpoints < 1:
            problems.append(f"keep_checkpoints must be at least 1, not {self.keep_checkpoints}")
        if self.precision not in PRECISIONS or self.precision == "int8":
            problems.append(
                f"precision must be one of {', '.join(p for p in PRECISIONS if p != 'int8')}, "
                f"not {self.precision!r}"
            )
        if self.save_dtype not in SAVE_DTYPES:
            problems.append(f"save_dtype must be fp32 or fp16, not {self.save_dtype!r}")
        if self.val_size < 0:
            problems.append(f"val_size must be >= 0, not {self.val_size}")
        if self.label_weight < 0:
            problems.append(f"label_weight must be >= 0, not {self.label_weight}")
        if self.label_weight > 0 and not self.labels:
            problems.append("an auxiliary label loss needs labels (fact key -> classes)")
        if self.lock_image and self.label_weight > 0:
            problems.append(
                "an auxiliary label loss trains the image embedding, which lock_image freezes; "
                "set label_weight to 0"
            )
        for key, classes in self.labels.items():
            if len(set(classes)) < 2:
                problems.append(f"labels[{key!r}] needs at least two distinct classes")
        if problems:
            raise TrainingError("invalid training settings: " + "; ".join(problems))

    @property
    def checkpoints(self) -> Path:
        """The folder that holds the resumable checkpoints."""
        return Path(self.checkpoint_dir or Path(self.output_dir) / "checkpoints")

    @property
    def label_keys(self) -> list[str]:
        """The labelled facts the auxiliary loss trains on; empty when it is off."""
        return list(self.labels) if self.label_weight > 0 else []

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values."""
        out = asdict(self)
        for key in ("output_dir", "checkpoint_dir"):
            out[key] = None if out[key] is None else str(out[key])
        out["betas"] = list(self.betas)
        out["labels"] = {k: list(v) for k, v in self.labels.items()}
        return out
