"""The `clipsearch` command: parse options, call the library, format the output.

Exit codes: 0 success, 1 a runtime error (one line on stderr), 2 a usage error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from clipsearch.errors import ClipsearchError
from clipsearch.models.identity import DEVICES, PRECISIONS
from clipsearch.store.vectors import INDEX_CHOICES

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_INDEX = "indexes/default"


_QUICK_EXIT = {"allowed": False}  # set by read-only commands: see run()


def run() -> None:
    """The `clipsearch` console command: :func:`main`, then, after a search, an immediate
    exit. Tearing down torch and open_clip at interpreter exit takes ~1 s of a 4 s cold
    search, and a search holds nothing that needs closing once its results are printed."""
    try:
        main()
    except SystemExit as e:
        if _QUICK_EXIT["allowed"] and e.code in (0, None):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        raise


class Fail(click.ClickException):
    """A one-line runtime error: exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"clipsearch: error: {self.format_message()}", err=True)


@contextmanager
def domain_errors() -> Iterator[None]:
    """Turn the library's errors into a one-line message and exit code 1."""
    try:
        yield
    except ClipsearchError as e:
        raise Fail(str(e)) from None


def echo_path_line(line: str, err: bool = False) -> None:
    """Echo a line that holds file paths: a name that is not valid UTF-8 goes out as the raw
    bytes it has on disk (as `ls` and `find` print it to a pipe) instead of failing."""
    click.echo(os.fsencode(line), err=err)


def _open(ctx: click.Context, **kwargs: Any):
    from clipsearch.index.imageindex import ImageIndex

    with domain_errors():
        return ImageIndex.open(ctx.obj["index"], **kwargs)


def model_options(f: F) -> F:
    f = click.option(
        "--pretrained",
        metavar="TAG|FILE",
        help="Pretrained weights: an open_clip tag (dfn2b, openai, ...), a checkpoint file "
        "(.pt/.bin/.safetensors), or 'random'. Only with a built-in model name.",
    )(f)
    f = click.option(
        "--model",
        metavar="NAME",
        help="open_clip model: a name (ViT-B-16), hf-hub:org/repo, local-dir:/path, or 'demo'. "
        "Default for a new index: ViT-B-16 with DFN-2B weights; an existing index uses its own.",
    )(f)
    return f


def device_options(f: F) -> F:
    f = click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default="auto",
        show_default=True,
        help="Numeric precision of the model (auto: fp16 on GPUs, bf16 on CPUs with native "
        "bf16 such as AVX512-BF16 or AMX, else fp32). With auto or fp32, text queries on the "
        "CPU run in NumPy fp32, without torch, for a model loaded once before. Vectors of any "
        "precision mix in one index.",
    )(f)
    f = click.option(
        "--device",
        type=click.Choice(DEVICES),
        default="auto",
        show_default=True,
        help="Where the model runs.",
    )(f)
    return f


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def k_option(f: F) -> F:
    return click.option(
        "-k", "k", type=int, default=10, show_default=True, help="Number of results."
    )(f)


def filter_options(f: F) -> F:
    f = click.option(
        "--style",
        "styles",
        multiple=True,
        metavar="LABEL",
        help="Only images with this style label (repeatable).",
    )(f)
    f = click.option(
        "--prefix",
        "path_prefix",
        metavar="PATH",
        help="Only images whose absolute path starts with this: a folder, or a folder and the "
        "start of a name (relative to the current folder). An error if it lies outside the "
        "indexed folders.",
    )(f)
    f = click.option(
        "--min-score", type=float, default=None, help="Drop results below this cosine similarity."
    )(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--index",
    "index_dir",
    envvar="CLIPSEARCH_INDEX",
    default=DEFAULT_INDEX,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Index directory (also from CLIPSEARCH_INDEX).",
)
@click.version_option(package_name="clipsearch")
@click.pass_context
def main(ctx: click.Context, index_dir: Path) -> None:
    """Semantic search for your own photos.

    Index a folder once, then search it by text, by example image, or both:

    \b
        clipsearch index ~/Pictures
        clipsearch search "a dog on the beach"
        clipsearch similar ~/Pictures/dog.jpg
    """
    ctx.ensure_object(dict)
    ctx.obj["index"] = index_dir


