"""Thumbnails of indexed images, made on first request and cached in the index folder.

A thumbnail is named after the content hash the catalog stores for its image, so files with
the same bytes share one, a moved file keeps its own, and a changed file (re-indexed: new hash)
gets a new one. Files are written under a temporary name and renamed into place, so a reader
never sees half a thumbnail even when two requests make the same one at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from PIL import Image, features

from clipsearch.media.files import load_image
from clipsearch.store.catalog import StoredImage
from clipsearch.store.fileio import atomic_write

THUMB_SIZE = 256
THUMBS_DIR = "thumbs"
# Bump when the way thumbnails are made changes, so browsers and the cache drop old ones.
THUMB_VERSION = 1


@dataclass(frozen=True)
class ThumbnailCache:
    """Thumbnails of at most ``size`` pixels a side in ``folder`` (WebP, or JPEG without it)."""

    folder: Path
    size: int = THUMB_SIZE

    @property
    def webp(self) -> bool:
        return bool(features.check("webp"))

    @property
    def media_type(self) -> str:
        return "image/webp" if self.webp else "image/jpeg"

    def etag(self, image: StoredImage) -> str:
        """A strong ETag: the thumbnail's bytes follow from the image content and these
        settings alone."""
        ext = "webp" if self.webp else "jpg"
        return f'"{image.sha256[:32]}-{self.size}-v{THUMB_VERSION}.{ext}"'

    def file(self, image: StoredImage) -> Path:
        ext = "webp" if self.webp else "jpg"
        sha = image.sha256
        return self.folder / sha[:2] / f"{sha}-{self.size}-v{THUMB_VERSION}.{ext}"

    def get(self, image: StoredImage) -> bytes:
        """The thumbnail's bytes, from the cache or made now (and cached when the folder is
        writable).

        Raises:
            ImageReadError: the image file is gone or cannot be decoded any more.
        """
        path = self.file(image)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = self.make(image.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data, durable=False)  # a lost thumbnail is made again
        except OSError:
            pass  # a read-only index still gets thumbnails, just not cached ones
        return data

    def make(self, path: str) -> bytes:
        """Encode an upright (EXIF-oriented) RGB thumbnail of an image file."""
        img = load_image(path, draft_size=self.size)
        img.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        out = BytesIO()
        if self.webp:
            img.save(out, format="WEBP", quality=80, method=4)
        else:
            img.save(out, format="JPEG", quality=85, optimize=True)
        return out.getvalue()
