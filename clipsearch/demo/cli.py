"""``python -m clipsearch.demo``: click commands that build, fine-tune, measure and showcase the
demo model. Each parses its options, calls one function of the demo library and prints the
result; a domain error becomes a one-line message and exit code 1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from clipsearch.cli.output import DomainErrorGroup
from clipsearch.demo.recipe import (
    BILINGUAL_SEED,
    EVAL_SEED,
    FINETUNE_SEED,
    LABEL_CLASSES,
    SAMPLES_SEED,
    STYLE_SEED,
    TRAIN_SEED,
)
from clipsearch.models.identity import DEMO_DIR

if TYPE_CHECKING:
    from clipsearch.demo.build import BuildReport

F = TypeVar("F", bound=Callable[..., Any])
FOLDER = click.Path(file_okay=False, path_type=Path)
SHIPPED = "clipsearch/models/demo, the shipped model"


def _facts(ctx: click.Context, param: click.Parameter, text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator that applies ``decorators`` so their options list in the order given."""

    def add(f: F) -> F:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return add


_SHARED_TRAINING_OPTIONS = _options(
    click.option(
        "--steps",
        type=click.IntRange(min=1),
        help="Exact training steps on a step schedule (overrides --minutes).",
    ),
    click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
    click.option(
        "--threads", type=click.IntRange(min=1), help="Torch threads (default: torch's choice)."
    ),
    click.option(
        "--precision", type=click.Choice(("bf16", "fp32")), default="bf16", show_default=True
    ),
    click.option(
        "--file-like",
        type=float,
        default=0.3,
        show_default=True,
        help="Share of pictures drawn at 2x the input size and JPEG-saved.",
    ),
    click.option(
        "--label-loss",
        type=float,
        default=1.0,
        show_default=True,
        help="Weight of the auxiliary classification losses (0: none).",
    ),
    click.option(
        "--label-facts",
        default="style,position",
        show_default=True,
        callback=_facts,
        help="Facts the auxiliary losses classify, comma-separated, of "
        f"{', '.join(LABEL_CLASSES)}.",
    ),
    click.option("--resume", is_flag=True, help="Continue from the newest checkpoint."),
)


def training_options(*, minutes: float, work_dir: str, lr: float, seed: int) -> Callable[[F], F]:
    """The options ``build`` and ``finetune`` share, with each one's defaults."""
    return _options(
        click.option(
            "--minutes",
            type=float,
            default=minutes,
            show_default=True,
            help="Wall-clock training budget; the schedule follows the clock.",
        ),
        click.option(
            "--out", type=FOLDER, default=DEMO_DIR, show_default=SHIPPED, help="Model folder."
        ),
        click.option(
            "--work-dir",
            type=FOLDER,
            default=Path(work_dir),
            show_default=True,
            help="Where checkpoints go.",
        ),
        click.option("--lr", type=float, default=lr, show_default=True, help="Peak learning rate."),
        click.option("--seed", type=int, default=seed, show_default=True),
        _SHARED_TRAINING_OPTIONS,
    )


