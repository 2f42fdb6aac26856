"""The demo model's fixed recipe: its architecture, input size, seeds and the picture facts its
auxiliary losses may classify. Every other demo module reads these from here."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from clipsearch.demo import synth
from clipsearch.errors import ClipsearchError
from clipsearch.models.identity import MODELS_DIR

ARCHITECTURE = "clipsearch-demo"
TRAIN_SEED = 1
VAL_SEED = 2
EVAL_SEED = 3
SAMPLES_SEED = 4
STYLE_SEED = 5
FINETUNE_SEED = 6
BILINGUAL_SEED = 7
IMAGE_SIZE = int(
    json.loads((MODELS_DIR / f"{ARCHITECTURE}.json").read_text(encoding="utf-8"))["vision_cfg"][
        "image_size"
    ]
)
"""The demo architecture's input size, as ``clipsearch/models/clipsearch-demo.json`` sets it."""
LABEL_CLASSES: dict[str, tuple[Any, ...]] = {
    "style": synth.STYLES,
    "position": synth.POSITIONS,
    "count": synth.COUNTS,
    "shape": synth.SHAPES,
    "color": tuple(synth.COLORS),
}
"""The picture facts a training run's auxiliary losses can classify, with their classes."""


def label_classes(facts: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """The classes of each of ``facts``, for ``TrainConfig.labels``.

    Raises:
        ClipsearchError: a fact that is not in :data:`LABEL_CLASSES`.
    """
    unknown = [fact for fact in facts if fact not in LABEL_CLASSES]
    if unknown:
        raise ClipsearchError(
            f"unknown label facts {', '.join(unknown)}; choose from {', '.join(LABEL_CLASSES)}"
        )
    return {fact: LABEL_CLASSES[fact] for fact in facts}
