"""The sample pictures of the quickstart (``python -m clipsearch.demo samples``)."""

from __future__ import annotations

from pathlib import Path

from clipsearch.demo import synth
from clipsearch.demo.recipe import SAMPLES_SEED


def write_samples(
    dest: str | Path = "sample_images", n: int = 150, seed: int = SAMPLES_SEED
) -> list[Path]:
    """Write the README's sample pictures: ``n`` small JPEGs covering every shape, colour and
    style, plus ``captions.jsonl``.

    Args:
        dest: the folder.
        n: how many pictures.
        seed: the seed.

    Raises:
        SynthError: the folder cannot be written.
    """
    return synth.write_folder(dest, n, seed, "jpg", size=128, quality=85, balanced=True)