@main.command("index")
@click.argument(
    "paths",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@model_options
@device_options
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Images per model call and per committed transaction (default: 16 on the CPU, 128 "
    "on CUDA, 64 on MPS).",
)
@click.option(
    "--exact-decode",
    is_flag=True,
    help="Decode every pixel of JPEGs. By default a JPEG is decoded at a reduced size (DCT "
    "scaling) still at least twice the model's input: 2-3x faster, same results within "
    "cosine 0.995.",
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="Compile the image model with torch.compile first: 15-30 s once for ViT-B/16 on a "
    "CPU, then about 6% faster end to end (it pays after ~1,700 images). Needs a C++ "
    "compiler on CPUs; runs uncompiled with a warning where it cannot compile.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Threads that read and decode images ahead of the model (default: up to 4).",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="Skip files or folders matching this glob, e.g. '*.tmp' or 'raw/*' (repeatable).",
)
@click.option("--hidden", is_flag=True, help="Also index dot-files and dot-folders.")
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where images are decoded and encoded: this process, or Ray actors (needs the ray "
    "extra; workers must see the same paths).",
)
@click.option(
    "--ray-address",
    metavar="ADDR",
    envvar="RAY_ADDRESS",
    help="Ray cluster to use (e.g. ray://head:10001 or auto); default: a local Ray instance.",
)
@click.option(
    "--ray-actors", type=click.IntRange(min=1), help="Encoder actors (default: one per CPU)."
)
@click.option(
    "--ray-cpus",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="CPUs reserved per Ray actor.",
)
@click.option(
    "--ray-gpus",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="GPUs reserved per Ray actor (fractions share a GPU).",
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Files per Ray task, and per committed transaction with --executor ray.",
)
@json_option
@click.pass_context
def index_cmd(
    ctx: click.Context,
    paths: tuple[Path, ...],
    model: str | None,
    pretrained: str | None,
    device: str,
    precision: str,
    batch_size: int | None,
    exact_decode: bool,
    compile_: bool,
    workers: int | None,
    exclude: tuple[str, ...],
    hidden: bool,
    executor: str,
    ray_address: str | None,
    ray_actors: int | None,
    ray_cpus: float,
    ray_gpus: float,
    shard_size: int,
    as_json: bool,
) -> None:
    """Index the images below one or more folders.

    Runs incrementally: unchanged files are skipped, changed files re-encoded, moved files
    recognised by their content, and deleted files dropped. Files that cannot be read are
    listed by `clipsearch errors`; they never stop the run.
    """
    from clipsearch.index.imageindex import ImageIndex

    remote = None
    if executor == "ray":
        from clipsearch.index.distributed import RayOptions, require_ray

        with domain_errors():
            require_ray()
        remote = RayOptions(ray_address, ray_actors, ray_cpus, ray_gpus, shard_size)
    with domain_errors():
        index = ImageIndex.open_or_create(
            ctx.obj["index"], model, pretrained, device=device, precision=precision
        )
        with index:
            progress = _TqdmProgress(disable=as_json)
            try:
                report = index.add(
                    paths,
                    exclude=exclude,
                    include_hidden=hidden,
                    batch_size=batch_size,
                    workers=workers,
                    exact_decode=exact_decode,
                    compile=compile_,
                    progress=progress,
                    executor=remote,
                )
            except KeyboardInterrupt:
                click.echo(
                    "clipsearch: interrupted; what was committed is kept, run the same command "
                    "again to resume",
                    err=True,
                )
                sys.exit(130)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
        return
    d = report.to_dict()
    click.echo(
        f"added {d['added']}, updated {d['updated']}, moved {d['moved']}, removed {d['removed']}, "
        f"unchanged {d['unchanged']}, failed {d['failed']} in {d['seconds']:.1f}s"
    )
    if report.failed:
        click.echo("see `clipsearch errors` for the files that could not be indexed", err=True)


class _TqdmProgress:
    """Draws the indexer's progress with images/s, on a terminal only."""

    def __init__(self, disable: bool = False, desc: str = "indexing"):
        self.disable = disable or not sys.stderr.isatty()
        self.desc = desc
        self.bar: Any = None

    def start(self, total: int) -> None:
        if not self.disable and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc=self.desc, dynamic_ncols=True)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@main.command()
