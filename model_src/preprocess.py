"""The one preprocessing spec: how a photo becomes ResNN's input tensor.

Training (eval transform and image cache), the TorchServe handler, the ExecuTorch export and the
iOS sample all read it. It imports only PIL and torch (no training code) so it can ship inside the .mar.
The spec of a trained model is saved as `preprocess.json` next to its weights.
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

SPEC_FILE = "preprocess.json"
# A 12 MP phone photo is 12e6 pixels; anything far beyond it is a decompression bomb, not a photo.
DEFAULT_MAX_PIXELS = 40_000_000
# Resizing scales the shorter side up or down to resize_size, so a 1 x 30000 strip (a 100-byte PNG)
# would become a 164 x 4.9M image, gigabytes of memory; a photo, even a panorama, stays far below it.
MAX_ASPECT_RATIO = 50


# The class the product answers about ("is it a hot dog?"): the handler's is_hotdog and the iOS app's.
HOTDOG_LABEL = "hot_dog"


@dataclass(frozen=True)
class PreprocessSpec:
    labels: tuple[str, ...] = ("hot_dog", "not_hot_dog")
    input_size: int = 128  # square side of the model input
    resize_size: int = 146  # shorter side is resized to this, then center-cropped to input_size
    interpolation: str = "bilinear"  # antialiased when shrinking (resize_and_crop)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    max_pixels: int = DEFAULT_MAX_PIXELS
    layout: str = field(default="NCHW float32 RGB, normalized", compare=False)

    def __post_init__(self):
        if self.interpolation != "bilinear":  # the one resize resize_and_crop (and the iOS sample) performs
            raise ValueError(f"interpolation {self.interpolation!r}: only 'bilinear' is implemented")

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / SPEC_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        d = dict(d)
        for key in ("labels", "mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> "PreprocessSpec":
        path = Path(path)
        if path.is_dir():
            path = path / SPEC_FILE
        return cls.from_dict(json.loads(path.read_text()))


class ImageError(ValueError):
    """An input that is not a usable image. `status` is the HTTP-style code a server should answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# What a refused upload most likely is, named in the error: (test on the first bytes, name).
_NOT_IMAGES = (
    (lambda h: h[4:8] == b"ftyp" and h[8:12] in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"),
     "a HEIC/HEIF photo (the iPhone default), which this server does not read: send JPEG "
     "(iPhone: Settings > Camera > Formats > Most Compatible)"),
    (lambda h: h.startswith(b"%PDF"), "a PDF document"),
    (lambda h: h.startswith(b"PK\x03\x04"), "a ZIP archive"),
    (lambda h: b"<svg" in h.lower(), "an SVG drawing (vector images are not accepted)"),
    (lambda h: h.lstrip().lower().startswith((b"<!doctype html", b"<html")), "an HTML page"),
)


def _what_it_is(data: bytes) -> str:
    head = data[:512]
    return next((name for test, name in _NOT_IMAGES if test(head)), "")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_min_side: int | None = None) -> Image.Image:
    """Bytes -> upright RGB PIL image; raises ImageError with a clear message for anything else.

    draft_min_side: let a JPEG decode at 1/2, 1/4 or 1/8 scale inside the DCT, as long as its shorter
    side stays >= draft_min_side (pass the spec's resize_size). About twice as fast on 512 px photos,
    but the pixels differ slightly from a full decode, so it is a server option (model-config.yaml
    `handler: {jpeg_draft: true}`) measured by `make bench-serve`, not part of the reference spec.
    """
    if not data:
        raise ImageError("empty input: no image bytes received (POST the image as the request body)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        what = _what_it_is(data)
        raise ImageError(f"not an image: {'this is ' + what + '; ' if what else ''}"
                         "expected JPEG, PNG, WebP, BMP or GIF bytes", 415) from None
    except Image.DecompressionBombError as e:  # PIL's own hard limit
        raise ImageError(f"image too large: {e}", 413) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for malformed headers
        raise ImageError(f"unreadable image: {e}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} pixels exceeds the limit of {max_pixels}", 413
        )
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        raise ImageError(f"unsupported shape: {width}x{height} pixels is wider than {MAX_ASPECT_RATIO}:1, "
                         "not a photo")
    if draft_min_side and img.format in ("JPEG", "MPO"):  # MPO: a JPEG with extra frames (many iPhone shots)
        img.draft(None, (draft_min_side, draft_min_side))  # picks the largest reduction keeping both sides >= it
    try:
        img.seek(0)  # first frame of an animated GIF/WebP
        img = ImageOps.exif_transpose(img)  # phone photos are stored sideways with an EXIF flag
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:  # also L/RGB/P with a tRNS colour
            # Composite transparency on white instead of trusting whatever colour hides under alpha=0.
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16/32-bit grayscale: convert("RGB") would clip everything above 255 to white.
            img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
        else:
            img = img.convert("RGB")  # grayscale, CMYK, palette
    except Exception as e:  # noqa: BLE001 - truncated data surfaces only when pixels are decoded
        raise ImageError(f"corrupt or truncated image: {e}") from None
    return img


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, H, W) (a channels-last view of the pixel bytes)."""
    w, h = img.size
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1)


def resize_and_crop(image: torch.Tensor, resize_size: int, crop_size: int) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, crop, crop): the shorter side resized to resize_size (aspect kept),
    then the center crop_size x crop_size.

    Bilinear, antialiased when shrinking, by torch's uint8 kernel: within 1 grey level of PIL's
    Image.resize(BILINEAR) (tests/test_preprocess.py holds it to that) at a third of its time, which
    the server pays per request. Fastest on the channels-last view pil_to_uint8 returns.
    """
    height, width = image.shape[-2:]
    scale = resize_size / min(width, height)
    new_w, new_h = max(crop_size, round(width * scale)), max(crop_size, round(height * scale))
    resized = torch.nn.functional.interpolate(image[None], size=(new_h, new_w), mode="bilinear",
                                              antialias=True, align_corners=False)[0]
    left, top = (new_w - crop_size) // 2, (new_h - crop_size) // 2
    return resized[:, top:top + crop_size, left:left + crop_size].contiguous()


def normalize(batch_uint8: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 normalized, as the model expects."""
    mean = torch.tensor(spec.mean).view(3, 1, 1) * 255.0
    std = torch.tensor(spec.std).view(3, 1, 1) * 255.0
    return (batch_uint8.float() - mean) / std


def image_to_uint8(img: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """Upright RGB image -> uint8 model-size tensor (3, S, S): the part an app must reproduce."""
    return resize_and_crop(pil_to_uint8(img), spec.resize_size, spec.input_size)


def image_to_tensor(img: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """Upright RGB image -> normalized float tensor (3, S, S), identical in evaluation and serving."""
    return normalize(image_to_uint8(img, spec), spec)


def bytes_to_tensor(data: bytes, spec: PreprocessSpec) -> torch.Tensor:
    return image_to_tensor(decode_image(data, spec.max_pixels), spec)
