"""Commands that build and maintain an index: index, reindex, repair."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from clipsearch.cli.options import (
    F,
    device_options,
    json_option,
    model_options,
    open_index,
    open_or_create_index,
    settings,
    video_options,
    walk_options,
)
from clipsearch.cli.output import TqdmProgress, echo_json, echo_path_line
from clipsearch.index.raycluster import RayOptions, ray_session, require_ray
from clipsearch.store.vectors import INDEX_CHOICES

if TYPE_CHECKING:
    from clipsearch.index.pipeline import IndexReport
    from clipsearch.store.vectors import IndexLayout


def pipeline_options(f: F) -> F:
    """How the local pipeline reads, decodes and encodes."""
    f = walk_options(f)
    f = click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        help="Threads that read and decode images ahead of the model (default: up to 4).",
    )(f)
    f = click.option(
        "--compile",
        "compile_",
        is_flag=True,
        help="Compile the image model with torch.compile first: a slow start once, then a "
        "somewhat faster run, so it pays only for large collections. Needs a C++ compiler on "
        "CPUs; runs uncompiled with a warning where it cannot compile.",
    )(f)
    f = click.option(
        "--exact-decode",
        is_flag=True,
        help="Decode every pixel of JPEGs. By default a JPEG is decoded at a reduced size (DCT "
        "scaling) still at least twice the model's input: faster, with nearly the same "
        "vectors.",
    )(f)
    f = click.option(
        "--devices",
        metavar="LIST",
        help="Encode on several GPUs at once, e.g. 0,1: each gets a copy of the model and a "
        "share of every batch.",
    )(f)
    f = click.option(
        "--decode",
        type=click.Choice(["auto", "cpu", "device"]),
        default="auto",
        show_default=True,
        help="Where JPEGs are decoded: cpu (PIL, in the worker threads) or device (in batches "
        "where the model runs: nvJPEG on a CUDA GPU, with resizing there too); auto is device "
        "on CUDA. Other formats and JPEGs it refuses are decoded with PIL.",
    )(f)
    f = click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=None,
        help="Images per model call and per committed transaction (default: 16 on the CPU, 64 "
        "on MPS; on CUDA what free GPU memory allows, or 128 with --decode cpu).",
    )(f)
    return f


def ray_options(f: F) -> F:
    """Where the work runs, and the Ray cluster's share of it."""
    f = click.option(
        "--shard-size",
        type=click.IntRange(min=1),
        default=64,
        show_default=True,
        help="Files per Ray task, and per committed transaction with --executor ray.",
    )(f)
    f = click.option(
        "--ray-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=15.0,
        show_default=True,
        metavar="SECONDS",
        help="How long to wait for the Ray cluster to answer, and for encoder actors to start "
        "(or to restart after a node is lost) while none runs; then exit 1 with one line.",
    )(f)
    f = click.option(
        "--ray-gpus",
        type=click.FloatRange(min=0),
        default=0.0,
        show_default=True,
        help="GPUs reserved per Ray actor (fractions share a GPU).",
    )(f)
    f = click.option(
        "--ray-cpus",
        type=click.FloatRange(min=0),
        default=1.0,
        show_default=True,
        help="CPUs reserved per Ray actor.",
    )(f)
    f = click.option(
        "--ray-actors",
        type=click.IntRange(min=1),
        help="Encoder actors (default: as many as the nodes have room for; more than that are "
        "clamped to it, with a warning).",
    )(f)
    f = click.option(
        "--ray-address",
        metavar="ADDR",
        envvar="RAY_ADDRESS",
        help="Ray cluster to use: HOST:6379 from a node of the cluster, ray://HOST:10001 from "
        "elsewhere (Ray Client), or auto (the cluster `ray start` runs here); default: a new "
        "local Ray instance.",
    )(f)
    f = click.option(
        "--executor",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="Where images are decoded and encoded: this process, or Ray actors (needs the ray "
        "extra; workers must see the same paths).",
    )(f)
    return f


