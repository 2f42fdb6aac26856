"""The demo model's third stage: it learns Korean queries by locked-image text tuning (LiT).

Starting from the shipped model, the text context is widened (CLIP's byte-level BPE spends
three to eight tokens on a Korean phrase where English spends one), the image tower is frozen
and the text tower alone (with the temperature) trains on a stream whose captions are half
Korean, half English as before::

    python -m clipsearch.demo bilingual --minutes 36 --threads 1

The image embeddings stay exactly those of the starting model, so the shipped style head,
trained on image embeddings alone, stays valid as it is: it is carried over to the new weights
(its record names the new backbone) rather than trained again. ``metrics.json`` keeps the
earlier stages' records, gains a ``bilingual`` one and reports the gallery in both languages
(``gallery`` in English, ``gallery_ko`` in Korean).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clipsearch.demo.build import BuildReport, input_size, widen_context
from clipsearch.demo.gallery import GalleryReport, evaluate_gallery
from clipsearch.demo.recipe import BILINGUAL_SEED
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
from clipsearch.demo.stream import SynthStream, validation_pairs
from clipsearch.errors import ClipsearchError
from clipsearch.models.identity import DEMO_DIR, WEIGHTS_NAME, local_dir_name

CONTEXT_LENGTH = 96
"""The bilingual model's text context: the longest Korean caption the synthetic world writes
takes 81 tokens with its start and end tokens (the longest English one 21); 96 is the next
multiple of 16."""


@dataclass(frozen=True)
class BilingualReport(BuildReport):
    """What :func:`bilingual` produced: a :class:`BuildReport` whose ``gallery`` is measured
    with English queries, and the same gallery with Korean ones.

    Attributes:
        gallery_ko: recall of Korean queries on the gallery.
    """

    gallery_ko: GalleryReport | None = None


def bilingual(
    out: str | Path = DEMO_DIR,
    *,
    base: str | Path = DEMO_DIR,
    minutes: float = 35.0,
    steps: int | None = None,
    work_dir: str | Path = "build/demo-bilingual",
    batch_size: int = 64,
    lr: float = 5e-4,
    warmup_steps: int = 100,
    seed: int = BILINGUAL_SEED,
    threads: int | None = None,
    precision: str = "bf16",
    korean: float = 0.5,
    context_length: int = CONTEXT_LENGTH,
    pool_size: int = 6000,
    style_groups: float = 0.25,
    style_only: float = 0.1,
    file_like: float = 0.3,
    resume: bool = False,
    progress: bool = True,
) -> BilingualReport:
    """Teach a demo model Korean queries with its image tower frozen, and write it to ``out``.

    Args:
        out: the model folder to write; may be ``base`` itself.
        base: the model to start from, as ``finetune`` wrote it (not bilingual yet).
        minutes, steps, work_dir, batch_size, lr, warmup_steps, seed, threads, precision,
            style_groups, style_only, file_like, resume, progress: as for
            :func:`clipsearch.demo.build.finetune`.
        korean: share of the training captions in Korean; the rest are English.
        context_length: the text context of the new model (see :data:`CONTEXT_LENGTH`).
        pool_size: pictures the stream keeps in its pool.

    Raises:
        ClipsearchError: ``base`` holds no model, or one that is bilingual already; a context
            shorter than the base's.
    """
    base, out, work = Path(base).resolve(), Path(out), Path(work_dir)
    base_metrics = _bilingual_base(base)
    before, head = _image_tower(base), _base_style_head(base)
    widened = widen_context(base, work / f"base-ctx{context_length}", context_length, seed)
    settings = RunSettings(
        minutes=minutes,
        steps=steps,
        work_dir=work,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup_steps,
        seed=seed,
        threads=threads,
        precision=precision,
        labels={},
        label_loss=0.0,
        resume=resume,
        progress=progress,
        lock_image=True,
    )
    stream = SynthStream(
        batch_size=batch_size,
        pool_size=pool_size,
        image_size=input_size(base),
        style_groups=style_groups,
        style_only=style_only,
        file_like=file_like,
        korean=korean,
    )
    run = train_and_evaluate(
        settings, out, local_dir_name(widened.resolve()), stream, validation_pairs(500, lang="ko")
    )
    if _image_tower(out) != before:
        raise ClipsearchError(f"the image tower in {out} changed; lock_image did not hold")
    record, gallery_ko = _measure(out)
    metrics = _bilingual_metrics(run, settings, stream, base_metrics, record)
    if head is not None:
        metrics["style_head"] = _carry_style_head(head, base_metrics.get("style_head"), out)
    path = write_metrics(out, metrics)
    return BilingualReport(
        out, run.result.steps, run.minutes_taken, folder_mb(out), run.gallery, path, gallery_ko
    )


def _bilingual_base(base: Path) -> dict[str, Any]:
    """The record of the model in ``base``, which must not be bilingual yet."""
    if not (base / WEIGHTS_NAME).is_file():
        raise ClipsearchError(
            f"no demo model in {base}; build one with `python -m clipsearch.demo build` and "
            "`finetune`"
        )
    metrics = read_metrics(base)
    if "bilingual" in metrics:
        raise ClipsearchError(
            f"the model in {base} is bilingual already; start from the model `finetune` wrote "
            "(pass it as --base)"
        )
    return metrics


def _image_tower(folder: Path) -> dict[str, bytes]:
    """The image tower's weights in ``folder``, as stored, by name."""
    from safetensors.torch import load_file

    state = load_file(folder / WEIGHTS_NAME)
    return {k: v.numpy().tobytes() for k, v in state.items() if k.startswith("visual.")}


