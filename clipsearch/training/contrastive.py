"""Contrastive training of open_clip models on (image, caption) pairs: the entry point.

:func:`train_clip` reads the data (:mod:`~clipsearch.training.data`), sets aside validation
pairs, finds the checkpoint to resume from (:mod:`~clipsearch.training.checkpoints`) and runs
the loop (:mod:`~clipsearch.training.loop`) on CLIP's symmetric InfoNCE with shared positives
(:mod:`~clipsearch.training.loss`). The result is a folder that open_clip and
:func:`clipsearch.models.loading.load_encoder` open as ``local-dir:/that/folder``.

The names other code uses are importable from here as well as from their own modules.

Example::

    from clipsearch.training.contrastive import TrainConfig, train_clip

    result = train_clip(TrainConfig(output_dir="models/mine", steps=2000), "photos/")
    print(result.metrics)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipsearch.errors import TrainingError
from clipsearch.models.loading import register_model_configs
from clipsearch.threads import TORCH, limit_threads
from clipsearch.training.checkpoints import (
    CHECKPOINT_GLOB,
    checkpoint_to_resume,
    export_model,
    latest_checkpoint,
)
from clipsearch.training.config import TrainConfig
from clipsearch.training.data import (
    CaptionedImage,
    PairDataset,
    PairStream,
    TrainData,
    load_pairs,
    match_matrix,
    resolve_data,
    split_validation,
)
from clipsearch.training.evaluation import RetrievalMetrics, evaluate_pairs, recall_at_k
from clipsearch.training.loop import OnEval, TrainResult, run_training
from clipsearch.training.loss import contrastive_loss
from clipsearch.training.optim import lr_factor


def train_clip(
    config: TrainConfig,
    data: TrainData,
    *,
    val_data: TrainData | None = None,
    progress: bool = True,
    on_eval: OnEval | None = None,
) -> TrainResult:
    """Train an open_clip model contrastively and export it for ``local-dir:`` loading.

    Args:
        config: the run's settings.
        data: a folder with sidecar ``.txt`` captions, a ``.jsonl``/``.csv`` file, a
            :class:`PairDataset`, a list of :class:`CaptionedImage`, or a stream (a callable
            that takes a seed and yields pairs without end).
        val_data: validation pairs in any of the same forms; None takes them from ``data``
            (see ``TrainConfig.val_size``).
        progress: show a tqdm progress bar with the running loss.
        on_eval: called with (step, metrics) after each validation.

    Returns:
        What the run did, with the final validation recall.

    Raises:
        TrainingError: bad settings or data, nothing to resume from, or a checkpoint that
            belongs to another run.
        ModelLoadError: the model or its starting weights cannot be loaded.
    """
    import torch

    register_model_configs()
    source = resolve_data(data)
    source, val_items, val_source = split_validation(source, val_data, config)
    if isinstance(source, PairDataset) and len(source.items) < 2:
        raise TrainingError(
            f"training data {source.source} has {len(source.items)} usable pair; a contrastive "
            "loss needs at least 2"
        )
    resume: tuple[Path, dict[str, Any]] | None = None
    if config.resume:
        resume = checkpoint_to_resume(config)
    with limit_threads(config.num_threads or None, TORCH), torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return run_training(config, source, val_items, val_source, resume, progress, on_eval)


__all__ = [
    "CHECKPOINT_GLOB",
    "CaptionedImage",
    "PairDataset",
    "PairStream",
    "RetrievalMetrics",
    "TrainConfig",
    "TrainData",
    "TrainResult",
    "TrainingError",
    "contrastive_loss",
    "evaluate_pairs",
    "export_model",
    "latest_checkpoint",
    "lr_factor",
    "load_pairs",
    "match_matrix",
    "recall_at_k",
    "register_model_configs",
    "train_clip",
]
