"""The training loop: batches in, optimizer steps, periodic validation and checkpoints, a
time limit, and the exported model with what the run did."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.errors import TrainingError
from clipsearch.training.batches import Batch, Batcher
from clipsearch.training.checkpoints import Checkpointer, export_model
from clipsearch.training.config import TrainConfig
from clipsearch.training.data import CaptionedImage, PairDataset, PairStream
from clipsearch.training.evaluation import RetrievalMetrics, evaluate_pairs
from clipsearch.training.loss import MAX_LOG_SCALE, contrastive_loss
from clipsearch.training.optim import set_lr
from clipsearch.training.setup import Trainee, build_trainee

if TYPE_CHECKING:
    from tqdm.auto import tqdm

log = logging.getLogger(__name__)

LOSS_WINDOW = 20
"""Steps the progress bar's running loss averages over."""
ACCURACY_WINDOW = 50
"""Steps the auxiliary classifiers' reported accuracy averages over."""

OnEval = Callable[[int, RetrievalMetrics], None]


@dataclass(frozen=True)
class TrainResult:
    """What a training run did.

    Attributes:
        output_dir: the folder with the exported model; load it as ``local-dir:<output_dir>``.
        steps: optimizer steps done in all, including any before a resume.
        start_step: the step this run started from (0, or the checkpoint's step).
        losses: the training loss of every step, including those before a resume.
        metrics: validation recall at the end; None when there was nothing to validate on.
        history: (step, metrics) for each periodic validation, the final one included.
        seconds: wall-clock time of this run.
        samples_seen: pairs trained on in all.
        skipped_images: distinct training pictures that could not be read and were left out.
        checkpoint: the newest checkpoint written.
        stopped_early: the time limit ended the run before ``steps``.
        train_seconds: time spent in the training loop, including any before a resume.
        val_source: what the validation pairs were.
        label_accuracy: per labelled fact, the auxiliary classifier's accuracy on the training
            batches of this run's last 50 steps (see ``TrainConfig.labels``); empty without.
    """

    output_dir: Path
    steps: int
    start_step: int
    losses: tuple[float, ...]
    metrics: RetrievalMetrics | None
    history: tuple[tuple[int, RetrievalMetrics], ...]
    seconds: float
    samples_seen: int
    skipped_images: int
    checkpoint: Path | None
    stopped_early: bool
    val_source: str
    train_seconds: float = 0.0
    label_accuracy: Mapping[str, float] = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 20 steps (or fewer)."""
        tail = self.losses[-LOSS_WINDOW:]
        return float(sum(tail) / len(tail)) if tail else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """The summary that ``clipsearch train --json`` prints."""
        return {
            "output_dir": str(self.output_dir),
            "steps": self.steps,
            "final_loss": self.final_loss,
            "seconds": round(self.seconds, 1),
            "skipped_images": self.skipped_images,
            "validation": self.metrics.to_dict() if self.metrics else None,
        }


@dataclass
class RunState:
    """What a run has done so far: what a checkpoint keeps besides the weights."""

    step: int = 0
    cursor: int = 0
    losses: list[float] = field(default_factory=list)
    bad_images: list[str] = field(default_factory=list)
    history: list[tuple[int, RetrievalMetrics]] = field(default_factory=list)
    train_seconds: float = 0.0

    @classmethod
    def from_checkpoint(cls, state: Mapping[str, Any]) -> RunState:
        return cls(
            step=int(state["step"]),
            cursor=int(state["cursor"]),
            losses=[float(x) for x in state["losses"]],
            bad_images=[str(p) for p in state.get("bad_images", [])],
            history=[(int(s), RetrievalMetrics(**m)) for s, m in state.get("history", [])],
            train_seconds=float(state.get("train_seconds", 0.0)),
        )


@dataclass
class Validator:
    """Measures retrieval recall on the validation pairs and records it in ``history``."""

    trainee: Trainee
    items: list[CaptionedImage]
    history: list[tuple[int, RetrievalMetrics]]
    on_eval: OnEval | None

    def __call__(self, step: int) -> RetrievalMetrics | None:
        """The recall after ``step``; None without validation pairs. Leaves the model in
        training mode."""
        if not self.items:
            return None
        model = self.trainee.model
        model.eval()
        try:
            metrics = evaluate_pairs(self.trainee.encoder, self.items)
        finally:
            model.train()
        self.history.append((step, metrics))
        if self.on_eval is not None:
            self.on_eval(step, metrics)
        return metrics


def optimizer_step(
    trainee: Trainee, batch: Batch, config: TrainConfig, step: int
) -> tuple[float, dict[str, float]]:
    """One forward and backward pass and optimizer update on ``batch``.

    Returns:
        The loss, and the auxiliary classifiers' accuracy on the batch.

    Raises:
        TrainingError: the loss is not finite.
    """
    import torch

    model, device, dtype = trainee.model, trainee.device, trainee.autocast_dtype
    pixels, tokens = batch.pixels.to(device), batch.tokens.to(device)
    with torch.autocast(
        device_type="cuda" if device == "cuda" else "cpu",
        dtype=dtype or torch.float32,
        enabled=dtype is not None,
    ):
        with torch.set_grad_enabled(not config.lock_image):
            image_features = model.encode_image(pixels, normalize=True)
        text_features = model.encode_text(tokens, normalize=True)
    loss = contrastive_loss(image_features, text_features, model.logit_scale.exp(), batch.matches)
    accuracy: dict[str, float] = {}
    if trainee.label_loss is not None and batch.labels is not None:
        loss, accuracy = trainee.label_loss.add_to(loss, image_features, batch.labels.to(device))
    if not torch.isfinite(loss):
        raise TrainingError(
            f"the loss became {loss.item()} at step {step}; lower lr (now {config.lr}) "
            "or use precision fp32"
        )
    _backward_and_update(trainee, loss, config.grad_clip_norm)
    return float(loss.item()), accuracy


def _backward_and_update(trainee: Trainee, loss: Any, grad_clip_norm: float | None) -> None:
    import torch

    model, optimizer, scaler = trainee.model, trainee.optimizer, trainee.scaler
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOG_SCALE)


class TrainingRun:
    """One run of :func:`run_training`: the loop and the state it carries between steps."""

    def __init__(
        self,
        config: TrainConfig,
        trainee: Trainee,
        batcher: Batcher,
        run_state: RunState,
        validator: Validator,
        checkpointer: Checkpointer,
    ):
        self.config = config
        self.trainee = trainee
        self.batcher = batcher
        self.run_state = run_state
        self.validator = validator
        self.checkpointer = checkpointer
        self.start_step = run_state.step
        self.label_accuracy: dict[str, list[float]] = {k: [] for k in config.label_keys}
        self._train_seconds_before = run_state.train_seconds
        self._loop_started = time.monotonic()

    def elapsed(self) -> float:
        """Seconds in the training loop, those before a resume included."""
        return self._train_seconds_before + time.monotonic() - self._loop_started

    def checkpoint(self) -> Path:
        """Save a checkpoint of the current step."""
        p = self.run_state
        state = {
            "step": p.step,
            "cursor": self.batcher.cursor,
            **self.trainee.state_dict(),
            "train_seconds": self.elapsed(),
            "losses": list(p.losses),
            "bad_images": sorted(self.batcher.bad),
            "history": [(s, m.to_dict()) for s, m in p.history],
            "config": self.config.to_dict(),
        }
        return self.checkpointer.save(p.step, state)

    def train(self, bar: tqdm) -> bool:
        """Step until ``config.steps`` or the time limit; True when the time limit ended it."""
        config, p = self.config, self.run_state
        limit = config.time_limit_minutes * 60 if config.time_limit_minutes else None
        self.trainee.model.train()
        while p.step < config.steps:
            lr = set_lr(self.trainee.optimizer, config, p.step, self.elapsed())
            batch = self.batcher.next_batch(p.step)
            loss, accuracy = optimizer_step(self.trainee, batch, config, p.step)
            p.step += 1
            p.losses.append(loss)
            for key, hits in accuracy.items():
                self.label_accuracy[key].append(hits)
            bar.update(1)
            bar.set_postfix(self._postfix(lr))
            self._after_step(bar)
            if limit is not None and self.elapsed() >= limit and p.step < config.steps:
                log.warning(
                    "time limit of %.1f minutes reached at step %d of %d",
                    config.time_limit_minutes,
                    p.step,
                    config.steps,
                )
                return True
        return False

    def _postfix(self, lr: float) -> dict[str, str]:
        postfix = {
            "loss": f"{np.mean(self.run_state.losses[-LOSS_WINDOW:]):.3f}",
            "lr": f"{lr:.2e}",
            "T": f"{self.trainee.model.logit_scale.exp().item():.1f}",
        }
        for key, seen in self.label_accuracy.items():
            if seen:
                postfix[key] = f"{np.mean(seen[-ACCURACY_WINDOW:]):.2f}"
        return postfix

    def _after_step(self, bar: tqdm) -> None:
        """Periodic validation (the last step's comes with the end) and checkpoint."""
        step, config = self.run_state.step, self.config
        if config.eval_every and step % config.eval_every == 0 and step < config.steps:
            metrics = self.validator(step)
            if metrics is not None and not bar.disable:
                bar.write(f"step {step}: {metrics}")
        if self.checkpointer.due(step):
            self.checkpoint()

    def finish(self) -> tuple[RetrievalMetrics | None, Path]:
        """Checkpoint the last step unless done, validate, and export the model."""
        step = self.run_state.step
        if step > self.start_step and not self.checkpointer.has(step):
            self.checkpoint()
        self.trainee.model.eval()
        metrics = self.validator(step)
        out = export_model(
            self.trainee.model,
            self.trainee.model_cfg,
            self.config.output_dir,
            save_dtype=self.config.save_dtype,
        )
        return metrics, out


def run_training(
    config: TrainConfig,
    source: PairDataset | PairStream,
    val_items: list[CaptionedImage],
    val_source: str,
    resume: tuple[Path, dict[str, Any]] | None,
    show_progress: bool,
    on_eval: OnEval | None,
) -> TrainResult:
    """Train on ``source`` from scratch or from the checkpoint ``resume`` (path, state) and
    export the model; see :func:`clipsearch.training.contrastive.train_clip`."""
    from tqdm.auto import tqdm

    started = time.monotonic()
    run = _start(config, source, val_items, resume, on_eval)
    bar = tqdm(
        total=config.steps,
        initial=run.start_step,
        disable=not show_progress,
        desc="train",
        unit="step",
    )
    try:
        stopped_early = run.train(bar)
    finally:
        bar.close()
    metrics, out = run.finish()
    p = run.run_state
    return TrainResult(
        output_dir=out,
        steps=p.step,
        start_step=run.start_step,
        losses=tuple(p.losses),
        metrics=metrics,
        history=tuple(p.history),
        seconds=time.monotonic() - started,
        samples_seen=run.batcher.cursor,
        skipped_images=len(run.batcher.bad),
        checkpoint=run.checkpointer.last,
        stopped_early=stopped_early,
        val_source=val_source,
        train_seconds=run.elapsed(),
        label_accuracy={
            k: float(np.mean(v[-ACCURACY_WINDOW:])) for k, v in run.label_accuracy.items() if v
        },
    )


def _start(
    config: TrainConfig,
    source: PairDataset | PairStream,
    val_items: list[CaptionedImage],
    resume: tuple[Path, dict[str, Any]] | None,
    on_eval: OnEval | None,
) -> TrainingRun:
    """Build the model and its training state, restored from ``resume`` when given."""
    trainee = build_trainee(config)
    run_state = RunState()
    checkpointer = Checkpointer(config)
    if resume is not None:
        path, saved = resume
        trainee.load_state_dict(saved, path)
        run_state = RunState.from_checkpoint(saved)
        checkpointer.last = path
        log.info("resuming from %s at step %d", path, run_state.step)
    batcher = Batcher(
        source,
        trainee.encoder.preprocess,
        trainee.encoder.tokenizer,
        batch_size=config.batch_size,
        seed=config.seed,
        augment=config.augment,
        cursor=run_state.cursor,
        labels={k: config.labels[k] for k in config.label_keys},
        bad=run_state.bad_images,
    )
    validator = Validator(trainee, val_items, run_state.history, on_eval)
    return TrainingRun(config, trainee, batcher, run_state, validator, checkpointer)
