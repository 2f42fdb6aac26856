"""The step a build and a fine-tune of the demo model share: set the clock, train on a
synthetic stream, measure the result on a fresh gallery, and record it in ``metrics.json``."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.demo.gallery import GalleryReport, evaluate_gallery
from clipsearch.demo.recipe import ARCHITECTURE, IMAGE_SIZE
from clipsearch.demo.stream import validation_pairs
from clipsearch.models.identity import local_dir_name
from clipsearch.models.loading import RANDOM_INIT_NOTICE, dropping_log, register_model_configs
from clipsearch.store.fileio import atomic_write
from clipsearch.threads import TORCH, limit_threads
from clipsearch.training.config import TrainConfig
from clipsearch.training.contrastive import train_clip
from clipsearch.training.data import CaptionedImage, PairStream
from clipsearch.training.evaluation import RetrievalMetrics
from clipsearch.training.loop import TrainResult

CLOCK_NOTE = (
    "  (this {what} ran on a clock-driven schedule; --steps repeats it on a step schedule, "
    "which gives close but not identical weights)"
)


@dataclass(frozen=True)
class RunSettings:
    """How to train: what :func:`clipsearch.demo.build.build` and
    :func:`clipsearch.demo.build.finetune` both take (see there for each field)."""

    minutes: float
    steps: int | None
    work_dir: Path
    batch_size: int
    lr: float
    warmup_steps: int
    seed: int
    threads: int | None
    precision: str
    labels: dict[str, tuple[Any, ...]]
    label_loss: float
    resume: bool
    progress: bool
    lock_image: bool = False


@dataclass(frozen=True)
class TrainedRun:
    """A finished train-then-evaluate run.

    Attributes:
        config: the training configuration it ran with (its steps and time limit included).
        result: what training reports.
        gallery: recall of the written model on a fresh gallery.
        minutes_taken: wall-clock minutes of training and evaluation.
        threads: the torch threads it trained with.
    """

    config: TrainConfig
    result: TrainResult
    gallery: GalleryReport
    minutes_taken: float
    threads: int

    @property
    def time_limit(self) -> float | None:
        return self.config.time_limit_minutes

    def record(self) -> dict[str, Any]:
        """The fields of ``metrics.json`` that every run writes about its training."""
        r = self.result
        return {
            "steps": r.steps,
            "batch_size": self.config.batch_size,
            "lr": self.config.lr,
            "seed": self.config.seed,
            "precision": self.config.precision,
            "threads": self.threads,
            "samples_seen": r.samples_seen,
            "final_loss": round(r.final_loss, 4),
            "label_loss": self.config.label_weight,
            "label_train_accuracy": dict(r.label_accuracy),
            "train_seconds": round(r.train_seconds, 1),
            "time_limit_minutes": self.time_limit,
        }

    def validation(self) -> dict[str, Any]:
        """The last validation and its history, as ``metrics.json`` records them."""
        r = self.result
        return {
            "validation": r.metrics.to_dict() if r.metrics else None,
            "validation_history": [(s, m.to_dict()) for s, m in r.history],
        }

    def clock_note(self, what: str) -> str:
        """What to add to a rebuild command when this run followed the clock."""
        return CLOCK_NOTE.format(what=what) if self.time_limit else ""


def train_and_evaluate(
    settings: RunSettings,
    out: Path,
    model: str,
    stream: PairStream,
    val_data: list[CaptionedImage] | None = None,
) -> TrainedRun:
    """Train ``model`` (an architecture name or ``local-dir:``) on ``stream`` into ``out``,
    following the clock unless ``settings.steps`` is set, then measure the written model;
    ``val_data`` replaces the usual 500 English validation pairs."""
    from clipsearch.models.loading import load_encoder

    config = _config(settings, out, model)
    started = time.monotonic()
    result = train_clip(
        config,
        stream,
        val_data=validation_pairs(500) if val_data is None else val_data,
        progress=settings.progress,
        on_eval=None if settings.progress else _print_eval,
    )
    encoder = load_encoder(local_dir_name(Path(config.output_dir).resolve()), device="cpu")
    report = evaluate_gallery(encoder)
    minutes_taken = (time.monotonic() - started) / 60
    return TrainedRun(config, result, report, minutes_taken, settings.threads or _torch_threads())


def _config(s: RunSettings, out: Path, model: str) -> TrainConfig:
    steps, time_limit = s.steps, None
    if steps is None:
        # The learning-rate schedule follows the clock, so the run ends annealed however busy
        # the machine is; the step count is only a ceiling.
        steps = 2 * calibrate_steps(s.minutes, s.batch_size, s.threads, s.precision)
        time_limit = s.minutes
    return TrainConfig(
        output_dir=out,
        model=model,
        steps=steps,
        batch_size=s.batch_size,
        lr=s.lr,
        weight_decay=0.1,
        warmup_steps=min(s.warmup_steps, steps // 10),
        precision=s.precision,
        seed=s.seed,
        checkpoint_every=250,
        checkpoint_dir=s.work_dir / "checkpoints",
        resume=s.resume,
        eval_every=300,
        augment=False,  # the stream renders its own variety; jitter would only blur colours
        save_dtype="fp16",
        num_threads=s.threads,
        time_limit_minutes=time_limit,
        labels=s.labels if s.label_loss else {},
        label_weight=s.label_loss,
        lock_image=s.lock_image,
    )


def _print_eval(step: int, metrics: RetrievalMetrics) -> None:
    print(f"step {step}: {metrics}", file=sys.stderr, flush=True)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def calibrate_steps(
    minutes: float, batch_size: int = 64, threads: int | None = None, precision: str = "bf16"
) -> int:
    """How many training steps of the demo model fit in ``minutes`` where this runs.

    Times a few optimizer steps on random inputs and allows a fifth of the time for drawing
    pictures and validation.

    Args:
        minutes: the training budget.
        batch_size: pairs per step.
        threads: torch threads to time with; None leaves torch's setting.
        precision: ``bf16`` to time with bf16 autocast, as training does; else fp32.
    """
    import open_clip
    import torch

    register_model_configs()
    with limit_threads(threads or None, TORCH), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with dropping_log(RANDOM_INIT_NOTICE):  # random weights are the point here
            model = open_clip.create_model(ARCHITECTURE)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        pixels = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE)
        tokens = torch.randint(1, 1000, (batch_size, model.context_length))
        times = []
        for _ in range(4):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                img, txt, scale = model(pixels, tokens)
            loss = (scale * img.float() @ txt.float().T).logsumexp(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
    per_step = float(np.median(times[1:]))
    return max(50, int(minutes * 60 * 0.8 / per_step))


def versions() -> dict[str, str]:
    """The versions a run's weights depend on."""
    import open_clip
    import torch

    return {
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
    }


def model_mb(folder: Path) -> float:
    """The size of the model files in ``folder`` (config and weights), in MB."""
    files = [p for p in folder.iterdir() if p.suffix in (".json", ".safetensors")]
    return round(sum(p.stat().st_size for p in files) / 1e6, 2)


def folder_mb(folder: Path) -> float:
    """The size of everything under ``folder``, in MB."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def read_metrics(folder: Path) -> dict[str, Any]:
    """``folder/metrics.json``, or an empty record when there is none."""
    path = folder / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_metrics(folder: Path, metrics: dict[str, Any]) -> Path:
    """Replace ``folder/metrics.json`` with ``metrics`` and return its path."""
    path = folder / "metrics.json"
    atomic_write(path, (json.dumps(metrics, indent=2) + "\n").encode("utf-8"))
    return path
