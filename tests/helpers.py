"""Helpers the tests share: a tiny real open_clip model, generated images, crash injection."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

TINY_CFG = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 64,
        "heads": 2,
        "layers": 1,
    },
}


PREPROCESS_CFG = {
    "size": 32,
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def save_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Create a tiny open_clip CLIP with seeded random weights as a local-dir: folder."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CFG)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": PREPROCESS_CFG})
    )
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


COLORS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
}


def draw_image(
    path: Path,
    color: str = "red",
    shape: str = "circle",
    size: int = 64,
    background=(255, 255, 255),
    fmt: str | None = None,
) -> Path:
    img = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(img)
    box = (size // 5, size // 5, size * 4 // 5, size * 4 // 5)
    if shape == "circle":
        d.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        d.rectangle(box, fill=COLORS[color])
    else:
        d.polygon(
            [(size // 2, size // 6), (size // 6, size * 5 // 6), (size * 5 // 6, size * 5 // 6)],
            fill=COLORS[color],
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def put_in_hf_cache(cache: Path, repo: str, files: dict[str, Path]) -> Path:
    """Lay files out the way huggingface_hub caches a downloaded repo snapshot."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = Path(cache) / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        (snap / name).write_bytes(Path(src).read_bytes())
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    return snap


# The transpose that, applied to an upright picture, stores it so that EXIF orientation N
# brings it back upright.
_EXIF_INVERSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def stored_for_orientation(upright: Image.Image, orientation: int) -> Image.Image:
    """The pixels a camera would store for ``upright`` under EXIF orientation 1-8."""
    inverse = _EXIF_INVERSE.get(orientation)
    return upright if inverse is None else upright.transpose(inverse)


class WriteCrash(BaseException):
    """Stands for the process dying in the middle of a write (not an Exception, so nothing
    on the way catches it)."""


def crashing_writer(real: Callable[[Path, bytes], None], allowed_writes: int):
    """A stand-in for ``clipsearch.store.vectors._atomic_write`` that lets ``allowed_writes`` writes
    through, then leaves half of the next one in a temp file and raises :class:`WriteCrash`."""
    calls = {"n": 0}

    def write(path: Path, data: bytes) -> None:
        if calls["n"] == allowed_writes:
            path.with_name(path.name + ".123.tmp").write_bytes(data[: len(data) // 2])
            raise WriteCrash
        calls["n"] += 1
        real(path, data)

    return write