def _base_style_head(base: Path) -> Any:
    """The style head that belongs to the model in ``base``, or None when it has none."""
    from clipsearch.models.loading import load_encoder
    from clipsearch.style.head import STYLE_DIR, StyleHead

    if not (base / STYLE_DIR).is_dir():
        return None
    key = load_encoder(local_dir_name(base), device="cpu").identity.key
    return StyleHead.load(base / STYLE_DIR, backbone=key)


def _carry_style_head(head: Any, record: dict[str, Any] | None, out: Path) -> dict[str, Any]:
    """Save ``head`` for the model in ``out``, whose image embeddings are the base's; returns
    its ``metrics.json`` record."""
    from clipsearch.models.loading import load_encoder
    from clipsearch.style.head import STYLE_DIR

    previous = head.backbone
    head.backbone = load_encoder(local_dir_name(out.resolve()), device="cpu").identity.key
    head.save(out / STYLE_DIR)
    return {**(record or {}), "backbone": head.backbone, "carried_over_from": previous}


def _measure(out: Path) -> tuple[dict[str, Any], GalleryReport]:
    """Validation recall of the written model in each language and its Korean gallery."""
    from clipsearch.models.loading import load_encoder
    from clipsearch.training.evaluation import evaluate_pairs

    encoder = load_encoder(local_dir_name(out.resolve()), device="cpu")
    gallery_ko = evaluate_gallery(encoder, lang="ko")
    record = {
        "validation_by_language": {
            lang: evaluate_pairs(encoder, validation_pairs(500, lang=lang)).to_dict()
            for lang in ("en", "ko")
        },
        "gallery_ko": gallery_ko.to_dict(),
    }
    return record, gallery_ko


def _bilingual_metrics(
    run: TrainedRun,
    settings: RunSettings,
    stream: SynthStream,
    base_metrics: dict[str, Any],
    measured: dict[str, Any],
) -> dict[str, Any]:
    """The base's ``metrics.json`` with the galleries in both languages and a ``bilingual``
    record."""
    c = run.config
    command = (
        f"python -m clipsearch.demo bilingual --steps {run.result.steps} --seed {c.seed} "
        f"--batch-size {c.batch_size} --lr {c.lr} --warmup {settings.warmup_steps} "
        f"--korean {stream.korean} --context-length {_context_length(run)} "
        f"--pool-size {stream.pool_size} --style-groups {stream.style_groups} "
        f"--style-only {stream.style_only} --file-like {stream.file_like} "
        f"--threads {run.threads}"
    )
    record = {
        **run.record(),
        "lock_image": True,
        "warmup_steps": c.warmup_steps,
        "context_length": _context_length(run),
        "minutes_total": round(run.minutes_taken, 2),
        "stream": asdict(stream),
        **run.validation(),
        "validation_by_language": measured["validation_by_language"],
        "gallery_before": base_metrics.get("gallery"),
        "command": command,
    }
    base_rebuild = str(base_metrics.get("rebuild", "python -m clipsearch.demo build"))
    return {
        **base_metrics,
        "gallery": run.gallery.to_dict(),
        "gallery_ko": measured["gallery_ko"],
        "model_mb": model_mb(Path(c.output_dir)),
        "bilingual": record,
        "versions": versions(),
        "rebuild": f"{base_rebuild}; then {command}" + run.clock_note("bilingual stage"),
    }


def _context_length(run: TrainedRun) -> int:
    import json

    from clipsearch.models.identity import CONFIG_NAME

    cfg = json.loads((Path(run.config.output_dir) / CONFIG_NAME).read_text(encoding="utf-8"))
    return int(cfg["model_cfg"]["text_cfg"]["context_length"])
