"""Finding image files and decoding them into RGB pictures, with a specific reason per failure."""

from __future__ import annotations

import fnmatch
import io
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

from clipsearch.errors import ImageReadError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
OPTIONAL_EXTENSIONS = {".heic": "pillow_heif", ".heif": "pillow_heif", ".avif": "pillow_avif"}
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_PIXELS = 180_000_000  # 2x PIL's default bomb threshold: large panoramas pass, bombs do not

# Truncated files must raise, not decode as grey, so that they land in the errors table.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def supported_extensions() -> frozenset[str]:
    """Extensions we index: the built-in ones plus HEIC/AVIF where a plugin is installed."""
    exts = set(IMAGE_EXTENSIONS)
    for ext, module in OPTIONAL_EXTENSIONS.items():
        if _register_plugin(module):
            exts.add(ext)
    # Pillow >= 11.2 reads AVIF natively when built with libavif: asked of its features, not of
    # Image.registered_extensions(), which imports every plugin that a no-op run never needs.
    if "avif" in features.modules and features.check_module("avif"):
        exts.add(".avif")
    return frozenset(exts)


def _register_plugin(module: str) -> bool:
    try:
        mod = __import__(module)
    except ImportError:
        return False
    register = getattr(mod, "register_heif_opener", None) or getattr(mod, "register", None)
    if callable(register):
        register()
    return True


@dataclass(frozen=True)
class FoundFile:
    """An image file found under an indexed root."""

    root: str  # absolute path of the root folder
    rel: str  # POSIX path relative to the root
    size: int
    mtime_ns: int

    @property
    def path(self) -> str:
        return os.path.join(self.root, *self.rel.split("/"))


