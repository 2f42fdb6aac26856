"""Build, evaluate and showcase the small demo model that ships with clipsearch.

Real CLIP weights need a download; the demo model does not. It is a small CLIP trained from
scratch on the synthetic shapes of :mod:`clipsearch.demo.synth`, so that an offline install can
still show real retrieval::

    python -m clipsearch.demo samples            # writes sample_images/ (150 pictures)
    clipsearch index sample_images --model demo
    clipsearch search "a red circle"

The shipped model is rebuilt in two steps (``--steps N`` instead of ``--minutes`` repeats a
run's exact step count, recorded in its ``metrics.json``)::

    python -m clipsearch.demo build --out build/demo-base             # 65 minutes
    python -m clipsearch.demo finetune --base build/demo-base --minutes 18
    python -m clipsearch.demo eval                   # recall of the shipped model

``finetune`` continues a built model on captions that stress the style, re-measures the
gallery and retrains the style head (``style-head`` does that alone); run it once, on the
output of ``build``.

``build`` generates training pictures on the fly with fixed seeds, trains the
``clipsearch-demo`` architecture (``clipsearch/models/clipsearch-demo.json``) with
:func:`clipsearch.training.contrastive.train_clip`, measures it on a gallery of freshly generated
pictures
(another seed) with :func:`evaluate_gallery`, and writes ``clipsearch/models/demo/``:
``open_clip_config.json``, ``open_clip_model.safetensors`` (fp16) and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import platform
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from clipsearch.demo import synth
from clipsearch.errors import ClipsearchError
from clipsearch.models.identity import DEMO_DIR, MODELS_DIR
from clipsearch.models.loading import RANDOM_INIT_NOTICE, dropping_log
from clipsearch.training.contrastive import (
    CaptionedImage,
    PairStream,
    RetrievalMetrics,
    TrainConfig,
    TrainResult,
    recall_at_k,
    train_clip,
)

if TYPE_CHECKING:
    from clipsearch.models.encoder import Encoder

ARCHITECTURE = "clipsearch-demo"
TRAIN_SEED = 1
VAL_SEED = 2
EVAL_SEED = 3
SAMPLES_SEED = 4
STYLE_SEED = 5
FINETUNE_SEED = 6
IMAGE_SIZE = int(
    json.loads((MODELS_DIR / f"{ARCHITECTURE}.json").read_text(encoding="utf-8"))["vision_cfg"][
        "image_size"
    ]
)
"""The demo architecture's input size, as ``clipsearch/models/clipsearch-demo.json`` sets it."""
QUERY_KINDS: tuple[str, ...] = ("color+shape", "style", "count", "position", "style+count")
LABEL_CLASSES: dict[str, tuple[Any, ...]] = {
    "style": synth.STYLES,
    "position": synth.POSITIONS,
    "count": synth.COUNTS,
    "shape": synth.SHAPES,
    "color": tuple(synth.COLORS),
}
"""The picture facts a fine-tune's auxiliary losses can classify, with their classes."""
# Which attributes each kind of query states besides colour and shape.
_KIND_MENTIONS: dict[str, tuple[str, ...]] = {
    "color+shape": (),
    "style": ("style",),
    "count": ("count",),
    "position": ("position",),
    "style+count": ("style", "count"),
}
# Caption mention rates inside a group of same colour-and-shape pictures: the captions there
# must say what tells the pictures apart.
_GROUP_MENTION_RATES = {"style": 0.6, "count": 0.6, "position": 0.6, "background": 0.2, "size": 0.3}


# ---------------------------------------------------------------------------------------------
# Training data


def synth_pair(
    spec: synth.SynthSpec,
    image: Image.Image,
    rng: np.random.Generator,
    mention_rates: dict[str, float] | None = None,
) -> CaptionedImage:
    """Caption a synthetic picture for training, with the facts its caption states.

    Args:
        spec: what the picture shows.
        image: the picture.
        rng: draws which attributes the caption states and its wording.
        mention_rates: how often the optional attributes it names are stated, in place of the
            usual rates (see :func:`synth.random_mentions`).
    """
    mention = synth.random_mentions(rng, mention_rates)
    return CaptionedImage(
        image=image,
        caption=synth.describe(spec, mention, rng),
        image_facts=spec.facts(),
        caption_facts=synth.stated_facts(spec, mention),
    )