@click.group(cls=DomainErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Build, evaluate and showcase the small demo model that ships with clipsearch.

    The shipped model is made by `build`, then `finetune` on build's output, then `bilingual`
    (Korean queries); `eval` measures it in both languages, `samples` writes the quickstart's
    pictures.
    """


@cli.command()
@training_options(minutes=65.0, work_dir="build/demo-train", lr=1e-3, seed=TRAIN_SEED)
def build(out: Path, **options: Any) -> None:
    """Train the demo model from scratch and write it."""
    from clipsearch.demo.build import build as build_model

    report = build_model(out, **options)
    click.echo(report.gallery.table())
    _echo_written(report)


@cli.command()
@training_options(minutes=15.0, work_dir="build/demo-finetune", lr=3e-4, seed=FINETUNE_SEED)
@click.option(
    "--base",
    type=FOLDER,
    default=DEMO_DIR,
    show_default=SHIPPED,
    help="Model to start from, as build wrote it.",
)
@click.option(
    "--warmup",
    "warmup_steps",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Warmup steps.",
)
@click.option(
    "--style-rate",
    type=float,
    default=0.85,
    show_default=True,
    help="Style mention rate outside style groups.",
)
@click.option(
    "--style-groups",
    type=float,
    default=0.5,
    show_default=True,
    help="Share of groups that are style groups.",
)
@click.option(
    "--style-only",
    type=float,
    default=0.35,
    show_default=True,
    help="Share of style-alone captions.",
)
@click.option(
    "--image-size",
    type=click.IntRange(min=1),
    help="Fine-tune at this input size (default: the base's).",
)
@click.option("--no-style-head", is_flag=True, help="Do not retrain the style head.")
def finetune(out: Path, no_style_head: bool, **options: Any) -> None:
    """Fine-tune a built demo model so its embeddings tell styles apart."""
    from clipsearch.demo.build import finetune as finetune_model
    from clipsearch.demo.run import read_metrics

    report = finetune_model(out, style_head=not no_style_head, **options)
    click.echo(report.gallery.table())
    metrics = read_metrics(report.metrics_path.parent)
    if "style_head" in metrics:
        click.echo(f"style head: validation accuracy {metrics['style_head']['accuracy']:.3f}")
    _echo_written(report)


@cli.command()
@click.option(
    "--minutes",
    type=float,
    default=35.0,
    show_default=True,
    help="Wall-clock training budget; the schedule follows the clock.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    help="Exact training steps on a step schedule (overrides --minutes).",
)
@click.option("--out", type=FOLDER, default=DEMO_DIR, show_default=SHIPPED, help="Model folder.")
@click.option(
    "--base",
    type=FOLDER,
    default=DEMO_DIR,
    show_default=SHIPPED,
    help="Model to start from, as finetune wrote it.",
)
@click.option(
    "--work-dir",
    type=FOLDER,
    default=Path("build/demo-bilingual"),
    show_default=True,
    help="Where checkpoints go.",
)
@click.option("--lr", type=float, default=5e-4, show_default=True, help="Peak learning rate.")
@click.option(
    "--warmup",
    "warmup_steps",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Warmup steps.",
)
@click.option("--seed", type=int, default=BILINGUAL_SEED, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=64, show_default=True)
@click.option(
    "--threads", type=click.IntRange(min=1), help="Torch threads (default: torch's choice)."
)
@click.option("--precision", type=click.Choice(("bf16", "fp32")), default="bf16", show_default=True)
@click.option(
    "--korean",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="Share of training captions in Korean.",
)
@click.option(
    "--context-length",
    type=click.IntRange(min=2),
    default=96,
    show_default=True,
    help="Text context of the new model, in tokens.",
)
@click.option(
    "--pool-size",
    type=click.IntRange(min=64),
    default=6000,
    show_default=True,
    help="Pictures kept in the stream's pool.",
)
@click.option(
    "--style-groups",
    type=float,
    default=0.25,
    show_default=True,
    help="Share of groups that are style groups.",
)
@click.option(
    "--style-only",
    type=float,
    default=0.1,
    show_default=True,
    help="Share of style-alone captions.",
)
@click.option(
    "--file-like",
    type=float,
    default=0.3,
    show_default=True,
    help="Share of pictures drawn at 2x the input size and JPEG-saved.",
)
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint.")
def bilingual(out: Path, **options: Any) -> None:
    """Teach the demo model Korean queries, its image tower frozen."""
    from clipsearch.demo.bilingual import bilingual as bilingual_model

    report = bilingual_model(out, **options)
    click.echo(report.gallery.table())
    if report.gallery_ko is not None:
        click.echo(report.gallery_ko.table())
    _echo_written(report)


def _echo_written(report: BuildReport) -> None:
    click.echo(
        f"wrote {report.output_dir} ({report.size_mb:.1f} MB) after {report.steps} steps "
        f"in {report.train_minutes:.1f} min; metrics in {report.metrics_path}"
    )


@cli.command()
@click.option(
    "--out", type=FOLDER, default=Path("sample_images"), show_default=True, help="Folder to write."
)
@click.option(
    "-n", type=click.IntRange(min=1), default=150, show_default=True, help="Pictures to write."
)
@click.option("--seed", type=int, default=SAMPLES_SEED, show_default=True)
def samples(out: Path, n: int, seed: int) -> None:
    """Write the sample pictures for the quickstart."""
    from clipsearch.demo.samples import write_samples

    paths = write_samples(out, n, seed)
    click.echo(f"wrote {len(paths)} pictures and captions.jsonl to {out}")


@cli.command("style-head")
@click.option("--out", type=FOLDER, default=DEMO_DIR, show_default=SHIPPED, help="Model folder.")
@click.option(
    "-n",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Pictures to train and validate on.",
)
@click.option("--seed", type=int, default=STYLE_SEED, show_default=True)
def style_head(out: Path, n: int, seed: int) -> None:
    """Train the demo's style head and write it."""
    from clipsearch.demo.stylehead import build_style_head

    head = build_style_head(out, n=n, seed=seed)
    m = head.metrics
    click.echo(f"style head: validation accuracy {m.accuracy:.3f} on {m.val_size} pictures")


@cli.command("eval")
@click.option(
    "--model", default="demo", show_default=True, help="Model to measure; demo is the shipped one."
)
@click.option(
    "-n",
    type=click.IntRange(min=1),
    default=600,
    show_default=True,
    help="Pictures in the gallery.",
)
@click.option("--seed", type=int, default=EVAL_SEED, show_default=True)
@click.option(
    "--lang",
    "languages",
    type=click.Choice(("en", "ko")),
    multiple=True,
    default=("en", "ko"),
    show_default=True,
    help="Query language; repeat for several.",
)
def evaluate(model: str, n: int, seed: int, languages: tuple[str, ...]) -> None:
    """Measure a model on a fresh synthetic gallery, in each query language."""
    from clipsearch.demo.gallery import evaluate_gallery, gallery
    from clipsearch.models.loading import load_encoder

    encoder = load_encoder(model, device="cpu")
    pictures = gallery(n, seed)
    tables = [
        evaluate_gallery(encoder, pictures, seed=seed, lang=lang).table() for lang in languages
    ]
    click.echo("\n\n".join(tables))


def main() -> None:
    """Run :func:`cli` as ``python -m clipsearch.demo``."""
    cli(prog_name="python -m clipsearch.demo")
