"""Options that several commands share, and the settings in force: the index that the global
--index names (or the environment, or the config file: :mod:`clipsearch.settings`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.shell_completion import CompletionItem

from clipsearch.cli.output import echo_path_line
from clipsearch.errors import IndexNotFoundError
from clipsearch.models.identity import (
    DEVICES,
    HF_HUB_PREFIX,
    LOCAL_DIR_PREFIX,
    PRECISIONS,
    model_names,
)
from clipsearch.settings import Settings, resolve_settings

if TYPE_CHECKING:
    from clipsearch.index.imageindex import ImageIndex

F = TypeVar("F", bound=Callable[..., Any])


def settings(
    ctx: click.Context,
    model: str | None = None,
    pretrained: str | None = None,
    exclude: tuple[str, ...] = (),
) -> Settings:
    """The settings in force: the global --index and this command's own options over the
    environment, ./indexes/default and the config file."""
    obj = ctx.ensure_object(dict)
    if model is None and pretrained is None and not exclude:
        if "settings" not in obj:
            obj["settings"] = resolve_settings(obj.get("index"))
        return obj["settings"]
    return resolve_settings(obj.get("index"), model, pretrained, exclude)


def index_dir(ctx: click.Context) -> Path:
    """The index folder in force (see :func:`settings`)."""
    return settings(ctx).index.value


def open_index(ctx: click.Context, **kwargs: Any) -> ImageIndex:
    """Open the existing index in force; keyword arguments go to ImageIndex.open. When there is
    none, the error also says why that folder was chosen."""
    from clipsearch.index.imageindex import ImageIndex

    index = settings(ctx).index
    try:
        return ImageIndex.open(index.value, **kwargs)
    except IndexNotFoundError as e:
        raise IndexNotFoundError(f"{e} (index from: {index.source})") from None


def open_or_create_index(
    ctx: click.Context, s: Settings, *, device: str, precision: str
) -> ImageIndex:
    """Open the index in force, or create it with the settings' model; a new one is announced
    on stderr, with why that folder was chosen."""
    from clipsearch.index.imageindex import ImageIndex

    index = ImageIndex.open_or_create(
        s.index.value,
        s.model.value,
        s.pretrained.value,
        device=device,
        precision=precision,
        model_is_default=s.model_is_default,
    )
    if index.created:
        echo_path_line(
            f"clipsearch: created a new index at {index.path} (from: {s.index.source})", err=True
        )
    return index


def complete_model(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shell completion of --model: the built-in names and the two prefixes."""
    names = [*model_names(), HF_HUB_PREFIX, LOCAL_DIR_PREFIX]
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


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
        shell_complete=complete_model,
        help="open_clip model: a name (ViT-B-16), hf-hub:org/repo, local-dir:/path, or 'demo'. "
        "Default for a new index: the config file's model, else ViT-B-16 with DFN-2B weights; "
        "an existing index uses its own.",
    )(f)
    return f


def device_options(f: F) -> F:
    f = click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default="auto",
        show_default=True,
        help="Numeric precision of the model (auto: fp16 on GPUs, bf16 on CPUs with native "
        "bf16 such as AVX512-BF16 or AMX, else fp32). With auto or fp32, for a model loaded "
        "once before, text queries and fp32 index runs on the CPU need no torch (NumPy or "
        "ONNX Runtime, fp32); with auto on a bf16 CPU, index runs too short to repay torch's "
        "start-up do too. int8 (CPU only): index runs encode with the image tower's weights "
        "quantized to int8 on ONNX Runtime, about twice as fast as fp32 with vectors a little "
        "less exact (made once per model); check that it suits your model before using it "
        "widely. Vectors of any precision mix in one index.",
    )(f)
    f = click.option(
        "--device",
        type=click.Choice(DEVICES),
        default="auto",
        show_default=True,
        help="Where the model runs.",
    )(f)
    return f


def walk_options(f: F) -> F:
    """Which files a run looks at: ``--exclude`` and ``--hidden`` (index and watch)."""
    f = click.option("--hidden", is_flag=True, help="Also index dot-files and dot-folders.")(f)
    return click.option(
        "--exclude",
        multiple=True,
        metavar="GLOB",
        help="Skip files or folders matching this glob, e.g. '*.tmp' or 'raw/*' (repeatable). "
        "Replaces the config file's exclude list.",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def results_output_options(f: F) -> F:
    """--json, --paths, -0 and --link-to: how `search` and `similar` hand over their results."""
    f = click.option(
        "--link-to",
        metavar="DIR",
        type=click.Path(file_okay=False, path_type=Path),
        help="Also fill DIR with symbolic links to the results, named by rank (001-beach.jpg), "
        "for any image viewer. Creates DIR; a later search replaces the links. Refuses a folder "
        "that holds anything else.",
    )(f)
    f = click.option(
        "-0",
        "--null",
        "null",
        is_flag=True,
        help="Paths only, each ended by a NUL byte instead of a newline, for `xargs -0`. "
        "Implies --paths.",
    )(f)
    f = click.option(
        "--paths", "paths_only", is_flag=True, help="Print paths only, one a line, best first."
    )(f)
    return json_option(f)


def k_option(f: F) -> F:
    return click.option(
        "-k", "k", type=int, default=10, show_default=True, help="Number of results."
    )(f)


def filter_options(f: F) -> F:
    f = click.option(
        "--near",
        metavar="LAT,LON[,KM]",
        help="Only photos with a GPS position at most KM (default 10) from LAT,LON.",
    )(f)
    f = click.option(
        "--camera",
        metavar="TEXT",
        help="Only photos whose camera make and model contain TEXT (any case).",
    )(f)
    f = click.option(
        "--before",
        metavar="DATE",
        help="Only photos taken before the start of DATE (YYYY, YYYY-MM, YYYY-MM-DD or an ISO "
        "datetime, local time unless it has an offset): --before 2023 ends on 2022-12-31.",
    )(f)
    f = click.option(
        "--after",
        metavar="DATE",
        help="Only photos taken at or after the start of DATE (same forms as --before). The "
        "date is EXIF's DateTimeOriginal, else the file's modification time.",
    )(f)
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


def video_options(f: F) -> F:
    """Which frames of a video are indexed."""
    from clipsearch.media.video import DEFAULT_INTERVAL, DEFAULT_MAX_FRAMES

    f = click.option(
        "--video-max-frames",
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_FRAMES,
        show_default=True,
        help="Frames taken from one video at most; a longer video gets a wider interval.",
    )(f)
    f = click.option(
        "--video-interval",
        type=click.FloatRange(min=0, min_open=True),
        default=DEFAULT_INTERVAL,
        show_default=True,
        metavar="SECONDS",
        help="Take a video frame every SECONDS, and one more at each scene change between.",
    )(f)
    return f