def render_for_training(
    spec: synth.SynthSpec,
    rng: np.random.Generator,
    image_size: int = IMAGE_SIZE,
    *,
    file_like: bool = False,
) -> Image.Image:
    """Draw ``spec`` the way the model will see real files: at 64 to 128 pixels, sometimes
    saved as JPEG, then resized to the model's input size with bicubic filtering.

    Args:
        spec: what to draw.
        rng: the random generator for drawing details and the file round trip.
        image_size: the model's input size.
        file_like: always draw at twice the input size and save as JPEG, as the gallery's
            and the style head's pictures are.
    """
    sizes = [image_size, image_size, image_size * 3 // 2, image_size * 2]
    if file_like:
        sizes = [image_size * 2]
    size = int(rng.choice(sizes))
    img = synth.render(spec, rng, size)
    if rng.random() < (1.0 if file_like else 0.35):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(60, 96)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return img


@dataclass(frozen=True)
class SynthStream:
    """An endless, seeded stream of synthetic pairs arranged into batches with hard negatives.

    A pool of pictures is drawn once and then slowly renewed, so that training pays for
    drawing only a fraction of what it consumes. Each batch of ``batch_size`` consecutive items
    holds groups of ``group_size`` pictures with the same colour and shape (which only style,
    count, position or background tell apart) and the rest drawn at random. A share
    ``style_groups`` of the groups are style groups instead: pictures of the same colour, shape,
    count and position in different styles, captioned with their style, so that the style is
    what tells them apart.

    Attributes:
        batch_size: items per batch; must equal the trainer's batch size.
        pool_size: pictures kept in the pool.
        refresh: new pictures drawn into the pool after each batch.
        group_size: pictures in a group of the same colour and shape.
        grouped_fraction: share of each batch taken by such groups.
        image_size: the side of the pictures, the model's input size.
        style_rate: how often captions outside style groups state the style; None keeps the
            usual rates (a half at random, 0.6 in colour-and-shape groups).
        style_groups: share of the groups that are style groups.
        style_only: share of the pictures outside groups captioned with their style alone
            ("pixel art", "a pencil sketch"), which every picture of that style fits.
        file_like: share of the pictures drawn at twice the input size and saved as JPEG
            before being resized (see :func:`render_for_training`).
    """

    batch_size: int = 64
    pool_size: int = 12000
    refresh: int = 16
    group_size: int = 4
    grouped_fraction: float = 0.5
    image_size: int = IMAGE_SIZE
    style_rate: float | None = None
    style_groups: float = 0.0
    style_only: float = 0.0
    file_like: float = 0.0

    def __call__(self, seed: int) -> Iterator[CaptionedImage]:
        rng = np.random.default_rng([seed, 7])
        made = itertools.count()

        def draw() -> tuple[synth.SynthSpec, Image.Image]:
            r = synth.sample_rng(seed, next(made))
            spec = synth.random_spec(r)
            file_like = bool(self.file_like) and r.random() < self.file_like
            return spec, render_for_training(spec, r, self.image_size, file_like=file_like)

        pool = [draw() for _ in range(self.pool_size)]
        by_key: dict[tuple[str, str], list[int]] = {}
        by_scene: dict[tuple[str, str, int, str], list[int]] = {}
        for i, (spec, _) in enumerate(pool):
            by_key.setdefault((spec.color, spec.shape), []).append(i)
            by_scene.setdefault(_scene(spec), []).append(i)
        keys = sorted(by_key)
        scenes = sorted(by_scene)
        n_groups = int(self.batch_size * self.grouped_fraction) // self.group_size
        n_style = round(n_groups * self.style_groups)
        group_rates: dict[str, float] = dict(_GROUP_MENTION_RATES)
        other_rates: dict[str, float] | None = None
        if self.style_rate is not None:
            group_rates["style"] = self.style_rate
            other_rates = {"style": self.style_rate}
        style_rates = {"style": 1.0}

        def style_group() -> list[int]:
            # A scene (colour, shape, count, position) the pool shows in several styles; one
            # picture of each of up to ``group_size`` of those styles.
            for _ in range(20):
                members = by_scene[scenes[int(rng.integers(len(scenes)))]]
                by_style: dict[str, list[int]] = {}
                for i in members:
                    by_style.setdefault(pool[i][0].style, []).append(i)
                if len(by_style) > 1:
                    break
            styles = sorted(by_style)
            picked = rng.choice(len(styles), size=min(self.group_size, len(styles)), replace=False)
            return [int(rng.choice(by_style[styles[int(s)]])) for s in picked]

        while True:
            chosen: list[tuple[int, dict[str, float] | None]] = []
            for _ in range(n_style):
                chosen += [(i, style_rates) for i in style_group()]
            for _ in range(n_groups - n_style):
                members = by_key[keys[int(rng.integers(len(keys)))]]
                k = min(self.group_size, len(members))
                picked = rng.choice(members, size=k, replace=False)
                chosen += [(int(i), group_rates) for i in picked]
            while len(chosen) < self.batch_size:
                chosen.append((int(rng.integers(len(pool))), other_rates))
            for i, rates in chosen:
                spec, image = pool[i]
                if rates is other_rates and self.style_only and rng.random() < self.style_only:
                    yield CaptionedImage(
                        image=image,
                        caption=synth.describe_style(spec.style, rng),
                        image_facts=spec.facts(),
                        caption_facts={"style": spec.style},
                    )
                else:
                    yield synth_pair(spec, image, rng, rates)
            for i in rng.choice(len(pool), size=self.refresh, replace=False):
                old = pool[int(i)][0]
                by_key[(old.color, old.shape)].remove(int(i))
                by_scene[_scene(old)].remove(int(i))
                pool[int(i)] = draw()
                new = pool[int(i)][0]
                by_key.setdefault((new.color, new.shape), []).append(int(i))
                by_scene.setdefault(_scene(new), []).append(int(i))
            keys = sorted(k for k, v in by_key.items() if v)
            if n_style:
                scenes = sorted(k for k, v in by_scene.items() if v)


def _scene(spec: synth.SynthSpec) -> tuple[str, str, int, str]:
    return spec.color, spec.shape, spec.count, spec.position


def validation_pairs(n: int, seed: int = VAL_SEED) -> list[CaptionedImage]:
    """``n`` synthetic validation pairs, drawn like training pairs but from another seed.

    Args:
        n: how many.
        seed: the stream's seed.
    """
    out = []
    for i in range(n):
        rng = synth.sample_rng(seed, i)
        spec = synth.random_spec(rng)
        out.append(synth_pair(spec, render_for_training(spec, rng), rng))
    return out


# ---------------------------------------------------------------------------------------------
# Gallery evaluation


@dataclass(frozen=True)
class KindRecall:
    """Text-to-image recall for one kind of query.

    Attributes:
        kind: one of :data:`QUERY_KINDS`.
        queries: how many distinct queries of this kind had a matching picture.
        recall_at_1: share of queries whose best picture matches.
        recall_at_5: share of queries with a match among the best five.
        example: one of the queries, for reports.
    """

    kind: str
    queries: int
    recall_at_1: float
    recall_at_5: float
    example: str


@dataclass(frozen=True)
class GalleryReport:
    """How well a model finds synthetic pictures by their description.

    Attributes:
        images: pictures in the gallery.
        seed: the seed the gallery was drawn with.
        kinds: recall per kind of query, in :data:`QUERY_KINDS` order.
        by_style: colour+shape recall@1 restricted to pictures of each style.
    """

    images: int
    seed: int
    kinds: tuple[KindRecall, ...]
    by_style: tuple[tuple[str, float], ...] = ()

    def __getitem__(self, kind: str) -> KindRecall:
        for k in self.kinds:
            if k.kind == kind:
                return k
        raise KeyError(kind)

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "seed": self.seed,
            "kinds": {k.kind: asdict(k) for k in self.kinds},
            "color_shape_r1_by_style": dict(self.by_style),
        }

    def table(self) -> str:
        """A small text table of the recalls."""
        lines = [f"gallery of {self.images} pictures (seed {self.seed})"]
        lines.append(f"{'kind':<12} {'queries':>7} {'R@1':>6} {'R@5':>6}  example")
        for k in self.kinds:
            lines.append(
                f"{k.kind:<12} {k.queries:>7} {k.recall_at_1:>6.3f} {k.recall_at_5:>6.3f}  "
                f"{k.example!r}"
            )
        if self.by_style:
            lines.append(
                "color+shape R@1 by style: " + ", ".join(f"{s} {v:.3f}" for s, v in self.by_style)
            )
        return "\n".join(lines)


