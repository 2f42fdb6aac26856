"""Style labels for every image: zero-shot labels from prompt ensembles, and an MLP head
on the CLIP image embedding once one is trained on labelled folders.

An index's own styles (its head, relabelling, counts) are :attr:`ImageIndex.styles`, in
:mod:`clipsearch.index.styles`.
"""

from clipsearch.style.head import ClassMetrics, StyleHead, StyleMetrics, TrainOptions
from clipsearch.style.labels import (
    DEFAULT_STYLE_LABELS,
    Labeller,
    Prediction,
    ZeroShotLabeller,
    classify_image,
    classify_vector,
    parse_labels,
)
from clipsearch.style.training import StyleTrainReport, TrainingSet, train_head

__all__ = [
    "DEFAULT_STYLE_LABELS",
    "ClassMetrics",
    "Labeller",
    "Prediction",
    "StyleHead",
    "StyleMetrics",
    "StyleTrainReport",
    "TrainOptions",
    "TrainingSet",
    "ZeroShotLabeller",
    "classify_image",
    "classify_vector",
    "parse_labels",
    "train_head",
]