@click.argument("query", required=False)
@click.option(
    "--plus", multiple=True, metavar="TERM", help="Add a term: text, WEIGHT:text or @image."
)
@click.option("--minus", multiple=True, metavar="TERM", help="Subtract a term (repeatable).")
@k_option
@filter_options
@json_option
@device_options
@click.pass_context
def search(
    ctx: click.Context,
    query: str | None,
    plus: tuple[str, ...],
    minus: tuple[str, ...],
    k: int,
    min_score: float | None,
    path_prefix: str | None,
    styles: tuple[str, ...],
    as_json: bool,
    device: str,
    precision: str,
) -> None:
    """Search by text, by image, or a weighted mix.

    A TERM is text ("a red circle"), an image file prefixed with @ ("@photos/cat.jpg"), and
    may start with a weight ("2:sunset"). --plus terms pull results towards them, --minus
    terms push them away; all are combined into one vector.

    \b
        clipsearch search "beach" --plus "2:sunset" --minus "people"
        clipsearch search @photos/cat.jpg --minus "indoors"
    """
    if query is None and not plus:
        raise click.UsageError("give a QUERY or at least one --plus term")
    index = _open(ctx, device=device, precision=precision)
    with index, domain_errors():
        hits = index.search(
            query,
            k=k,
            plus=plus,
            minus=minus,
            min_score=min_score,
            path_prefix=path_prefix,
            styles=styles or None,
        )
    _print_hits(hits, as_json)


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@k_option
@filter_options
@json_option
@device_options
@click.pass_context
def similar(
    ctx: click.Context,
    image: Path,
    k: int,
    min_score: float | None,
    path_prefix: str | None,
    styles: tuple[str, ...],
    as_json: bool,
    device: str,
    precision: str,
) -> None:
    """Find images that look like IMAGE (never IMAGE itself)."""
    index = _open(ctx, device=device, precision=precision)
    with index, domain_errors():
        hits = index.similar(
            image, k=k, min_score=min_score, path_prefix=path_prefix, styles=styles or None
        )
    _print_hits(hits, as_json)


def _print_hits(hits: Sequence[Any], as_json: bool) -> None:
    _QUICK_EXIT["allowed"] = True
    if as_json:
        click.echo(json.dumps([h.to_dict() for h in hits], indent=2))
        return
    if not hits:
        click.echo("no results", err=True)
    for h in hits:
        style = f"  [{h.style}]" if h.style else ""
        echo_path_line(f"{h.score:.4f}  {h.path}{style}")


@main.command()
@json_option
@click.pass_context
def info(ctx: click.Context, as_json: bool) -> None:
    """Show what the index holds and which model made it."""
    index = _open(ctx)
    with index, domain_errors():
        data = index.info().to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if key == "roots":
            value = ", ".join(value) or "-"
        echo_path_line(f"{key:15} {value}")


@main.command()
@json_option
@click.pass_context
def errors(ctx: click.Context, as_json: bool) -> None:
    """List the files that could not be indexed, and why."""
    index = _open(ctx)
    with index, domain_errors():
        records = index.errors()
    if as_json:
        click.echo(json.dumps([{"path": r.path, "reason": r.reason, "at": r.at} for r in records]))
        return
    if not records:
        click.echo("no errors", err=True)
    for r in records:
        echo_path_line(f"{r.path}: {r.reason}")