def gallery_queries(
    specs: Sequence[synth.SynthSpec], kind: str
) -> list[tuple[str, dict[str, str | int]]]:
    """The distinct queries of one kind that some picture in ``specs`` answers.

    Each query is the plainest phrasing (``"a sketch of two blue stars"``) with the facts a
    picture must have to count as a match.

    Args:
        specs: the gallery's pictures.
        kind: one of :data:`QUERY_KINDS`.

    Raises:
        ClipsearchError: an unknown kind.
    """
    if kind not in _KIND_MENTIONS:
        raise ClipsearchError(
            f"unknown query kind {kind!r}; choose one of {', '.join(QUERY_KINDS)}"
        )
    mention = _KIND_MENTIONS[kind]
    seen: dict[str, dict[str, str | int]] = {}
    for spec in specs:
        plain = spec if "count" in mention else replace(spec, count=1)
        text = synth.describe(plain, mention)
        seen.setdefault(text, synth.stated_facts(plain, mention))
    return sorted(seen.items())


def gallery(
    n: int = 600, seed: int = EVAL_SEED, size: int = 128, jpeg_quality: int | None = 85
) -> list[synth.SynthSample]:
    """Draw the evaluation gallery; pictures go through a JPEG round trip like files do.

    Args:
        n: pictures.
        seed: the seed; keep it apart from the training seeds.
        size: the side of each picture in pixels.
        jpeg_quality: JPEG quality of the round trip; None keeps the pictures lossless.
    """
    out = []
    for s in synth.generate(n, seed, size):
        if jpeg_quality is not None:
            buf = io.BytesIO()
            s.image.save(buf, format="JPEG", quality=jpeg_quality)
            s = replace(s, image=Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        out.append(s)
    return out


def evaluate_gallery(
    encoder: Encoder,
    samples: Sequence[synth.SynthSample] | None = None,
    *,
    n: int = 600,
    seed: int = EVAL_SEED,
    kinds: Sequence[str] = QUERY_KINDS,
) -> GalleryReport:
    """Text-to-image recall@1/@5 of ``encoder`` on a gallery of synthetic pictures.

    A picture matches a query when it has every attribute the query states: any picture of
    red circles matches "a red circle"; only sketches of exactly two blue stars match "a sketch
    of two blue stars".

    Args:
        encoder: the model (see :func:`clipsearch.models.loading.load_encoder`).
        samples: the gallery; default :func:`gallery` with ``n`` and ``seed``.
        n: gallery size when ``samples`` is None.
        seed: gallery seed when ``samples`` is None.
        kinds: which kinds of query to measure.
    """
    if samples is None:
        samples = gallery(n, seed)
    specs = [s.spec for s in samples]
    facts = [s.facts() for s in specs]
    image_emb = encoder.encode_images([s.image for s in samples])
    reports = []
    for kind in kinds:
        queries = gallery_queries(specs, kind)
        text_emb = encoder.encode_texts([q for q, _ in queries])
        relevant = np.array(
            [[all(f.get(k) == v for k, v in want.items()) for f in facts] for _, want in queries]
        )
        recall = recall_at_k(text_emb @ image_emb.T, relevant)
        reports.append(KindRecall(kind, len(queries), recall[1], recall[5], queries[0][0]))
    by_style = []
    if "color+shape" in kinds:
        queries = gallery_queries(specs, "color+shape")
        text_emb = encoder.encode_texts([q for q, _ in queries])
        for style in synth.STYLES:
            idx = [i for i, s in enumerate(specs) if s.style == style]
            if not idx:
                continue
            sub = [facts[i] for i in idx]
            relevant = np.array(
                [[all(f.get(k) == v for k, v in w.items()) for f in sub] for _, w in queries]
            )
            keep = relevant.any(axis=1)
            scores = text_emb[keep] @ image_emb[idx].T
            by_style.append((style, recall_at_k(scores, relevant[keep], (1,))[1]))
    return GalleryReport(len(samples), seed, tuple(reports), tuple(by_style))


# ---------------------------------------------------------------------------------------------
# Building the shipped model


@dataclass(frozen=True)
class BuildReport:
    """What :func:`build` produced.

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


def calibrate_steps(
    minutes: float, batch_size: int = 64, threads: int | None = None, precision: str = "bf16"
) -> int:
    """How many training steps of the demo model fit in ``minutes`` on this machine.

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

    from clipsearch.training.contrastive import register_model_configs

    register_model_configs()
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            with dropping_log(RANDOM_INIT_NOTICE):  # random weights are the point here
                model = open_clip.create_model(ARCHITECTURE)
            ctx = model.context_length
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            pixels = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE)
            tokens = torch.randint(1, 1000, (batch_size, ctx))
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
    finally:
        torch.set_num_threads(before)
    per_step = float(np.median(times[1:]))
    return max(50, int(minutes * 60 * 0.8 / per_step))


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
            at most twice the steps :func:`calibrate_steps` expects are run.
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
        label_facts: the picture facts those losses classify (see :data:`LABEL_CLASSES`).
        resume: continue from the newest checkpoint in ``work_dir``.
        progress: show a progress bar.

    Raises:
        ClipsearchError: an unknown label fact.
    """
    labels = _label_classes(label_facts) if label_loss else {}
    time_limit = None
    if steps is None:
        steps = 2 * calibrate_steps(minutes, batch_size, threads, precision)
        time_limit = minutes
    out = Path(out)
    config = TrainConfig(
        output_dir=out,
        model=ARCHITECTURE,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=0.1,
        warmup_steps=min(100, steps // 10),
        precision=precision,
        seed=seed,
        checkpoint_every=250,
        checkpoint_dir=Path(work_dir) / "checkpoints",
        resume=resume,
        eval_every=300,
        augment=False,  # the stream renders its own variety; jitter would only blur colours
        save_dtype="fp16",
        num_threads=threads,
        time_limit_minutes=time_limit,
        labels=labels,
        label_weight=label_loss,
    )
    stream = SynthStream(batch_size=batch_size, file_like=file_like)
    started = time.monotonic()
    result, report = _train_and_evaluate(config, stream, progress)
    minutes_taken = (time.monotonic() - started) / 60
    import open_clip
    import torch

    metrics = {
        "architecture": ARCHITECTURE,
        "train": {
            "steps": result.steps,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "precision": precision,
            "threads": threads or torch.get_num_threads(),
            "samples_seen": result.samples_seen,
            "final_loss": round(result.final_loss, 4),
            "label_loss": label_loss,
            "label_facts": list(labels),
            "label_train_accuracy": dict(result.label_accuracy),
            "train_seconds": round(result.train_seconds, 1),
            "time_limit_minutes": time_limit,
            "stream": asdict(stream),
        },
        "minutes_total": round(minutes_taken, 2),
        "validation": result.metrics.as_dict() if result.metrics else None,
        "validation_history": [(s, m.as_dict()) for s, m in result.history],
        "gallery": report.as_dict(),
        "versions": {
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "python": platform.python_version(),
        },
        "model_mb": round(
            sum(p.stat().st_size for p in out.iterdir() if p.suffix in (".json", ".safetensors"))
            / 1e6,
            2,
        ),
        "rebuild": (
            f"python -m clipsearch.demo build --steps {result.steps} --seed {seed} "
            f"--batch-size {batch_size} --lr {lr} --file-like {file_like} "
            f"--label-loss {label_loss} --label-facts {','.join(label_facts)} "
            f"--threads {threads or torch.get_num_threads()}"
            + (
                "  (this build ran on a clock-driven schedule; --steps repeats it on a "
                "step schedule, which gives close but not identical weights)"
                if time_limit
                else ""
            )
        ),
    }
    path = out / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    size_mb = sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / 1e6
    return BuildReport(out, result.steps, minutes_taken, size_mb, report, path)


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

    Training continues from ``base`` at a lower learning rate on a :class:`SynthStream` whose
    captions state the style far more often, some of them the style alone, and whose batches
    hold style groups (the same scene in several styles), so that style becomes a hard
    negative. The gallery is measured
    again, ``metrics.json`` keeps the base's record and gains a ``finetune`` one, and unless
    ``style_head`` is False the style head is trained again on the new weights (see
    :func:`build_style_head`), since a head only fits the weights it was trained on.

    Args:
        out: the model folder to write; may be ``base`` itself.
        base: the model folder to start from, as :func:`build` wrote it (not fine-tuned yet).
        minutes: wall-clock training budget when ``steps`` is None (see :func:`build`).
        steps: exact number of steps on a pure step schedule, to repeat a fine-tune exactly.
        work_dir: where checkpoints go.
        batch_size: pairs per step.
        lr: peak learning rate.
        warmup_steps: steps of linear warmup.
        seed: training seed.
        threads: torch threads for training; None leaves torch's setting.
        precision: ``bf16`` or ``fp32``.
        style_rate: how often captions outside style groups state the style.
        style_groups: share of each batch's groups that are style groups.
        style_only: share of the other pairs captioned with the style alone.
        file_like: share of the pictures drawn at twice the input size and saved as JPEG
            before being resized, as the gallery's and the style head's are.
        label_loss: weight of the auxiliary classification losses on the picture embedding
            (see ``TrainConfig.labels``); 0 trains on captions alone.
        label_facts: the picture facts those losses classify: any of ``style``,
            ``position``, ``count``, ``shape``, ``color``.
        image_size: fine-tune at this input size instead of the base's (see
            :func:`resize_input`); fine detail such as pixel art's blocks survives better.
        style_head: train and save the style head afterwards.
        resume: continue from the newest checkpoint in ``work_dir``.
        progress: show a progress bar.

    Raises:
        ClipsearchError: ``base`` holds no model, or one that was fine-tuned already.
    """
    import open_clip
    import torch

    from clipsearch.models.identity import file_sha256

    labels = _label_classes(label_facts)
    base, out = Path(base).resolve(), Path(out)
    weights = base / "open_clip_model.safetensors"
    if not weights.is_file():
        raise ClipsearchError(
            f"no demo model in {base}; build one with `python -m clipsearch.demo build`"
        )
    metrics_path = base / "metrics.json"
    base_metrics: dict[str, Any] = {}
    if metrics_path.is_file():
        base_metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    if "finetune" in base_metrics:
        raise ClipsearchError(
            f"the model in {base} was fine-tuned already; fine-tune a model fresh from "
            "`python -m clipsearch.demo build` (pass it as --base)"
        )
    base_sha = file_sha256(weights)
    size = _input_size(base)
    if image_size is not None and image_size != size:
        base = resize_input(base, Path(work_dir) / f"base-{image_size}px", image_size)
        size = image_size
    time_limit = None
    if steps is None:
        steps = 2 * calibrate_steps(minutes, batch_size, threads, precision)
        time_limit = minutes
    config = TrainConfig(
        output_dir=out,
        model=f"local-dir:{base}",
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=0.1,
        warmup_steps=min(warmup_steps, steps // 10),
        precision=precision,
        seed=seed,
        checkpoint_every=250,
        checkpoint_dir=Path(work_dir) / "checkpoints",
        resume=resume,
        eval_every=300,
        augment=False,
        save_dtype="fp16",
        num_threads=threads,
        time_limit_minutes=time_limit,
        labels=labels,
        label_weight=label_loss,
    )
    stream = SynthStream(
        batch_size=batch_size,
        style_rate=style_rate,
        style_groups=style_groups,
        style_only=style_only,
        file_like=file_like,
        image_size=size,
    )
    started = time.monotonic()
    result, report = _train_and_evaluate(config, stream, progress)
    minutes_taken = (time.monotonic() - started) / 60
    threads_used = threads or torch.get_num_threads()
    command = (
        f"python -m clipsearch.demo finetune --steps {result.steps} --seed {seed} "
        f"--batch-size {batch_size} --lr {lr} --warmup {warmup_steps} "
        f"--style-rate {style_rate} --style-groups {style_groups} --style-only {style_only} "
        f"--file-like {file_like} --label-loss {label_loss} "
        f"--label-facts {','.join(label_facts)} --image-size {size} --threads {threads_used}"
    )
    base_rebuild = str(base_metrics.get("rebuild", "python -m clipsearch.demo build"))
    metrics = {
        **base_metrics,
        "gallery": report.as_dict(),
        "model_mb": _model_mb(out),
        "finetune": {
            "base_sha256": base_sha,
            "steps": result.steps,
            "batch_size": batch_size,
            "lr": lr,
            "warmup_steps": config.warmup_steps,
            "seed": seed,
            "precision": precision,
            "threads": threads_used,
            "samples_seen": result.samples_seen,
            "final_loss": round(result.final_loss, 4),
            "label_loss": label_loss,
            "label_train_accuracy": dict(result.label_accuracy),
            "train_seconds": round(result.train_seconds, 1),
            "time_limit_minutes": time_limit,
            "minutes_total": round(minutes_taken, 2),
            "stream": asdict(stream),
            "validation": result.metrics.as_dict() if result.metrics else None,
            "validation_history": [(s, m.as_dict()) for s, m in result.history],
            "gallery_before": base_metrics.get("gallery"),
            "command": command,
        },
        "versions": {
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "python": platform.python_version(),
        },
        "rebuild": f"{base_rebuild}; then {command}"
        + (
            "  (this fine-tune ran on a clock-driven schedule; --steps repeats it on a step "
            "schedule, which gives close but not identical weights)"
            if time_limit
            else ""
        ),
    }
    metrics.pop("style_head", None)  # the base's head does not fit the new weights
    path = out / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if style_head:
        build_style_head(out)
    size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    return BuildReport(out, result.steps, minutes_taken, size_mb, report, path)


def _label_classes(facts: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    unknown = [fact for fact in facts if fact not in LABEL_CLASSES]
    if unknown:
        raise ClipsearchError(
            f"unknown label facts {', '.join(unknown)}; choose from {', '.join(LABEL_CLASSES)}"
        )
    return {fact: LABEL_CLASSES[fact] for fact in facts}


def _input_size(folder: Path) -> int:
    cfg = json.loads((folder / "open_clip_config.json").read_text(encoding="utf-8"))
    return int(cfg["model_cfg"]["vision_cfg"]["image_size"])


def resize_input(base: str | Path, out: str | Path, image_size: int) -> Path:
    """Copy the demo model in ``base`` to ``out`` with another input size: the ViT's grid of
    position embeddings is interpolated (bicubic) to the new number of patches and the config
    and preprocessing say the new size; every other weight is kept. The copy needs fine-tuning
    at its new size before it is any good (:func:`finetune` does this with ``image_size``).

    Returns:
        ``out``, a folder loadable as ``local-dir:<out>``.
    """
    import torch
    from safetensors.torch import load_file, save_file

    base, out = Path(base), Path(out)
    cfg = json.loads((base / "open_clip_config.json").read_text(encoding="utf-8"))
    vision = cfg["model_cfg"]["vision_cfg"]
    patch = int(vision["patch_size"])
    if image_size < patch or image_size % patch:
        raise ClipsearchError(
            f"image size {image_size} is not a positive multiple of the patch size {patch}"
        )
    state = {k: v.float() for k, v in load_file(base / "open_clip_model.safetensors").items()}
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
    save_file(state, out / "open_clip_model.safetensors")
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    if (base / "metrics.json").is_file():
        shutil.copyfile(base / "metrics.json", out / "metrics.json")
    return out


def _model_mb(folder: Path) -> float:
    files = [p for p in folder.iterdir() if p.suffix in (".json", ".safetensors")]
    return round(sum(p.stat().st_size for p in files) / 1e6, 2)


def _train_and_evaluate(
    config: TrainConfig, stream: PairStream, progress: bool
) -> tuple[TrainResult, GalleryReport]:
    """Train on a synthetic stream, then measure the written model on the fresh gallery."""
    from clipsearch.models.loading import load_encoder

    result = train_clip(
        config,
        stream,
        val_data=validation_pairs(500),
        progress=progress,
        on_eval=None if progress else _print_eval,
    )
    encoder = load_encoder(f"local-dir:{Path(config.output_dir).resolve()}", device="cpu")
    return result, evaluate_gallery(encoder)


def _print_eval(step: int, metrics: RetrievalMetrics) -> None:
    print(f"step {step}: {metrics}", file=sys.stderr, flush=True)


def write_samples(
    dest: str | Path = "sample_images", n: int = 150, seed: int = SAMPLES_SEED
) -> list[Path]:
    """Write the README's sample pictures: ``n`` small JPEGs covering every shape, colour and
    style, plus ``captions.jsonl``.

    Args:
        dest: the folder.
        n: how many pictures.
        seed: the seed.
    """
    return synth.write_folder(dest, n, seed, "jpg", size=128, quality=85, balanced=True)


def style_vectors(encoder: Encoder, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``n`` balanced synthetic pictures (JPEG round trip, as files would be) and
    the index of each one's style in :data:`synth.STYLES`."""
    images, targets = [], []
    for sample in synth.generate(n, seed, size=128, balanced=True):
        buf = io.BytesIO()
        sample.image.save(buf, format="JPEG", quality=85)
        images.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        targets.append(synth.STYLES.index(sample.style))
    return encoder.encode_images(images, batch_size=128), np.asarray(targets, dtype=np.int64)


def build_style_head(out: str | Path = DEMO_DIR, *, n: int = 2000, seed: int = STYLE_SEED) -> Any:
    """Train the demo's style head (512 -> 256 -> the synthetic styles) on the shipped demo
    model's embeddings of freshly generated pictures and save it in ``out/style``.

    An index created with ``--model demo`` starts with this head, so its images are labelled
    photo, cartoon, sketch, pixel art or flat from the first run. When ``out`` holds a
    ``metrics.json``, the head's validation accuracy is recorded there under ``style_head``.

    Returns:
        The trained :class:`clipsearch.style.head.StyleHead`; its validation metrics are in
        ``head.metrics``.
    """
    from clipsearch.models.loading import load_encoder
    from clipsearch.style.head import STYLE_DIR, TrainOptions
    from clipsearch.style.training import TrainingSet, train_head

    encoder = load_encoder(f"local-dir:{Path(out).resolve()}", device="cpu")
    vectors, targets = style_vectors(encoder, n, seed)
    data = TrainingSet(vectors, targets, synth.STYLES, paths=())
    head = train_head(data, encoder.identity.key, TrainOptions(seed=seed))
    head.save(Path(out) / STYLE_DIR)
    metrics_path = Path(out) / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
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
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return head


# ---------------------------------------------------------------------------------------------
# Command line


def _add_label_options(
    parser: argparse.ArgumentParser, *, file_like: float, label_loss: float
) -> None:
    parser.add_argument(
        "--file-like",
        type=float,
        default=file_like,
        help=f"share of pictures drawn at 2x the input size and JPEG-saved (default {file_like})",
    )
    parser.add_argument(
        "--label-loss",
        type=float,
        default=label_loss,
        help=f"weight of the auxiliary classification losses (default {label_loss}; 0: none)",
    )
    parser.add_argument(
        "--label-facts",
        default="style,position",
        help=f"facts the auxiliary losses classify, comma-separated, of {', '.join(LABEL_CLASSES)}",
    )


def _facts(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clipsearch.demo {build,finetune,samples,style-head,eval}``."""
    parser = argparse.ArgumentParser(
        prog="python -m clipsearch.demo", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the demo model from scratch and write it")
    b.add_argument(
        "--minutes", type=float, default=65.0, help="wall-clock training budget (default 65)"
    )
    b.add_argument("--steps", type=int, help="exact training steps (overrides --minutes)")
    b.add_argument("--out", type=Path, default=DEMO_DIR, help=f"model folder (default {DEMO_DIR})")
    b.add_argument("--work-dir", type=Path, default=Path("build/demo-train"))
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--lr", type=float, default=1e-3)
    b.add_argument("--seed", type=int, default=TRAIN_SEED)
    b.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    b.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    _add_label_options(b, file_like=0.3, label_loss=1.0)
    b.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    f = sub.add_parser(
        "finetune", help="fine-tune a built demo model so its embeddings tell styles apart"
    )
    f.add_argument(
        "--minutes", type=float, default=15.0, help="wall-clock training budget (default 15)"
    )
    f.add_argument("--steps", type=int, help="exact training steps (overrides --minutes)")
    f.add_argument(
        "--base", type=Path, default=DEMO_DIR, help=f"model to start from (default {DEMO_DIR})"
    )
    f.add_argument("--out", type=Path, default=DEMO_DIR, help=f"model folder (default {DEMO_DIR})")
    f.add_argument("--work-dir", type=Path, default=Path("build/demo-finetune"))
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--lr", type=float, default=3e-4)
    f.add_argument("--warmup", type=int, default=100, help="warmup steps (default 100)")
    f.add_argument("--seed", type=int, default=FINETUNE_SEED)
    f.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    f.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    f.add_argument(
        "--style-rate", type=float, default=0.85, help="style mention rate outside style groups"
    )
    f.add_argument(
        "--style-groups", type=float, default=0.5, help="share of groups that are style groups"
    )
    f.add_argument("--style-only", type=float, default=0.35, help="share of style-alone captions")
    _add_label_options(f, file_like=0.3, label_loss=1.0)
    f.add_argument(
        "--image-size", type=int, help="fine-tune at this input size (default: the base's)"
    )
    f.add_argument("--no-style-head", action="store_true", help="do not retrain the style head")
    f.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    s = sub.add_parser("samples", help="write the sample pictures for the quickstart")
    s.add_argument("--out", type=Path, default=Path("sample_images"))
    s.add_argument("-n", type=int, default=150)
    s.add_argument("--seed", type=int, default=SAMPLES_SEED)
    h = sub.add_parser("style-head", help="train the demo's style head and write it")
    h.add_argument("--out", type=Path, default=DEMO_DIR, help=f"model folder (default {DEMO_DIR})")
    h.add_argument("-n", type=int, default=2000, help="pictures to train and validate on")
    h.add_argument("--seed", type=int, default=STYLE_SEED)
    e = sub.add_parser("eval", help="measure a model on a fresh synthetic gallery")
    e.add_argument("--model", default="demo", help="model name (default: the shipped demo)")
    e.add_argument("-n", type=int, default=600)
    e.add_argument("--seed", type=int, default=EVAL_SEED)
    args = parser.parse_args(argv)

    try:
        if args.command == "build":
            report = build(
                args.out,
                minutes=args.minutes,
                steps=args.steps,
                work_dir=args.work_dir,
                batch_size=args.batch_size,
                lr=args.lr,
                seed=args.seed,
                threads=args.threads,
                precision=args.precision,
                file_like=args.file_like,
                label_loss=args.label_loss,
                label_facts=_facts(args.label_facts),
                resume=args.resume,
            )
            print(report.gallery.table())
            print(
                f"wrote {report.output_dir} ({report.size_mb:.1f} MB) after {report.steps} steps "
                f"in {report.train_minutes:.1f} min; metrics in {report.metrics_path}"
            )
        elif args.command == "finetune":
            report = finetune(
                args.out,
                base=args.base,
                minutes=args.minutes,
                steps=args.steps,
                work_dir=args.work_dir,
                batch_size=args.batch_size,
                lr=args.lr,
                warmup_steps=args.warmup,
                seed=args.seed,
                threads=args.threads,
                precision=args.precision,
                style_rate=args.style_rate,
                style_groups=args.style_groups,
                style_only=args.style_only,
                file_like=args.file_like,
                label_loss=args.label_loss,
                label_facts=_facts(args.label_facts),
                image_size=args.image_size,
                style_head=not args.no_style_head,
                resume=args.resume,
            )
            print(report.gallery.table())
            metrics = json.loads(report.metrics_path.read_text(encoding="utf-8"))
            if "style_head" in metrics:
                print(f"style head: validation accuracy {metrics['style_head']['accuracy']:.3f}")
            print(
                f"wrote {report.output_dir} ({report.size_mb:.1f} MB) after {report.steps} steps "
                f"in {report.train_minutes:.1f} min; metrics in {report.metrics_path}"
            )
        elif args.command == "style-head":
            head = build_style_head(args.out, n=args.n, seed=args.seed)
            m = head.metrics
            print(f"style head: validation accuracy {m.accuracy:.3f} on {m.val_size} pictures")
        elif args.command == "samples":
            paths = write_samples(args.out, args.n, args.seed)
            print(f"wrote {len(paths)} pictures and captions.jsonl to {args.out}")
        else:
            from clipsearch.models.loading import load_encoder

            encoder = load_encoder(args.model, device="cpu")
            print(evaluate_gallery(encoder, n=args.n, seed=args.seed).table())
    except ClipsearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
