"""Style labels of the indexed images (the `style` group), and zero-shot `classify`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from clipsearch.cli.options import (
    device_options,
    json_option,
    model_options,
    open_index,
    settings,
)
from clipsearch.cli.output import TqdmProgress, echo_json

if TYPE_CHECKING:
    from clipsearch.index.styles import StyleApplyReport
    from clipsearch.style.head import StyleMetrics


@click.group()
def style() -> None:
    """Style labels (photo, cartoon, sketch, ...) of the indexed images.

    Every indexed image gets a style label and its probability. Until a head is trained, the
    labels come from CLIP zero-shot classification over a label set (change it with
    `style apply --labels`). `style train DIR` learns a head from your own labelled folders,
    DIR/<label>/*.jpg, which decides the labels from then on. Search by label with
    `clipsearch search QUERY --style LABEL`.
    """


@style.command("train")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="Share of each label's images held out for validation.",
)
@click.option(
    "--max-epochs", type=click.IntRange(min=1), default=300, show_default=True, help="At most."
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Stop after this many epochs without a lower validation loss.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of split and weights.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Images per model call while embedding.",
)
@click.option("--no-apply", is_flag=True, help="Save the head without relabelling the index.")
@json_option
@device_options
@click.pass_context
def style_train(
    ctx: click.Context,
    folder: Path,
    val_fraction: float,
    max_epochs: int,
    patience: int,
    seed: int,
    batch_size: int,
    no_apply: bool,
    as_json: bool,
    device: str,
    precision: str,
) -> None:
    """Train a style head on labelled folders: FOLDER/<label>/*.jpg.

    Each sub-folder name is a label. The images are embedded once with the index's model,
    unreadable ones skipped and counted. Prints validation precision, recall and F1 per label
    and a confusion matrix; the head is saved next to the index and relabels it.
    """
    from clipsearch.style.head import TrainOptions

    options = TrainOptions(
        val_fraction=val_fraction, max_epochs=max_epochs, patience=patience, seed=seed
    )
    with open_index(ctx, device=device, precision=precision) as index:
        report = index.styles.train(
            folder,
            options=options,
            apply=not no_apply,
            batch_size=batch_size,
            progress=TqdmProgress(disable=as_json, desc="embedding"),
        )
    if as_json:
        echo_json(report.to_dict())
        return
    _print_metrics(report.metrics)
    for path, reason in report.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    applied = f"; relabelled {report.labelled} indexed images" if not no_apply else ""
    click.echo(f"skipped {len(report.skipped)} files; head saved to {report.head_path}{applied}")


def _print_metrics(m: StyleMetrics) -> None:
    """A style head's validation: accuracy, a per-label table and the confusion matrix."""
    click.echo(
        f"trained on {m.train_size} images, validated on {m.val_size}: accuracy "
        f"{m.accuracy:.3f} (best epoch {m.best_epoch} of {m.epochs})"
    )
    width = max(len(label) for label in m.labels)
    click.echo(f"{'label':{width}}  precision  recall      f1  support")
    for c in m.per_class:
        click.echo(
            f"{c.label:{width}}  {c.precision:9.3f}  {c.recall:6.3f}  {c.f1:6.3f}  {c.support:7d}"
        )
    click.echo("confusion matrix (rows: true label, columns: predicted):")
    cell = max(5, *(len(str(x)) for row in m.confusion for x in row))
    click.echo(f"{'':{width}}  " + " ".join(f"{i:>{cell}}" for i in range(len(m.labels))))
    for i, (label, row) in enumerate(zip(m.labels, m.confusion, strict=True)):
        cells = " ".join(f"{x:>{cell}}" for x in row)
        click.echo(f"{label:{width}}  {cells}   ({i})")


@style.command("apply")
@click.option(
    "--labels",
    metavar="A,B,...",
    help="A new zero-shot label set, comma-separated, stored in the index "
    '(e.g. "photo,sketch,cartoon"). Only without a trained head.',
)
@json_option
@device_options
@click.pass_context
def style_apply(
    ctx: click.Context, labels: str | None, as_json: bool, device: str, precision: str
) -> None:
    """Relabel every indexed image from its stored vector (no image is read again).

    Uses the trained head when there is one, else zero-shot over the index's label set.
    """
    with open_index(ctx, device=device, precision=precision) as index:
        report = index.styles.apply(labels, progress=TqdmProgress(disable=as_json, desc="labels"))
    _print_apply(report, as_json)


@style.command("reset")
@json_option
@device_options
@click.pass_context
def style_reset(ctx: click.Context, as_json: bool, device: str, precision: str) -> None:
    """Delete the trained head and relabel the index with zero-shot labels."""
    with open_index(ctx, device=device, precision=precision) as index:
        report = index.styles.reset()
    _print_apply(report, as_json)


def _print_apply(report: StyleApplyReport, as_json: bool) -> None:
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(
        f"labelled {report.labelled} images by {report.source} ({', '.join(report.labels)}) "
        f"in {report.seconds:.1f}s"
    )


@style.command("stats")
@json_option
@click.pass_context
def style_stats(ctx: click.Context, as_json: bool) -> None:
    """Count the indexed images per style label."""
    with open_index(ctx) as index:
        stats = index.styles.stats()
    if as_json:
        echo_json(stats.to_dict())
        return
    click.echo(f"labels by {stats.source}: {', '.join(stats.labels)}")
    rows = [*stats.counts, *([("(unlabelled)", stats.unlabelled)] if stats.unlabelled else [])]
    width = max([len(label) for label, _ in rows] + [5])
    for label, count in rows:
        click.echo(f"{label:{width}}  {count:8d}")
    click.echo(f"{'total':{width}}  {stats.total:8d}")


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option(
    "--labels",
    required=True,
    metavar="A,B,...",
    help='Comma-separated labels to choose from, e.g. "cat,dog,car".',
)
@model_options
@device_options
@json_option
@click.pass_context
def classify(
    ctx: click.Context,
    image: Path,
    labels: str,
    model: str | None,
    pretrained: str | None,
    device: str,
    precision: str,
    as_json: bool,
) -> None:
    """Zero-shot classify IMAGE among any labels, with softmax probabilities.

    Uses the index's model when the index exists and no --model is given; otherwise the given
    (or default) model.

    \b
        clipsearch classify photo.jpg --labels "cat,dog,car"
    """
    from clipsearch.index.oneshot import classify as classify_with

    s = settings(ctx, model, pretrained)
    predictions = classify_with(
        image,
        labels,
        index=s.index.value,
        model=s.model.value,
        pretrained=s.pretrained.value,
        device=device,
        precision=precision,
        model_is_default=s.model_is_default,
    )
    if as_json:
        echo_json([p.to_dict() for p in predictions])
        return
    for p in predictions:
        click.echo(f"{p.probability:.4f}  {p.label}")