@main.command()
@click.option(
    "--type",
    "index_type",
    type=click.Choice(INDEX_CHOICES),
    default="auto",
    show_default=True,
    help="flat: exact; hnsw: graph, fastest approximate search, ~2.3 KB per image; ivf: "
    "inverted lists over exact vectors; ivfpq: compressed, ~140 bytes per image; ivf-ondisk: "
    "ivf with its lists in a memory-mapped file, for collections larger than RAM. auto: flat "
    "up to 250k images, then hnsw if it fits the memory budget, else ivfpq if it fits, else "
    "ivf-ondisk.",
)
@click.option(
    "--memory-budget",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="GB",
    help="RAM the vector index may use, for --type auto (default: a quarter of the RAM).",
)
@json_option
@click.pass_context
def reindex(
    ctx: click.Context, index_type: str, memory_budget: float | None, as_json: bool
) -> None:
    """Rebuild the vector index from the stored vectors, in another layout.

    No image is read again. The layout is recorded in the index and kept by later `clipsearch
    index` runs; approximate layouts answer in milliseconds at a million images.
    """
    budget = int(memory_budget * 2**30) if memory_budget is not None else None
    index = _open(ctx)
    with index, domain_errors():
        report = index.reindex(index_type, memory_budget=budget)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    knobs = {k: v for k, v in report.layout.to_dict().items() if k != "type"}
    shown = {
        "flat": "",
        "hnsw": f" (M={knobs['m']}, efSearch={knobs['ef_search']})",
        "ivf": f" ({knobs['nlist']} lists, nprobe={knobs['nprobe']})",
        "ivfpq": f" ({knobs['nlist']} lists, nprobe={knobs['nprobe']}, {knobs['pq_m']} bytes)",
        "ivf-ondisk": f" ({knobs['nlist']} lists on disk, nprobe={knobs['nprobe']})",
    }[report.layout.type]
    click.echo(
        f"reindexed {report.vectors} vectors as {report.layout.type}{shown} in "
        f"{report.seconds:.1f}s, ~{report.memory_bytes / 2**20:.0f} MiB"
    )


@main.command()
@json_option
@click.pass_context
def repair(ctx: click.Context, as_json: bool) -> None:
    """Check the index and rebuild its vector file from the catalog.

    Run it when a command reports a damaged vector index. The catalog (catalog.sqlite) is
    checked with SQLite's integrity check; images whose stored vector is missing or damaged
    are dropped and listed, and the next `clipsearch index` of their folders encodes them
    again. A damaged catalog cannot be repaired: restore it from a backup or index again.
    """
    index = _open(ctx)
    with index, domain_errors():
        report = index.repair()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    click.echo(f"catalog check: {report.catalog_check}")
    click.echo(f"vector file was {report.vector_file}; rebuilt with {report.vectors} vectors")
    for path in report.missing_vectors:
        echo_path_line(f"no stored vector: {path}")
    for path in report.bad_vectors:
        echo_path_line(f"damaged stored vector: {path}")
    if report.orphan_vectors:
        click.echo(f"deleted {report.orphan_vectors} stored vectors that belonged to no image")
    if report.dropped:
        click.echo(
            f"dropped {report.dropped} images without a usable vector; run `clipsearch index` "
            "on their folders to encode them again",
            err=True,
        )


