"""Batched JPEG decoding: which files it takes, upright pixels like PIL's, refusals per file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clipsearch.media.batchdecode import as_input, batch_decodable, decode_jpegs
from clipsearch.media.files import decode_image
from tests.helpers import stored_for_orientation


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def picture(w: int = 48, h: int = 32) -> Image.Image:
    """Smooth gradients with a marked corner: orientation errors show, JPEG noise is small."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    arr[:8, :8] = (250, 250, 250)
    return Image.fromarray(arr)


def with_orientation(upright: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(stored_for_orientation(upright, orientation), exif=exif)


def zero_height(data: bytes) -> bytes:
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + b"\x00\x00" + data[sof + 7 :]


def test_header_check_takes_colour_and_grey_jpegs_only():
    assert batch_decodable(jpeg(picture(48, 32))).upright_size == (48, 32)
    assert batch_decodable(jpeg(picture().convert("L"))) is not None
    assert batch_decodable(jpeg(picture(), progressive=True)) is not None
    assert batch_decodable(with_orientation(picture(48, 32), 6)).upright_size == (48, 32)
    png = io.BytesIO()
    picture().save(png, "PNG")
    assert batch_decodable(png.getvalue()) is None
    assert batch_decodable(jpeg(Image.new("CMYK", (16, 16), (0, 255, 255, 0)))) is None
    good = jpeg(picture())
    assert batch_decodable(good[: len(good) // 2]) is None  # truncated: no end marker
    assert batch_decodable(zero_height(good)) is None
    assert batch_decodable(good, max_pixels=100) is None


@pytest.mark.parametrize("orientation", range(1, 9))
def test_decoded_pixels_are_upright_like_pil(orientation):
    data = with_orientation(picture(48, 32), orientation)
    head = batch_decodable(data)
    (out,) = decode_jpegs([as_input(data)], [head.orientation], "cpu")
    ref = np.asarray(decode_image(data, "x.jpg"))
    got = out.permute(1, 2, 0).numpy()
    assert got.shape == ref.shape == (32, 48, 3)
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 2.0


def test_a_refused_file_comes_back_as_none_and_the_batch_goes_on():
    good = [jpeg(picture()), jpeg(picture(32, 32).convert("L"))]
    bad = zero_height(good[0])  # the decoder itself refuses it
    out = decode_jpegs([as_input(d) for d in (good[0], bad, good[1])], [1, 1, 1], "cpu")
    assert out[1] is None
    assert out[0].shape == (3, 32, 48) and out[2].shape == (3, 32, 32)  # grey becomes RGB
    assert decode_jpegs([], [], "cpu") == []


def test_input_tensor_holds_the_bytes():
    data = jpeg(picture())
    t = as_input(data)
    assert t.dtype.is_floating_point is False and t.numpy().tobytes() == data
