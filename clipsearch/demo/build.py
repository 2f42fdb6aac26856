"""Build, evaluate and showcase the small demo model that ships with clipsearch.

Real CLIP weights need a download; the demo model does not. It is a small CLIP trained from
scratch on the synthetic shapes of :mod:`clipsearch.demo.synth`, so that an offline install can
still show real retrieval::

    python -m clipsearch.demo samples            # writes sample_images/ (150 pictures)
    clipsearch index sample_images --model demo
    clipsearch search "a red circle"

The shipped model is rebuilt in three steps (``--steps N`` instead of ``--minutes`` repeats a
run's exact step count, recorded in its ``metrics.json``)::

    python -m clipsearch.demo build --out build/demo-base
    python -m clipsearch.demo finetune --base build/demo-base --minutes 18
    python -m clipsearch.demo bilingual --minutes 36  # Korean queries (clipsearch.demo.bilingual)
    python -m clipsearch.demo eval                   # recall of the shipped model

``finetune`` continues a built model on captions that stress the style, re-measures the
gallery and retrains the style head (``style-head`` does that alone); run it once, on the
output of ``build``.

``build`` generates training pictures on the fly with fixed seeds
(:class:`clipsearch.demo.stream.SynthStream`), trains the ``clipsearch-demo`` architecture
(``clipsearch/models/clipsearch-demo.json``) with
:func:`clipsearch.training.contrastive.train_clip`, measures it on a gallery of freshly generated
pictures (another seed) with :func:`clipsearch.demo.gallery.evaluate_gallery`, and writes
``clipsearch/models/demo/``: ``open_clip_config.json``, ``open_clip_model.safetensors`` (fp16)
and ``metrics.json``. The command line is :mod:`clipsearch.demo.cli`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from clipsearch.demo.gallery import GalleryReport
from clipsearch.demo.recipe import ARCHITECTURE, FINETUNE_SEED, TRAIN_SEED, label_classes
from clipsearch.demo.run import (
    RunSettings,
    TrainedRun,
    folder_mb,
    model_mb,
    read_metrics,
    train_and_evaluate,
    versions,
    write_metrics,
)
from clipsearch.demo.stream import SynthStream
from clipsearch.demo.stylehead import build_style_head
from clipsearch.errors import ClipsearchError
from clipsearch.models.identity import CONFIG_NAME, DEMO_DIR, WEIGHTS_NAME, local_dir_name
from clipsearch.store.fileio import atomic_write


@dataclass(frozen=True)
class BuildReport:
    """What :func:`build` or :func:`finetune` produced.

    Attributes:
        output_dir: the model folder.
        steps: training steps.
        train_minutes: wall-clock minutes of training, evaluation included.
        size_mb: size of the model folder in MB.
        gallery: recall on freshly drawn pictures.
        metrics_path: the ``metrics.json`` written.
    """

    output_dir: Path
    steps: int
    train_minutes: float
    size_mb: float
    gallery: GalleryReport
    metrics_path: Path


def build(
    out: str | Path = DEMO_DIR,
    *,
    minutes: float = 65.0,
    steps: int | None = None,
    work_dir: str | Path = "build/demo-train",
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = TRAIN_SEED,
    threads: int | None = None,
    precision: str = "bf16",
    file_like: float = 0.3,
    label_loss: float = 1.0,
    label_facts: Sequence[str] = ("style", "position"),
    resume: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Train the demo model from scratch on synthetic pictures and write it to ``out``.

    Args:
        out: the model folder to write (``open_clip_config.json``, fp16
            ``open_clip_model.safetensors``, ``metrics.json``).
        minutes: wall-clock training budget when ``steps`` is None: the learning-rate
            schedule follows the clock, so the run ends annealed however busy the machine is;
            at most twice the steps :func:`clipsearch.demo.run.calibrate_steps` expects are run.
        steps: exact number of steps on a pure step schedule, to repeat a build exactly.
        work_dir: where checkpoints go.
        batch_size: pairs per step.
        lr: peak learning rate.
        seed: training seed.
        threads: torch threads for training; None leaves torch's setting.
        precision: ``bf16`` (autocast, faster on recent CPUs) or ``fp32``.
        file_like: share of the pictures drawn at twice the input size and saved as JPEG
            before being resized, as the gallery's and the style head's are.
        label_loss: weight of the auxiliary classification losses on the picture embedding
            (see ``TrainConfig.labels``); 0 trains on captions alone.
        label_facts: the picture facts those losses classify (see
            :data:`clipsearch.demo.recipe.LABEL_CLASSES`).
        resume: continue from the newest checkpoint in ``work_dir``.
        progress: show a progress bar.

    Raises:
        ClipsearchError: an unknown label fact.
    """
    settings = RunSettings(
        minutes=minutes,
        steps=steps,
        work_dir=Path(work_dir),
        batch_size=batch_size,
        lr=lr,
        warmup_steps=100,
        seed=seed,
        threads=threads,
        precision=precision,
        labels=label_classes(label_facts),
        label_loss=label_loss,
        resume=resume,
        progress=progress,
    )
    out = Path(out)
    stream = SynthStream(batch_size=batch_size, file_like=file_like)
    run = train_and_evaluate(settings, out, ARCHITECTURE, stream)
    path = write_metrics(out, _built_metrics(run, settings, stream, out))
    return _report(run, out, path)