@main.command()
@click.option("--text", metavar="TEXT", help="Text to embed.")
@click.option("--image", type=click.Path(path_type=Path), help="Image file to embed.")
@model_options
@device_options
@json_option
@click.pass_context
def embed(
    ctx: click.Context,
    text: str | None,
    image: Path | None,
    model: str | None,
    pretrained: str | None,
    device: str,
    precision: str,
    as_json: bool,
) -> None:
    """Print the normalized embedding of a text or an image.

    Uses the index's model when the index exists and no --model is given; otherwise the given
    (or default) model.
    """
    if (text is None) == (image is None):
        raise click.UsageError("give exactly one of --text or --image")
    from clipsearch.index.imageindex import ImageIndex
    from clipsearch.index.query import Query

    query = Query.text(text) if text is not None else Query.image(str(image))
    with domain_errors():
        if model is None and pretrained is None and _index_exists(ctx):
            with ImageIndex.open(ctx.obj["index"], device=device, precision=precision) as index:
                vector = index.query_vector(query)
        else:
            vector = _embed_with_model(query, model, pretrained, device, precision)
    if as_json:
        click.echo(json.dumps([float(x) for x in vector]))
    else:
        click.echo(" ".join(f"{x:.6f}" for x in vector))


def _index_exists(ctx: click.Context) -> bool:
    from clipsearch.store.catalog import CATALOG_FILE

    return (Path(ctx.obj["index"]) / CATALOG_FILE).is_file()


def _embed_with_model(
    query: Any, model: str | None, pretrained: str | None, device: str, precision: str
) -> Any:
    from clipsearch.models.loading import load_encoder, load_text_encoder

    term = query.terms[0]
    if term.kind == "text":
        text_encoder = load_text_encoder(model, pretrained, device=device, precision=precision)
        return text_encoder.encode_texts([term.value])[0]
    encoder = load_encoder(model, pretrained, device=device, precision=precision)
    return encoder.encode_file(term.value)


# --- style labels ---------------------------------------------------------------------------


@main.group()
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
    index = _open(ctx, device=device, precision=precision)
    with index, domain_errors():
        report = index.styles.train(
            folder,
            options=options,
            apply=not no_apply,
            batch_size=batch_size,
            progress=_TqdmProgress(disable=as_json, desc="embedding"),
        )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    m = report.metrics
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
    for path, reason in report.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    applied = f"; relabelled {report.labelled} indexed images" if not no_apply else ""
    click.echo(f"skipped {len(report.skipped)} files; head saved to {report.head_path}{applied}")


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
    index = _open(ctx, device=device, precision=precision)
    with index, domain_errors():
        report = index.styles.apply(labels, progress=_TqdmProgress(disable=as_json, desc="labels"))
    _print_apply(report, as_json)


@style.command("reset")
@json_option
@device_options
@click.pass_context
def style_reset(ctx: click.Context, as_json: bool, device: str, precision: str) -> None:
    """Delete the trained head and relabel the index with zero-shot labels."""
    index = _open(ctx, device=device, precision=precision)
    with index, domain_errors():
        report = index.styles.reset()
    _print_apply(report, as_json)


def _print_apply(report: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
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
    index = _open(ctx)
    with index, domain_errors():
        stats = index.styles.stats()
    if as_json:
        click.echo(json.dumps(stats.to_dict(), indent=2))
        return
    click.echo(f"labels by {stats.source}: {', '.join(stats.labels)}")
    rows = [*stats.counts, *([("(unlabelled)", stats.unlabelled)] if stats.unlabelled else [])]
    width = max([len(label) for label, _ in rows] + [5])
    for label, count in rows:
        click.echo(f"{label:{width}}  {count:8d}")
    click.echo(f"{'total':{width}}  {stats.total:8d}")


@main.command()
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
    from clipsearch.index.imageindex import ImageIndex

    with domain_errors():
        if model is None and pretrained is None and _index_exists(ctx):
            with ImageIndex.open(ctx.obj["index"], device=device, precision=precision) as index:
                predictions = index.classify(image, labels)
        else:
            from clipsearch.models.loading import load_encoder
            from clipsearch.style.labels import classify_image, parse_labels

            names = parse_labels(labels)  # before loading a model for nothing
            encoder = load_encoder(model, pretrained, device=device, precision=precision)
            predictions = classify_image(encoder, image, names)
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in predictions], indent=2))
        return
    for p in predictions:
        click.echo(f"{p.probability:.4f}  {p.label}")