def walk_images(
    root: str,
    *,
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
    extensions: frozenset[str] | None = None,
    on_error: Callable[[str, str], None] | None = None,
) -> Iterator[FoundFile]:
    """Yield the image files below ``root``, sorted for a stable order.

    Args:
        root: an absolute folder path.
        exclude: glob patterns matched against the path relative to the root and against each
            file or folder name (``*.tmp``, ``raw/*``, ``.thumbnails``).
        include_hidden: also descend into dot-folders and index dot-files.
        extensions: lower-case extensions to accept; default :func:`supported_extensions`.
        on_error: called with (path, reason) for a folder or file that cannot be read; the walk
            goes on.
    """
    exts = extensions if extensions is not None else supported_extensions()
    report = on_error or (lambda path, reason: None)
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        abs_dir = os.path.join(root, rel_dir) if rel_dir else root
        try:
            with os.scandir(abs_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            report(abs_dir, f"folder not readable: {e.strerror or e}")
            continue
        subdirs = []
        for entry in entries:
            name = entry.name
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if not include_hidden and name.startswith("."):
                continue
            if _excluded(rel, name, exclude):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(rel)
                    continue
                if os.path.splitext(name)[1].lower() not in exts:
                    continue
                st = entry.stat()  # follows symlinks: a link to a photo is a photo
            except OSError as e:
                report(entry.path, _stat_reason(entry, e))
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            yield FoundFile(root, rel, st.st_size, st.st_mtime_ns)
        stack.extend(reversed(subdirs))


def _excluded(rel: str, name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def _stat_reason(entry: os.DirEntry[str], e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        try:
            if entry.is_symlink():
                return "broken symbolic link (its target does not exist)"
        except OSError:
            pass
    return _os_reason(e, "cannot stat file")


def _os_reason(e: OSError, default: str) -> str:
    if isinstance(e, FileNotFoundError):
        return "file not found (broken link or deleted)"
    if isinstance(e, PermissionError):
        return "permission denied"
    if e.errno == 40:  # ELOOP
        return "symlink loop"
    return f"{default}: {e.strerror or e}"


def read_bytes(path: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read a whole file, refusing ones too large to be a photo."""
    return read_file(path, max_bytes)[0]


def read_file(path: str, max_bytes: int = MAX_FILE_BYTES) -> tuple[bytes, os.stat_result]:
    """Read a whole file and the stat of the file that was read (it may have changed since it
    was listed), refusing files too large to be a photo."""
    try:
        # O_NONBLOCK: a FIFO put where a photo was must not block the run forever.
        with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ImageReadError(path, "not a regular file")
            size = st.st_size
            if size == 0:
                raise ImageReadError(path, "empty file (0 bytes)")
            if size > max_bytes:
                raise ImageReadError(path, f"file too large ({size} bytes > {max_bytes})")
            return f.read(), st
    except OSError as e:
        raise ImageReadError(path, _os_reason(e, "cannot read file")) from e


def decode_image(
    data: bytes, path: str, *, max_pixels: int = MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Decode bytes into an upright RGB image (see :func:`decode_image_sized`)."""
    return decode_image_sized(data, path, max_pixels=max_pixels, draft_size=draft_size)[0]


def decode_image_sized(
    data: bytes, path: str, *, max_pixels: int = MAX_PIXELS, draft_size: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode bytes into an upright RGB image and its upright size before any draft scaling.

    EXIF orientation is applied; transparency is composited on white; palette, CMYK, 16-bit
    and grayscale images are converted properly; animations give their first frame.

    Args:
        data: the file's bytes.
        path: used in error messages only.
        max_pixels: images with more declared pixels are refused as decompression bombs.
        draft_size: for JPEGs, let the decoder scale down by DCT (1/2, 1/4, 1/8) as long as
            both sides stay at least this large. None decodes at full size.

    Raises:
        ImageReadError: with a specific reason.
    """
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        fmt = _magic(data)
        if fmt:
            raise ImageReadError(path, f"truncated or corrupt {fmt} header") from e
        raise ImageReadError(path, f"not an image ({_sniff(data)})") from e
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"decompression bomb refused: {e}") from e
    except Exception as e:
        if "truncated" in str(e).lower():
            raise ImageReadError(path, "truncated image data (incomplete header)") from e
        raise ImageReadError(path, f"cannot open image: {e}") from e
    w, h = img.size
    if w * h > max_pixels:
        raise ImageReadError(
            path, f"decompression bomb refused: {w}x{h} pixels exceeds the {max_pixels} limit"
        )
    if w < 1 or h < 1:
        raise ImageReadError(path, f"invalid size {w}x{h}")
    try:
        if draft_size and img.format == "JPEG":
            img.draft("RGB", _draft_target(w, h, draft_size))
        img.load()
        scale = img.size[0] / w  # < 1 when the JPEG decoder scaled down
        img = _upright(img, path)
        upright = (round(img.size[0] / scale), round(img.size[1] / scale))
        return to_rgb(img), upright
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"decompression bomb refused: {e}") from e
    except OSError as e:
        msg = str(e)
        if "truncated" in msg or "broken data stream" in msg or "image file is truncated" in msg:
            raise ImageReadError(path, "truncated image data") from e
        raise ImageReadError(path, f"corrupt image data: {msg}") from e
    except Exception as e:  # decoders raise ValueError, SyntaxError, struct.error ...
        raise ImageReadError(path, f"corrupt image data: {type(e).__name__}: {e}") from e


def _draft_target(w: int, h: int, min_side: int) -> tuple[int, int]:
    # PIL picks the largest DCT scale that keeps the image at least this big.
    scale = min_side / min(w, h)
    return max(1, int(w * scale)), max(1, int(h * scale))


def _upright(img: Image.Image, path: str) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        # Corrupt EXIF must not lose the picture: index it as stored.
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; alpha (also palette transparency) is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping everything to white.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype("uint8")
        img = Image.fromarray(arr)
    if img.mode == "F":
        img = img.convert("L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_image(path: str | os.PathLike[str], **kwargs: object) -> Image.Image:
    """Read and decode one file into an upright RGB image (see :func:`decode_image`)."""
    p = str(path)
    return decode_image(read_bytes(p), p, **kwargs)  # type: ignore[arg-type]


_MAGIC = (
    (b"\xff\xd8", "JPEG"),
    (b"\x89PNG", "PNG"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _magic(data: bytes) -> str | None:
    """The format whose signature starts ``data``, for files PIL could not identify."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for sig, fmt in _MAGIC if data.startswith(sig)), None)


def _sniff(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "an HTML page"
    if head.startswith(b"%pdf"):
        return "a PDF document"
    try:
        data[:512].decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "unknown format"
