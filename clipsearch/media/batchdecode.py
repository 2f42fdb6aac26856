"""Batched JPEG decoding with torchvision (nvJPEG on CUDA, libjpeg-turbo on the CPU).

Worker threads read the bytes and check each header (:func:`batch_decodable`): only complete
colour or grey JPEGs within the pixel limit go to the batched decoder, everything else
(PNG, CMYK, truncated files, bombs) takes the PIL path of :mod:`clipsearch.media.files`.
:func:`decode_jpegs` decodes a batch on a device, upright (EXIF orientation applied as tensor
flips and rotations), and hands back ``None`` for each file the decoder refused, so that
only that file falls back: a bad file never fails the batch. torch is imported on first use.
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from clipsearch.media.files import MAX_PIXELS

if TYPE_CHECKING:
    import torch

_ORIENTATION = 0x0112


@dataclass(frozen=True)
class JpegHead:
    """What a JPEG's header says: its stored size and its EXIF orientation (1-8)."""

    width: int
    height: int
    orientation: int = 1

    @property
    def upright_size(self) -> tuple[int, int]:
        """Width and height once the orientation is applied (5-8 swap the sides)."""
        if self.orientation in (5, 6, 7, 8):
            return self.height, self.width
        return self.width, self.height


def batch_decodable(data: bytes, max_pixels: int = MAX_PIXELS) -> JpegHead | None:
    """The header of a JPEG that the batched decoder may take, else None.

    Only the header is parsed (PIL opens lazily). Refused: other formats, CMYK/YCCK and other
    modes than RGB or grey, files that do not end with the end-of-image marker (truncated),
    and images above ``max_pixels``. Refused files go to the PIL path, which decodes them or
    names what is wrong.
    """
    if not data.startswith(b"\xff\xd8") or not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None
            w, h = img.size
            try:
                orientation = int(img.getexif().get(_ORIENTATION, 1))
            except Exception:  # corrupt EXIF: the PIL path indexes the picture as stored too
                orientation = 1
    except Exception:
        return None
    if w < 1 or h < 1 or w * h > max_pixels:
        return None
    return JpegHead(w, h, orientation if 1 <= orientation <= 8 else 1)


def as_input(data: bytes, pin: bool = False) -> torch.Tensor:
    """The file's bytes as a 1-D uint8 CPU tensor, in page-locked memory when ``pin`` (for a
    fast, asynchronous copy to a CUDA device)."""
    import numpy as np
    import torch

    src = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
    return src.pin_memory() if pin else src


def decode_jpegs(
    inputs: Sequence[torch.Tensor], orientations: Sequence[int], device: str
) -> list[torch.Tensor | None]:
    """Decode JPEG byte tensors into upright RGB uint8 (3, H, W) tensors on ``device``.

    The whole list goes to the decoder at once; if it refuses the batch, each file is
    decoded alone and the ones it refuses come back as None. Running out of device memory is
    no refusal: it is raised, for the caller to decode fewer at a time.
    """
    import torch

    if not inputs:
        return []
    try:
        out: list[torch.Tensor | None] = list(_decode(list(inputs), device))
    except torch.cuda.OutOfMemoryError:
        raise
    except RuntimeError:
        out = []
        for one in inputs:
            try:
                out.append(_decode([one], device)[0])
            except torch.cuda.OutOfMemoryError:
                raise
            except RuntimeError:
                out.append(None)
    return [
        None if img is None else upright(img, orientation)
        for img, orientation in zip(out, orientations, strict=True)
    ]


def _decode(inputs: list[torch.Tensor], device: str) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    _quiet_torchvision()
    return decode_jpeg(inputs, mode=ImageReadMode.RGB, device=device)


@functools.cache
def _quiet_torchvision() -> None:
    # torchvision's notice that its decoders move to torchcodec, on every call; a filter set
    # once (catch_warnings is not thread-safe, and device threads decode at once).
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")


def upright(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF orientation 1-8 to a (C, H, W) tensor, as ``PIL.ImageOps.exif_transpose``."""
    import torch

    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-1, -2)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(img, -1, dims=(-2, -1))
    if orientation == 7:
        return img.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return torch.rot90(img, 1, dims=(-2, -1))
    return img