# --- the web page ---------------------------------------------------------------------------


@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. The default lets only this machine in; any other address "
    "shows your photos to everyone who can reach it, without a login.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="Port to listen on (0: any free port).",
)
@device_options
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, device: str, precision: str) -> None:
    """Search the index in a web browser: a page with thumbnails, and a JSON API.

    Open the address it prints. The page searches by text, by an image dropped on it, or
    finds images similar to one you click. The API is described at /openapi.json. Needs the
    web extra: pip install 'clipsearch[web]'.
    """
    from clipsearch import web

    with domain_errors():
        web.require()
    from clipsearch.web import server
    from clipsearch.web.app import create_app

    index = _open(ctx, device=device, precision=precision)
    with index, domain_errors():
        app = create_app(index, allowed_hosts=server.allowed_hosts(host))
        sock = server.bind(host, port)
        click.echo(
            f"clipsearch: serving {index.path} ({index.count} images) at {server.url(sock)} "
            "- press Ctrl+C to stop"
        )
        if not server.is_loopback(host):
            click.echo(
                f"clipsearch: warning: listening on {host}: anyone who can reach this address "
                "can search and view your photos",
                err=True,
            )
        server.run(app, sock)


@main.command()
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
    "--steps",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Optimizer steps in all (a resumed run counts the steps already done).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=2),
    default=128,
    show_default=True,
    help="Pairs per step; contrastive learning likes large batches.",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=5e-4,
    show_default=True,
    help="Peak learning rate (AdamW, warmup then cosine decay).",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Steps of linear learning-rate warmup.",
)
@click.option(
    "--minutes",
    type=click.FloatRange(min=0, min_open=True),
    help="Wall-clock budget; the schedule follows the clock and ends decayed.",
)
@click.option(
    "--val",
    "val_data",
    type=click.Path(exists=True, path_type=Path),
    help="Validation pairs (same formats as DATA); default: held out of DATA.",
)
@click.option(
    "--eval-every",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Measure validation recall every N steps (0: at the end only).",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=0),
    default=500,
    show_default=True,
    help="Save a resumable checkpoint every N steps.",
)
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for init and order.")
@click.option(
    "--no-augment",
    is_flag=True,
    help="Turn off the mild colour/blur augmentation (no flips or crops ever).",
)
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="auto",
    show_default=True,
    help="Where to train.",
)
@click.option(
    "--precision",
    type=click.Choice(("auto", "fp32", "bf16", "fp16")),
    default="auto",
    show_default=True,
    help="Mixed precision: auto uses bf16/fp16 autocast on GPUs, fp32 on the CPU.",
)
@json_option
def train(
    data: Path,
    out: Path,
    model: str,
    pretrained: str | None,
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
    """
    from clipsearch.training.contrastive import TrainConfig, train_clip

    with domain_errors():
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
        )
        result = train_clip(config, data, val_data=val_data, progress=not as_json)
    summary = {
        "output_dir": str(result.output_dir),
        "steps": result.steps,
        "final_loss": result.final_loss,
        "seconds": round(result.seconds, 1),
        "skipped_images": result.skipped_images,
        "validation": result.metrics.as_dict() if result.metrics else None,
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(
        f"trained {result.steps} steps in {result.seconds:.0f}s, final loss "
        f"{result.final_loss:.3f}; model in {result.output_dir}"
    )
    if result.metrics:
        click.echo(f"validation: {result.metrics}")
    if result.skipped_images:
        click.echo(f"skipped {result.skipped_images} unreadable images", err=True)


if __name__ == "__main__":  # python -m clipsearch.cli.main; keep this block last
    main()