def _built_metrics(
    run: TrainedRun, settings: RunSettings, stream: SynthStream, out: Path
) -> dict[str, Any]:
    """The ``metrics.json`` of a model built from scratch."""
    train = run.record()
    train["label_facts"] = list(run.config.labels)
    train["stream"] = asdict(stream)
    c = run.config
    rebuild = (
        f"python -m clipsearch.demo build --steps {run.result.steps} --seed {c.seed} "
        f"--batch-size {c.batch_size} --lr {c.lr} --file-like {stream.file_like} "
        f"--label-loss {settings.label_loss} --label-facts {','.join(settings.labels)} "
        f"--threads {run.threads}"
    )
    return {
        "architecture": ARCHITECTURE,
        "train": train,
        "minutes_total": round(run.minutes_taken, 2),
        **run.validation(),
        "gallery": run.gallery.to_dict(),
        "versions": versions(),
        "model_mb": model_mb(out),
        "rebuild": rebuild + run.clock_note("build"),
    }


def finetune(
    out: str | Path = DEMO_DIR,
    *,
    base: str | Path = DEMO_DIR,
    minutes: float = 15.0,
    steps: int | None = None,
    work_dir: str | Path = "build/demo-finetune",
    batch_size: int = 64,
    lr: float = 3e-4,
    warmup_steps: int = 100,
    seed: int = FINETUNE_SEED,
    threads: int | None = None,
    precision: str = "bf16",
    style_rate: float = 0.85,
    style_groups: float = 0.5,
    style_only: float = 0.35,
    file_like: float = 0.3,
    label_loss: float = 1.0,
    label_facts: Sequence[str] = ("style", "position"),
    image_size: int | None = None,
    style_head: bool = True,
    resume: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Fine-tune a demo model made by :func:`build` so that its picture embeddings tell the
    styles apart, and write it to ``out``.

    Training continues from ``base`` at a lower learning rate on a
    :class:`~clipsearch.demo.stream.SynthStream` whose captions state the style far more often,
    some of them the style alone, and whose batches hold style groups (the same scene in several
    styles), so that style becomes a hard negative. The gallery is measured again,
    ``metrics.json`` keeps the base's record and gains a ``finetune`` one, and unless
    ``style_head`` is False the style head is trained again on the new weights (see
    :func:`clipsearch.demo.stylehead.build_style_head`): a head fits only its own weights.

    Args:
        out: the model folder to write; may be ``base`` itself.
        base: the model folder to start from, as :func:`build` wrote it (not fine-tuned yet).
        minutes, steps, work_dir, batch_size, lr, seed, threads, precision, file_like,
            label_loss, label_facts, resume, progress: as for :func:`build`.
        warmup_steps: steps of linear warmup.
        style_rate: how often captions outside style groups state the style.
        style_groups: share of each batch's groups that are style groups.
        style_only: share of the other pairs captioned with the style alone.
        image_size: fine-tune at this input size instead of the base's (see
            :func:`resize_input`); fine detail such as pixel art's blocks survives better.
        style_head: train and save the style head afterwards.

    Raises:
        ClipsearchError: an unknown label fact; ``base`` holds no model, or one that was
            fine-tuned already.
    """
    settings = RunSettings(
        minutes=minutes,
        steps=steps,
        work_dir=Path(work_dir),
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup_steps,
        seed=seed,
        threads=threads,
        precision=precision,
        labels=label_classes(label_facts),
        label_loss=label_loss,
        resume=resume,
        progress=progress,
    )
    stream = SynthStream(
        batch_size=batch_size,
        style_rate=style_rate,
        style_groups=style_groups,
        style_only=style_only,
        file_like=file_like,
    )
    return _finetune(settings, stream, Path(base).resolve(), Path(out), image_size, style_head)


def _finetune(
    settings: RunSettings,
    stream: SynthStream,
    base: Path,
    out: Path,
    image_size: int | None,
    style_head: bool,
) -> BuildReport:
    """:func:`finetune` once its arguments are checked and gathered."""
    from clipsearch.models.identity import file_sha256

    base_metrics = _finetunable(base)
    base_sha = file_sha256(base / WEIGHTS_NAME)
    size = input_size(base)
    if image_size is not None and image_size != size:
        base = resize_input(base, settings.work_dir / f"base-{image_size}px", image_size)
        size = image_size
    stream = replace(stream, image_size=size)
    run = train_and_evaluate(settings, out, local_dir_name(base), stream)
    path = write_metrics(out, _finetuned_metrics(run, settings, stream, base_metrics, base_sha))
    if style_head:
        build_style_head(out)
    return _report(run, out, path)


def _finetuned_metrics(
    run: TrainedRun,
    settings: RunSettings,
    stream: SynthStream,
    base_metrics: dict[str, Any],
    base_sha: str,
) -> dict[str, Any]:
    """The ``metrics.json`` of a fine-tuned model: the base's record, the new gallery and a
    ``finetune`` record; the base's style head record is dropped, as its head does not fit."""
    c = run.config
    command = (
        f"python -m clipsearch.demo finetune --steps {run.result.steps} --seed {c.seed} "
        f"--batch-size {c.batch_size} --lr {c.lr} --warmup {settings.warmup_steps} "
        f"--style-rate {stream.style_rate} --style-groups {stream.style_groups} "
        f"--style-only {stream.style_only} --file-like {stream.file_like} "
        f"--label-loss {settings.label_loss} --label-facts {','.join(settings.labels)} "
        f"--image-size {stream.image_size} --threads {run.threads}"
    )
    record = {
        "base_sha256": base_sha,
        **run.record(),
        "warmup_steps": c.warmup_steps,
        "minutes_total": round(run.minutes_taken, 2),
        "stream": asdict(stream),
        **run.validation(),
        "gallery_before": base_metrics.get("gallery"),
        "command": command,
    }
    base_rebuild = str(base_metrics.get("rebuild", "python -m clipsearch.demo build"))
    metrics = {
        **base_metrics,
        "gallery": run.gallery.to_dict(),
        "model_mb": model_mb(Path(run.config.output_dir)),
        "finetune": record,
        "versions": versions(),
        "rebuild": f"{base_rebuild}; then {command}" + run.clock_note("fine-tune"),
    }
    metrics.pop("style_head", None)
    return metrics


