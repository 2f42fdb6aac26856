"""The `train` command: contrastive training or fine-tuning of a CLIP model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from clipsearch.cli.options import F, json_option
from clipsearch.models.identity import DEVICES

if TYPE_CHECKING:
    pass


def schedule_options(f: F) -> F:
    """Steps, batch, learning rate and the clock."""
    f = click.option(
        "--minutes",
        type=click.FloatRange(min=0, min_open=True),
        help="Wall-clock budget; the schedule follows the clock and ends decayed.",
    )(f)
    f = click.option(
        "--warmup",
        type=click.IntRange(min=0),
        default=100,
        show_default=True,
        help="Steps of linear learning-rate warmup.",
    )(f)
    f = click.option(
        "--lr",
        type=click.FloatRange(min=0, min_open=True),
        default=5e-4,
        show_default=True,
        help="Peak learning rate (AdamW, warmup then cosine decay).",
    )(f)
    f = click.option(
        "--batch-size",
        type=click.IntRange(min=2),
        default=128,
        show_default=True,
        help="Pairs per step; contrastive learning likes large batches.",
    )(f)
    f = click.option(
        "--steps",
        type=click.IntRange(min=1),
        default=1000,
        show_default=True,
        help="Optimizer steps in all (a resumed run counts the steps already done).",
    )(f)
    return f


def run_options(f: F) -> F:
    """Validation, checkpoints, seed, augmentation and hardware."""
    f = click.option(
        "--precision",
        type=click.Choice(("auto", "fp32", "bf16", "fp16")),
        default="auto",
        show_default=True,
        help="Mixed precision: auto uses bf16/fp16 autocast on GPUs, fp32 on the CPU.",
    )(f)
    f = click.option(
        "--device",
        type=click.Choice(DEVICES),
        default="auto",
        show_default=True,
        help="Where to train.",
    )(f)
    f = click.option(
        "--no-augment",
        is_flag=True,
        help="Turn off the mild colour/blur augmentation (no flips or crops ever).",
    )(f)
    f = click.option(
        "--seed", type=int, default=0, show_default=True, help="Seed for init and order."
    )(f)
    f = click.option(
        "--resume", is_flag=True, help="Continue from the newest checkpoint in --out."
    )(f)
    f = click.option(
        "--checkpoint-every",
        type=click.IntRange(min=0),
        default=500,
        show_default=True,
        help="Save a resumable checkpoint every N steps.",
    )(f)
    f = click.option(
        "--eval-every",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="Measure validation recall every N steps (0: at the end only).",
    )(f)
    f = click.option(
        "--val",
        "val_data",
        type=click.Path(exists=True, path_type=Path),
        help="Validation pairs (same formats as DATA); default: held out of DATA.",
    )(f)
    return f


@click.command()
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for the trained model; load it later with --model local-dir:FOLDER.",
)
@click.option(
    "--model",
    default="clipsearch-demo",
    show_default=True,
    metavar="NAME",
    help="Architecture to train from scratch, or local-dir:/hf-hub: weights to fine-tune.",
)
@click.option(
    "--pretrained",
    metavar="TAG|FILE",
    help="Starting weights for a built-in architecture (omit to start from random weights).",
)
@click.option(
    "--lock-image",
    is_flag=True,
    help="Freeze the image tower and train only the text tower (LiT): teach a model new words "
    "or a new language while its picture embeddings stay exactly as they were.",
)
@schedule_options
@run_options
@json_option
def train(
    data: Path,
    out: Path,
    model: str,
    pretrained: str | None,
    lock_image: bool,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    minutes: float | None,
    val_data: Path | None,
    eval_every: int,
    checkpoint_every: int,
    resume: bool,
    seed: int,
    no_augment: bool,
    device: str,
    precision: str,
    as_json: bool,
) -> None:
    """Train or fine-tune a CLIP model on captioned images.

    DATA is a folder of images with a caption beside each (photo.jpg + photo.txt), or a
    .jsonl/.csv file of path,caption. The loss is CLIP's symmetric contrastive loss with a
    learnable temperature; the result is a folder that `--model local-dir:OUT` loads.

    \b
        clipsearch train my_captioned_photos --out models/mine --model ViT-B-32 \\
            --pretrained laion2b_s34b_b79k --lr 1e-5 --steps 2000
        clipsearch train korean_captions --out models/ko --model local-dir:models/mine \\
            --lock-image --lr 1e-4 --steps 1000
    """
    from clipsearch.training.contrastive import TrainConfig, train_clip

    config = TrainConfig(
        output_dir=out,
        model=model,
        pretrained=pretrained,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup,
        precision=precision,
        device=device,
        seed=seed,
        checkpoint_every=checkpoint_every,
        resume=resume,
        eval_every=eval_every,
        augment=not no_augment,
        time_limit_minutes=minutes,
        lock_image=lock_image,
    )
    result = train_clip(config, data, val_data=val_data, progress=not as_json)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    click.echo(
        f"trained {result.steps} steps in {result.seconds:.0f}s, final loss "
        f"{result.final_loss:.3f}; model in {result.output_dir}"
    )
    if result.metrics:
        click.echo(f"validation: {result.metrics}")
    if result.skipped_images:
        click.echo(f"skipped {result.skipped_images} unreadable images", err=True)
