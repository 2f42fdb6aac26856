"""Decoding: every mode and orientation becomes the right upright RGB picture."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clipsearch.errors import ImageReadError
from clipsearch.media.files import decode_image, decode_image_sized, load_image, to_rgb, walk_images
from tests.helpers import stored_for_orientation


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    out = decode_image(encode(img, "PNG"), "x.png")
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (255, 0, 0)
    la = to_rgb(Image.new("LA", (2, 2), (0, 0)))
    assert la.getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency():
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 255] + [255, 0, 0] * 255)
    img.info["transparency"] = 0
    out = decode_image(encode(img, "PNG", transparency=0), "p.png")
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_and_16_bit_and_grayscale():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    out = decode_image(encode(cmyk, "JPEG"), "c.jpg")
    r, g, b = out.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    sixteen = Image.fromarray(arr)
    out = decode_image(encode(sixteen, "PNG"), "g16.png")
    assert out.mode == "RGB" and 120 <= out.getpixel((0, 0))[0] <= 135  # mid grey, not white
    gray = decode_image(encode(Image.new("L", (3, 3), 77), "PNG"), "g.png")
    assert gray.getpixel((0, 0)) == (77, 77, 77)


def test_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue(), "a.gif")
    r, g, b = out.getpixel((2, 2))
    assert r > 200 and b < 50


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_upright_picture(orientation):
    upright = Image.new("RGB", (6, 4), (0, 0, 0))
    upright.putpixel((0, 0), (255, 255, 255))  # a marker in the top-left corner
    # Store the picture so that applying `orientation` brings it back upright.
    stored = stored_for_orientation(upright, orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "PNG", exif=exif.tobytes())
    out, size = decode_image_sized(data, "o.png")
    assert out.size == (6, 4) and size == (6, 4)
    assert np.asarray(out)[0, 0].min() == 255
    assert np.asarray(out)[3, 5].max() == 0


def test_decompression_bomb_is_refused():
    data = encode(Image.new("L", (1000, 1000)), "PNG")
    with pytest.raises(ImageReadError, match="decompression bomb"):
        decode_image(data, "bomb.png", max_pixels=500_000)


def test_draft_decoding_keeps_at_least_the_asked_size():
    big = Image.new("RGB", (1600, 1200), (10, 120, 200))
    out, size = decode_image_sized(encode(big, "JPEG"), "big.jpg", draft_size=448)
    assert min(out.size) >= 448 and out.size[0] < 1600
    assert size == (1600, 1200)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"just some words", "not an image (a text file)"),
        (b"<!DOCTYPE html><html></html>", "not an image (an HTML page)"),
        (b"%PDF-1.4 ...", "not an image (a PDF document)"),
        (bytes(range(256)) * 4, "not an image (unknown format)"),
    ],
)
def test_not_images_say_what_they_are(data, reason):
    with pytest.raises(ImageReadError) as err:
        decode_image(data, "f.jpg")
    assert err.value.reason == reason


def test_load_image_reasons(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty file"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageReadError, match="file not found"):
        load_image(tmp_path / "missing.jpg")


def test_walk_reports_unreadable_folders_and_sorts(tmp_path):
    for name in ["b.png", "a.JPG", "c.txt", "sub/d.webp"]:
        p = tmp_path / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    found = [f.rel for f in walk_images(str(tmp_path))]
    assert found == ["a.JPG", "b.png", "sub/d.webp"]
    errors = []
    list(walk_images(str(tmp_path / "nope"), on_error=lambda p, r: errors.append(r)))
    assert errors and errors[0].startswith("folder not readable")
