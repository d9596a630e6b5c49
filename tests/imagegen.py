"""Real-photo inputs in every format the server accepts, and the bad inputs it must refuse."""
from __future__ import annotations

import io
from functools import lru_cache

from PIL import Image

from conftest import SAMPLE


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@lru_cache(maxsize=1)
def photo() -> Image.Image:
    """A real hot dog photo, upright RGB, landscape (so a wrong rotation changes its shape), small
    enough that a dozen encodings stay fast."""
    img = Image.open(next(SAMPLE.glob("hot_dog/*.jpg"))).convert("RGB")
    img.thumbnail((320, 320))
    return img.crop((0, 0, img.width, img.width * 3 // 4))


def exif_rotated(fmt: str = "JPEG") -> bytes:
    """The photo stored sideways with EXIF Orientation=6, the way phones save portrait shots:
    upright only once the orientation is applied."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"; PIL's exif_transpose undoes ROTATE_90
    return encode(photo().transpose(Image.Transpose.ROTATE_90), fmt, exif=exif)


def with_alpha() -> Image.Image:
    rgba = photo().convert("RGBA")
    alpha = Image.new("L", rgba.size, 255)
    alpha.paste(0, (0, 0, rgba.width // 2, rgba.height))  # left half fully transparent
    rgba.putalpha(alpha)
    return rgba


def format_variants() -> dict[str, bytes]:
    img = photo()
    inverted = Image.eval(img, lambda v: 255 - v)
    return {
        "jpeg": next(SAMPLE.glob("hot_dog/*.jpg")).read_bytes(),
        "png": encode(img, "PNG"),
        "webp": encode(img, "WEBP", quality=90),
        "bmp": encode(img, "BMP"),
        # Two frames: only the first (the photo) is classified.
        "gif": encode(img.quantize(256), "GIF", save_all=True, append_images=[inverted.quantize(256)],
                      duration=100),
        "grayscale": encode(img.convert("L"), "JPEG"),
        "cmyk": encode(img.convert("CMYK"), "JPEG"),
        "palette": encode(img.quantize(64), "PNG"),
        "alpha": encode(with_alpha(), "PNG"),
        "exif_rotated": exif_rotated(),
    }


def over_pixel_limit(max_pixels: int) -> bytes:
    """A decompression bomb in miniature: a few kB of PNG that would decode past the pixel limit."""
    height = 1000
    return encode(Image.new("1", (max_pixels // height + 1, height)), "PNG", optimize=True)


def bad_inputs(max_pixels: int) -> dict[str, tuple[bytes, int]]:
    """name -> (bytes, the HTTP status the server must answer)."""
    jpeg = format_variants()["jpeg"]
    return {
        "empty": (b"", 400),
        "not_an_image": (b"%PDF-1.7 this is a document, not a photo" * 20, 415),
        "truncated": (jpeg[: len(jpeg) // 2], 400),
        "over_pixel_limit": (over_pixel_limit(max_pixels), 413),
        # ~100 bytes that resizing the shorter side to the model size would blow up to 0.5 GB
        "strip": (encode(Image.new("L", (1, 3000)), "PNG"), 400),
    }


def stripes_tree(root, per_class: int, seed: int = 0, size: int = 40):
    """A tiny learnable ImageFolder: hot_dog = horizontal stripes, not_hot_dog = vertical ones, each image
    with its own two colours, period and phase (orientation survives crops, flips and colour jitter)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for label, axis in (("hot_dog", 0), ("not_hot_dog", 1)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            period, phase = int(rng.integers(3, 7)), int(rng.integers(0, 10))
            light = rng.integers(0, 256, 3, dtype=np.uint8)
            colours = np.stack([light, 255 - light])  # contrast enough to survive colour jitter
            bands = ((np.arange(size) + phase) // period) % 2
            mask = bands[:, None] if axis == 0 else bands[None, :]
            pixels = np.where(np.broadcast_to(mask, (size, size))[..., None] == 1, colours[0], colours[1])
            Image.fromarray(pixels.astype(np.uint8)).save(root / label / f"{i:03d}.png")
    return root
