"""What the training tests share: a tiny CLIP architecture, run settings, synthetic pairs."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from clipsearch.demo import synth
from clipsearch.training.config import TrainConfig
from clipsearch.training.data import CaptionedImage

TINY = "clipsearch-test-tiny"
TINY_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
STYLE_LABELS = {"labels": {"style": ("flat", "sketch")}}


def train_config(tmp_path: Path, **kw: object) -> TrainConfig:
    """Settings of a short run of the tiny architecture on one thread, into ``tmp_path/model``."""
    settings: dict[str, object] = {
        "output_dir": tmp_path / "model",
        "model": TINY,
        "steps": 20,
        "batch_size": 16,
        "lr": 2e-3,
        "warmup_steps": 5,
        "checkpoint_every": 0,
        "val_size": 0,
        "num_threads": 1,
    }
    settings.update(kw)
    return TrainConfig(**settings)  # type: ignore[arg-type]


def _pair(spec: synth.SynthSpec, rng: np.random.Generator, size: int = 32) -> CaptionedImage:
    return CaptionedImage(
        synth.render(spec, rng, size),
        synth.describe(spec),
        spec.facts(),
        synth.stated_facts(spec, ()),
    )


def colour_shape_stream(seed: int) -> Iterator[CaptionedImage]:
    """Single flat or cartoon shapes captioned "a red circle": 45 captions to learn."""
    for i in itertools.count():
        rng = synth.sample_rng(seed, i)
        style = ("flat", "cartoon")[i % 2]
        yield _pair(synth.random_spec(rng, count=1, style=style, position="center"), rng)


def two_style_stream(seed: int) -> Iterator[CaptionedImage]:
    """Flat and sketched shapes whose captions never state the style."""
    for i in itertools.count():
        rng = synth.sample_rng(seed, i)
        style = ("flat", "sketch")[i % 2]
        yield _pair(synth.random_spec(rng, count=1, style=style, position="center"), rng)


def pairs(n: int, seed: int) -> list[CaptionedImage]:
    return list(itertools.islice(colour_shape_stream(seed), n))


def write_image(path: Path, seed: int) -> str:
    """Save a synthetic picture at ``path``; returns its caption."""
    sample = next(synth.generate(1, seed=seed, size=40))
    sample.image.save(path)
    return sample.caption
