"""The `clipsearch` command: parse options, call the library, format the output.

Exit codes: 0 success, 1 a runtime error (one line on stderr), 2 a usage error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from .encoder import DEVICES, PRECISIONS
from .errors import ClipsearchError

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_INDEX = "indexes/default"


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


def _open(ctx: click.Context, **kwargs: Any):
    from .index import ImageIndex

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
        default="fp32",
        show_default=True,
        help="Numeric precision of the model (auto: fp16 on GPUs, fp32 on the CPU).",
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
        "-k", "--k", "k", type=int, default=10, show_default=True, help="Number of results."
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
        help="Only images whose path starts with this.",
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
    default=32,
    show_default=True,
    help="Images per model call and per committed transaction.",
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
@json_option
@click.pass_context
def index_cmd(
    ctx: click.Context,
    paths: tuple[Path, ...],
    model: str | None,
    pretrained: str | None,
    device: str,
    precision: str,
    batch_size: int,
    workers: int | None,
    exclude: tuple[str, ...],
    hidden: bool,
    as_json: bool,
) -> None:
    """Index the images below one or more folders.

    Runs incrementally: unchanged files are skipped, changed files re-encoded, moved files
    recognised by their content, and deleted files dropped. Files that cannot be read are
    listed by `clipsearch errors`; they never stop the run.
    """
    from .index import ImageIndex

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
                    progress=progress,
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

    def __init__(self, disable: bool = False):
        self.disable = disable or not sys.stderr.isatty()
        self.bar: Any = None

    def start(self, total: int) -> None:
        if not self.disable and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc="indexing", dynamic_ncols=True)

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
    if as_json:
        click.echo(json.dumps([h.to_dict() for h in hits], indent=2))
        return
    if not hits:
        click.echo("no results", err=True)
    for h in hits:
        style = f"  [{h.style}]" if h.style else ""
        click.echo(f"{h.score:.4f}  {h.path}{style}")


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
        click.echo(f"{key:15} {value}")


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
        click.echo(f"{r.path}: {r.reason}")


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
    from .index import ImageIndex
    from .search import Query

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
    from .catalog import CATALOG_FILE

    return (Path(ctx.obj["index"]) / CATALOG_FILE).is_file()


def _embed_with_model(
    query: Any, model: str | None, pretrained: str | None, device: str, precision: str
) -> Any:
    from .encoder import load_encoder
    from .errors import QueryError
    from .images import load_image

    encoder = load_encoder(model, pretrained, device=device, precision=precision)
    term = query.terms[0]
    if term.kind == "text":
        return encoder.encode_texts([term.value])[0]
    path = Path(term.value)
    if not path.is_file():
        raise QueryError(f"image {term.value}: no such file")
    return encoder.encode_images([load_image(path)])[0]