def _finetunable(base: Path) -> dict[str, Any]:
    """The record of the built, not yet fine-tuned, model in ``base``.

    Raises:
        ClipsearchError: ``base`` holds no model, or one that was fine-tuned already.
    """
    if not (base / WEIGHTS_NAME).is_file():
        raise ClipsearchError(
            f"no demo model in {base}; build one with `python -m clipsearch.demo build`"
        )
    base_metrics = read_metrics(base)
    if "finetune" in base_metrics:
        raise ClipsearchError(
            f"the model in {base} was fine-tuned already; fine-tune a model fresh from "
            "`python -m clipsearch.demo build` (pass it as --base)"
        )
    return base_metrics


def _report(run: TrainedRun, out: Path, metrics_path: Path) -> BuildReport:
    return BuildReport(
        out, run.result.steps, run.minutes_taken, folder_mb(out), run.gallery, metrics_path
    )


def input_size(folder: Path) -> int:
    """The input size of the demo model in ``folder``, as its config states it."""
    cfg = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    return int(cfg["model_cfg"]["vision_cfg"]["image_size"])


def resize_input(base: str | Path, out: str | Path, image_size: int) -> Path:
    """Copy the demo model in ``base`` to ``out`` with another input size: the ViT's grid of
    position embeddings is interpolated (bicubic) to the new number of patches and the config
    and preprocessing say the new size; every other weight is kept. The copy needs fine-tuning
    at its new size before it is any good (:func:`finetune` does this with ``image_size``).

    Returns:
        ``out``, a folder loadable as ``local-dir:<out>``.

    Raises:
        ClipsearchError: ``image_size`` is not a positive multiple of the patch size.
    """
    import torch
    from safetensors.torch import load_file, save

    base, out = Path(base), Path(out)
    cfg = json.loads((base / CONFIG_NAME).read_text(encoding="utf-8"))
    vision = cfg["model_cfg"]["vision_cfg"]
    patch = int(vision["patch_size"])
    if image_size < patch or image_size % patch:
        raise ClipsearchError(
            f"image size {image_size} is not a positive multiple of the patch size {patch}"
        )
    state = {k: v.float() for k, v in load_file(base / WEIGHTS_NAME).items()}
    pos = state["visual.positional_embedding"]  # (1 + g*g, width): class token, then the grid
    old, new = int(vision["image_size"]) // patch, image_size // patch
    grid = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic", antialias=True)
    state["visual.positional_embedding"] = torch.cat(
        [pos[:1], grid.permute(0, 2, 3, 1).reshape(new * new, -1)]
    ).contiguous()
    vision["image_size"] = image_size
    cfg["preprocess_cfg"]["size"] = [image_size, image_size]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_NAME, save(state))
    atomic_write(out / CONFIG_NAME, (json.dumps(cfg, indent=2) + "\n").encode())
    if (base / "metrics.json").is_file():
        atomic_write(out / "metrics.json", (base / "metrics.json").read_bytes())
    return out


