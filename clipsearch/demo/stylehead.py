"""The demo model's style head: trained on the demo model's embeddings of freshly drawn
pictures, shipped in ``clipsearch/models/demo/style`` and adopted by every ``--model demo``
index."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipsearch.demo import synth
from clipsearch.demo.recipe import STYLE_SEED
from clipsearch.demo.run import read_metrics, write_metrics
from clipsearch.models.identity import DEMO_DIR, local_dir_name

if TYPE_CHECKING:
    from clipsearch.models.encoder import Encoder
    from clipsearch.style.head import StyleHead


def style_vectors(encoder: Encoder, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``n`` balanced synthetic pictures (JPEG round trip, as files would be) and
    the index of each one's style in :data:`synth.STYLES`."""
    images, targets = [], []
    for sample in synth.generate(n, seed, size=128, balanced=True):
        images.append(synth.jpeg_round_trip(sample.image, 85))
        targets.append(synth.STYLES.index(sample.style))
    return encoder.encode_images(images, batch_size=128), np.asarray(targets, dtype=np.int64)


def build_style_head(
    out: str | Path = DEMO_DIR, *, n: int = 2000, seed: int = STYLE_SEED
) -> StyleHead:
    """Train the demo's style head (512 -> 256 -> the synthetic styles) on the demo model in
    ``out``'s embeddings of freshly generated pictures and save it in ``out/style``.

    An index created with ``--model demo`` starts with this head, so its images are labelled
    photo, cartoon, sketch, pixel art or flat from the first run. When ``out`` holds a
    ``metrics.json``, the head's validation accuracy is recorded there under ``style_head``.

    Returns:
        The trained head; its validation metrics are in ``head.metrics``.
    """
    from clipsearch.models.loading import load_encoder
    from clipsearch.style.head import STYLE_DIR, TrainOptions
    from clipsearch.style.training import TrainingSet, train_head

    out = Path(out)
    encoder = load_encoder(local_dir_name(out.resolve()), device="cpu")
    vectors, targets = style_vectors(encoder, n, seed)
    data = TrainingSet(vectors, targets, synth.STYLES, paths=())
    head = train_head(data, encoder.identity.key, TrainOptions(seed=seed))
    head.save(out / STYLE_DIR)
    if (out / "metrics.json").is_file():
        metrics = read_metrics(out)
        m = head.metrics
        metrics["style_head"] = {
            "accuracy": m.accuracy,
            "val_size": m.val_size,
            "train_size": m.train_size,
            "pictures": n,
            "seed": seed,
            "backbone": encoder.identity.key,
            "confusion": [list(row) for row in m.confusion],
            "command": f"python -m clipsearch.demo style-head -n {n} --seed {seed}",
        }
        write_metrics(out, metrics)
    return head
