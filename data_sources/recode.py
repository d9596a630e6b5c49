"""How a source file's bytes become the stored photo, one rule per source (sources.json `recode`), as the
data READMEs state. Byte-identical only with the pinned Pillow (13.0.0, libjpeg-turbo 3.2.0): another JPEG
library may differ in bytes, then compare decoded pixels."""
from __future__ import annotations

import io

from PIL import Image, ImageOps

MAX_SHORT_SIDE = 224


def as_is(data: bytes) -> bytes:
    """Kaggle photos: kept byte for byte."""
    return data


def jpeg_q90(data: bytes) -> bytes:
    """hotdog/ extra photos: decoded, RGB, JPEG quality 90 with Pillow's defaults."""
    with Image.open(io.BytesIO(data)) as img:
        return _jpeg(img.convert("RGB"), quality=90)


def small_jpeg_q85(data: bytes) -> bytes:
    """hotdog-more/: EXIF orientation applied, transparency composited on white, RGB, shorter side scaled
    down (LANCZOS) to at most 224 px, JPEG quality 85 with optimize=True."""
    with Image.open(io.BytesIO(data)) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "P"):
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        img = img.convert("RGB")
        short = min(img.size)
        if short > MAX_SHORT_SIDE:
            size = tuple(MAX_SHORT_SIDE if side == short else round(side * MAX_SHORT_SIDE / short) for side in img.size)
            img = img.resize(size, Image.Resampling.LANCZOS)
        return _jpeg(img, quality=85, optimize=True)


def _jpeg(img: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", **options)
    return out.getvalue()


RULES = {"bytes": as_is, "jpeg_q90": jpeg_q90, "small_jpeg_q85": small_jpeg_q85}
