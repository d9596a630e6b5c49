import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from model_src.preprocess import (ImageError, PreprocessSpec, bytes_to_tensor, decode_image, image_to_uint8,
                                  normalize, pil_to_uint8)

from conftest import SAMPLE

SPEC = PreprocessSpec()
JPEG = next(SAMPLE.glob("hot_dog/*.jpg")).read_bytes()


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_deterministic_and_shaped():
    a, b = bytes_to_tensor(JPEG, SPEC), bytes_to_tensor(JPEG, SPEC)
    assert a.shape == (3, SPEC.input_size, SPEC.input_size) and a.dtype == torch.float32
    assert torch.equal(a, b)


def test_normalize_is_the_uint8_path():
    img = decode_image(JPEG)
    assert torch.allclose(normalize(image_to_uint8(img, SPEC), SPEC), bytes_to_tensor(JPEG, SPEC))


def test_spec_roundtrip(tmp_path):
    spec = PreprocessSpec(input_size=144, resize_size=164)
    spec.save(tmp_path)
    assert PreprocessSpec.load(tmp_path) == spec


def test_resize_keeps_aspect_then_center_crops():
    # Left half red, right half blue, 400x200: the center crop must keep both halves equally.
    img = Image.new("RGB", (400, 200), (255, 0, 0))
    img.paste((0, 0, 255), (200, 0, 400, 200))
    x = image_to_uint8(img, SPEC)
    assert x.shape == (3, SPEC.input_size, SPEC.input_size)
    assert x[0, :, :10].float().mean() > 250 and x[2, :, -10:].float().mean() > 250


def test_exif_rotation_is_applied():
    upright = decode_image(JPEG)
    rotated = upright.rotate(90, expand=True)  # stored sideways, as a phone does
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(rotated, "JPEG", quality=95, exif=exif.tobytes())
    fixed = decode_image(data)
    assert fixed.size == upright.size
    diff = (bytes_to_tensor(data, SPEC) - bytes_to_tensor(encode(upright, "JPEG", quality=95), SPEC)).abs().mean()
    assert diff < 0.1


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16"])
def test_modes_become_rgb(mode):
    img = decode_image(JPEG).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        img = Image.frombytes("I;16", img.size, bytes(b for v in img.tobytes() for b in (0, v)))
    fmt = {"CMYK": "JPEG"}.get(mode, "PNG")
    out = decode_image(encode(img, fmt))
    assert out.mode == "RGB" and out.size == img.size
    assert 20 < pil_to_uint8(out).float().mean() < 235  # not clipped to black or white


@pytest.mark.parametrize("data,status,words", [
    (b"", 400, "empty"),
    (b"hello, I am text", 415, "not an image"),
    (JPEG[: len(JPEG) // 2], 400, "truncated"),
])
def test_bad_bytes_raise_clear_errors(data, status, words):
    with pytest.raises(ImageError) as err:
        bytes_to_tensor(data, SPEC)
    assert err.value.status == status and words in str(err.value)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("L", (8000, 6000)), "PNG")  # 48 MP of zeros in a tiny file
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageError) as err:
        decode_image(bomb)
    assert err.value.status == 413
