"""decode_image against ground truth: each accepted format is made from one known RGB photo and the
decoded pixels are compared with that photo's own pixels (numpy arithmetic, never our decoder's output).

Tolerances are mean absolute differences in grey levels (0-255) over every pixel and channel: 0 for
lossless formats, the codec's own error for lossy ones (measured here at 0.6-2.3 levels, allowed 4-6);
an inverted, swapped or wrongly rotated decode is off by 40 or more.
"""
import numpy as np
import pytest
from PIL import Image

from imagegen import encode, photo
from model_src.preprocess import decode_image

ORIENTATION = 0x0112


def truth() -> np.ndarray:
    return np.asarray(photo(), dtype=np.int32)


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma, the grey a grayscale encoder stores, as 3 equal channels."""
    grey = (rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114 + 500) // 1000
    return np.repeat(grey[..., None], 3, axis=2)


def decoded(data: bytes) -> np.ndarray:
    img = decode_image(data)
    assert img.mode == "RGB"
    return np.asarray(img, dtype=np.int32)


def mean_error(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, f"decoded {got.shape}, photo {want.shape}"
    return float(np.abs(got - want).mean())


@pytest.mark.parametrize("fmt,kw,tolerance", [
    ("PNG", {}, 0),
    ("BMP", {}, 0),
    ("WEBP", {"lossless": True}, 0),
    ("JPEG", {"quality": 95}, 4),
    ("WEBP", {"quality": 90}, 4),
], ids=["png", "bmp", "webp_lossless", "jpeg", "webp"])
def test_rgb_formats_decode_to_the_photos_pixels(fmt, kw, tolerance):
    assert mean_error(decoded(encode(photo(), fmt, **kw)), truth()) <= tolerance


def test_grayscale_decodes_to_the_photos_luma_in_every_channel():
    grey = luma(truth())
    assert mean_error(decoded(encode(photo().convert("L"), "PNG")), grey) <= 0.5  # PIL rounds its own way
    assert mean_error(decoded(encode(photo().convert("L"), "JPEG", quality=95)), grey) <= 4


def test_sixteen_bit_grayscale_keeps_its_levels():
    """A 16-bit PNG of the photo's luma (v * 257 spans 0..65535): decoded back to v, not clipped to white."""
    grey = luma(truth())[..., 0].astype(np.uint16)
    img = Image.fromarray(grey * 257)
    assert img.mode in ("I;16", "I")
    got = decoded(encode(img, "PNG"))
    assert np.abs(got - luma(truth())).max() <= 1


def test_cmyk_jpeg_decodes_to_the_photos_colours():
    got = decoded(encode(photo().convert("CMYK"), "JPEG", quality=95))
    assert mean_error(got, truth()) <= 4
    assert mean_error(got, 255 - truth()) > 40  # an inverted CMYK decode (Adobe's flag ignored) is far off


def test_palette_png_and_gif_first_frame():
    palette = encode(photo().quantize(256), "PNG")
    assert mean_error(decoded(palette), truth()) <= 6  # 256 colours: the quantizer's error only
    inverted = Image.eval(photo(), lambda v: 255 - v)
    gif = encode(photo().quantize(256), "GIF", save_all=True, append_images=[inverted.quantize(256)], duration=100)
    got = decoded(gif)
    assert mean_error(got, truth()) <= 6  # the first frame, not the second (the inverted photo)


def test_alpha_is_composited_on_white():
    rgba = np.dstack([np.asarray(photo()), np.full(truth().shape[:2], 255, np.uint8)])
    w = rgba.shape[1]
    rgba[:, : w // 3, 3] = 0  # transparent third
    rgba[:, w // 3: 2 * w // 3, 3] = 128  # half-transparent third
    got = decoded(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    want = truth().copy()
    want[:, : w // 3] = 255
    mid = want[:, w // 3: 2 * w // 3]
    want[:, w // 3: 2 * w // 3] = (mid * 128 + 255 * 127 + 127) // 255
    assert np.abs(got - want).max() <= 1


# EXIF orientation v: the stored image is the upright photo transformed by the inverse of what the tag
# says to apply when displaying it (TIFF/EXIF 2.3, tag 274).
STORED_FOR = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,  # display: mirror horizontally
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,  # display: mirror along the main diagonal
    6: Image.Transpose.ROTATE_90,  # display: rotate 90 clockwise, so it was stored 90 counter-clockwise
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,  # display: rotate 90 counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(STORED_FOR))
def test_every_exif_orientation_comes_out_upright(orientation):
    transform = STORED_FOR[orientation]
    stored = photo() if transform is None else photo().transpose(transform)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    got = decoded(encode(stored, "JPEG", quality=95, exif=exif))
    assert mean_error(got, truth()) <= 4
    if orientation in (3, 2, 4):  # same shape: the un-transformed image would be far off
        assert mean_error(np.asarray(stored, dtype=np.int32), truth()) > 20