@click.command("index")
@click.argument(
    "paths",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@model_options
@device_options
@pipeline_options
@video_options
@ray_options
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
    decode: str,
    devices: str | None,
    exact_decode: bool,
    compile_: bool,
    workers: int | None,
    exclude: tuple[str, ...],
    hidden: bool,
    video_interval: float,
    video_max_frames: int,
    executor: str,
    ray_address: str | None,
    ray_actors: int | None,
    ray_cpus: float,
    ray_gpus: float,
    ray_timeout: float,
    shard_size: int,
    as_json: bool,
) -> None:
    """Index the images and videos below one or more folders.

    Runs incrementally: unchanged files are skipped, changed files re-encoded, moved files
    recognised by their content, and deleted files dropped. Files that cannot be read are
    listed by `clipsearch errors`; they never stop the run. Videos (.mp4 .mov .m4v .mkv .webm
    .avi) need the video extra: pip install 'clipsearch[video]'.
    """
    remote = None
    if executor == "ray":
        remote = _ray(ray_address, ray_actors, ray_cpus, ray_gpus, shard_size, ray_timeout)
    s = settings(ctx, model, pretrained, exclude)
    try:
        with (
            ray_session(remote),
            open_or_create_index(ctx, s, device=device, precision=precision) as index,
        ):
            report = index.add(
                paths,
                exclude=s.exclude.value,
                include_hidden=hidden,
                batch_size=batch_size,
                workers=workers,
                exact_decode=exact_decode,
                compile=compile_,
                video_interval=video_interval,
                video_max_frames=video_max_frames,
                progress=TqdmProgress(disable=as_json),
                executor=remote,
                decode=decode,
                devices=devices or (),
            )
    except KeyboardInterrupt:
        click.echo(
            "clipsearch: interrupted; what was committed is kept, run the same command "
            "again to resume",
            err=True,
        )
        sys.exit(130)
    _print_index_report(report, as_json)


def _ray(
    address: str | None, actors: int | None, cpus: float, gpus: float, shard: int, timeout: float
) -> RayOptions:
    require_ray()  # a missing extra is named before anything else is done
    return RayOptions(address, actors, cpus, gpus, shard, timeout)


def _print_index_report(report: IndexReport, as_json: bool) -> None:
    d = report.to_dict()
    if as_json:
        click.echo(json.dumps(d))
        return
    click.echo(
        f"added {d['added']}, updated {d['updated']}, moved {d['moved']}, removed {d['removed']}, "
        f"unchanged {d['unchanged']}, failed {d['failed']} in {d['seconds']:.1f}s"
    )
    if report.failed:
        click.echo("see `clipsearch errors` for the files that could not be indexed", err=True)
    if report.skipped_videos:
        from clipsearch.media.video import INSTALL_HINT

        n = report.skipped_videos
        click.echo(
            f"skipped {n} video{'s' if n != 1 else ''}: indexing videos needs PyAV, {INSTALL_HINT}",
            err=True,
        )


@click.command()
@click.option(
    "--type",
    "index_type",
    type=click.Choice(INDEX_CHOICES),
    default="auto",
    show_default=True,
    help="flat: exact; hnsw: graph, fastest approximate search, the most memory of the "
    "approximate layouts; ivf: inverted lists over exact vectors; ivfpq: compressed, a "
    "fraction of the memory; ivf-ondisk: ivf with its lists in a memory-mapped file, for "
    "collections larger than RAM. auto: flat up to 250k images, then hnsw if it fits the "
    "memory budget, else ivfpq if it fits, else ivf-ondisk.",
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
    index` runs; approximate layouts keep searches fast at a million images.
    """
    budget = int(memory_budget * 2**30) if memory_budget is not None else None
    with open_index(ctx) as index:
        report = index.reindex(index_type, memory_budget=budget)
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(
        f"reindexed {report.vectors} vectors as {report.layout.type}"
        f"{_layout_knobs(report.layout)} in {report.seconds:.1f}s, "
        f"~{report.memory_bytes / 2**20:.0f} MiB"
    )


def _layout_knobs(layout: IndexLayout) -> str:
    """The settings of a vector index layout, as reindex prints them after its type."""
    knobs = {k: v for k, v in layout.to_dict().items() if k != "type"}
    return {
        "flat": "",
        "hnsw": f" (M={knobs['m']}, efSearch={knobs['ef_search']})",
        "ivf": f" ({knobs['nlist']} lists, nprobe={knobs['nprobe']})",
        "ivfpq": f" ({knobs['nlist']} lists, nprobe={knobs['nprobe']}, {knobs['pq_m']} bytes)",
        "ivf-ondisk": f" ({knobs['nlist']} lists on disk, nprobe={knobs['nprobe']})",
    }[layout.type]


@click.command()
@json_option
@click.pass_context
def repair(ctx: click.Context, as_json: bool) -> None:
    """Check the index and rebuild its vector file from the catalog.

    Run it when a command reports a damaged vector index. The catalog (catalog.sqlite) is
    checked with SQLite's integrity check; images whose stored vector is missing or damaged
    are dropped and listed, and the next `clipsearch index` of their folders encodes them
    again. A damaged catalog cannot be repaired: restore it from a backup or index again.
    """
    with open_index(ctx) as index:
        report = index.repair()
    if as_json:
        echo_json(report.to_dict())
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