def widen_context(base: str | Path, out: str | Path, context_length: int, seed: int = 0) -> Path:
    """Copy the demo model in ``base`` to ``out`` with a longer text context.

    The text tower's position embeddings gain rows for the new positions, drawn as open_clip
    initializes them (normal, std 0.01, from ``seed``): a causal text tower read at the end of
    the text never trained the rows past its longest caption either, so the new ones start as
    those did. The learned rows and every other weight are kept, so a text that fits the old
    context embeds exactly as before; the config says the new length (the tokenizer and the
    causal mask follow it). ``metrics.json`` is copied along.

    Returns:
        ``out``, a folder loadable as ``local-dir:<out>``.

    Raises:
        ClipsearchError: ``context_length`` is shorter than the model's.
    """
    import torch
    from safetensors.torch import load_file, save

    base, out = Path(base), Path(out)
    cfg = json.loads((base / CONFIG_NAME).read_text(encoding="utf-8"))
    text = cfg["model_cfg"]["text_cfg"]
    old = int(text["context_length"])
    if context_length < old:
        raise ClipsearchError(
            f"text context {context_length} is shorter than the model's {old}; pass at least {old}"
        )
    state = {k: v.float() for k, v in load_file(base / WEIGHTS_NAME).items()}
    pos = state["positional_embedding"]  # (context, width)
    generator = torch.Generator().manual_seed(seed)
    extra = torch.randn(context_length - old, pos.shape[1], generator=generator) * 0.01
    state["positional_embedding"] = torch.cat([pos, extra]).contiguous()
    text["context_length"] = context_length
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_NAME, save(state))
    atomic_write(out / CONFIG_NAME, (json.dumps(cfg, indent=2) + "\n").encode())
    if (base / "metrics.json").is_file():
        atomic_write(out / "metrics.json", (base / "metrics.json").read_bytes())
    return out
