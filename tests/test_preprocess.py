import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from model_src.preprocess import (MAX_ASPECT_RATIO, ImageError, PreprocessSpec, bytes_to_tensor, decode_image,
                                  image_to_uint8, normalize, pil_to_uint8, resize_and_crop)

from conftest import SAMPLE
from imagegen import encode

SPEC = PreprocessSpec()
JPEG = next(SAMPLE.glob("hot_dog/*.jpg")).read_bytes()


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


def test_spec_refuses_a_resize_nothing_performs():
    with pytest.raises(ValueError, match="bilinear"):
        PreprocessSpec(interpolation="bicubic")


def test_resize_keeps_aspect_then_center_crops():
    # Left half red, right half blue, 400x200: the center crop must keep both halves equally.
    img = Image.new("RGB", (400, 200), (255, 0, 0))
    img.paste((0, 0, 255), (200, 0, 400, 200))
    x = image_to_uint8(img, SPEC)
    assert x.shape == (3, SPEC.input_size, SPEC.input_size)
    assert x[0, :, :10].float().mean() > 250 and x[2, :, -10:].float().mean() > 250


def pil_resize_and_crop(img: Image.Image, resize_size: int, crop_size: int) -> torch.Tensor:
    """The reference the spec names: PIL's antialiased bilinear resize, then the same center crop."""
    width, height = img.size
    scale = resize_size / min(width, height)
    new_w, new_h = max(crop_size, round(width * scale)), max(crop_size, round(height * scale))
    left, top = (new_w - crop_size) // 2, (new_h - crop_size) // 2
    return pil_to_uint8(img.resize((new_w, new_h), Image.BILINEAR).crop((left, top, left + crop_size,
                                                                           top + crop_size)))


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=g)
    return Image.frombytes("RGB", size, pixels.numpy().tobytes())


@pytest.mark.parametrize("case", [p.name for p in sorted(SAMPLE.glob("*/*.jpg"))] +
                         ["1x1", "3x7", "50x40", "144x144", "4000x200", "200x4000", "1000x800"])
def test_resize_is_within_one_grey_level_of_pil(case):
    if "x" in case and not case.endswith(".jpg"):  # upscaling, exact fit and extreme aspect ratios
        img = noise(tuple(int(v) for v in case.split("x")))
    else:
        img = decode_image(next(SAMPLE.glob(f"*/{case}")).read_bytes())
    ours = resize_and_crop(pil_to_uint8(img), SPEC.resize_size, SPEC.input_size)
    reference = pil_resize_and_crop(img, SPEC.resize_size, SPEC.input_size)
    assert ours.shape == reference.shape == (3, SPEC.input_size, SPEC.input_size) and ours.is_contiguous()
    assert (ours.int() - reference.int()).abs().max() <= 1


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


@pytest.mark.parametrize("size", [(1, 3000), (30000, 2)])
def test_a_strip_is_refused_before_the_resize_blows_it_up(size):
    strip = encode(Image.new("L", size), "PNG")  # ~100 bytes; resized whole it would take 0.5-5 GB
    with pytest.raises(ImageError) as err:
        decode_image(strip)
    assert err.value.status == 400 and f"{MAX_ASPECT_RATIO}:1" in str(err.value)


def test_a_panorama_within_the_aspect_limit_is_a_photo():
    img = decode_image(encode(Image.new("RGB", (MAX_ASPECT_RATIO * 20, 20), (90, 40, 10)), "PNG"))
    assert image_to_uint8(img, SPEC).shape == (3, SPEC.input_size, SPEC.input_size)


@pytest.mark.parametrize("mode,key,opaque", [("L", 0, 200), ("RGB", (10, 20, 30), (200, 100, 50)), ("P", 0, 1)])
def test_a_transparent_colour_is_composited_on_white(mode, key, opaque):
    """PNGs can mark one colour transparent (tRNS) without an alpha channel; an app draws it on white."""
    img = Image.new(mode, (40, 30), key)
    if mode == "P":
        img.putpalette([10, 20, 30, 200, 100, 50])
    img.paste(opaque, (20, 0, 40, 30))  # right half opaque
    out = pil_to_uint8(decode_image(encode(img, "PNG", transparency=key)))
    assert out[:, :, :20].eq(255).all()  # the transparent half
    assert not out[:, :, 20:].eq(255).any()


@pytest.mark.parametrize("path", sorted(SAMPLE.glob("*/*.jpg")), ids=lambda p: p.name)
def test_jpeg_draft_keeps_the_resize_covered_and_close(path):
    data = path.read_bytes()
    full, draft = decode_image(data), decode_image(data, draft_min_side=SPEC.resize_size)
    assert min(draft.size) >= SPEC.resize_size
    # The largest DCT reduction (8, 4, 2, 1) that keeps both sides >= draft_min_side must be taken.
    room = min(side // SPEC.resize_size for side in full.size)
    scale = next(s for s in (8, 4, 2, 1) if s <= room)
    assert draft.size == tuple((side + scale - 1) // scale for side in full.size)
    diff = image_to_uint8(full, SPEC).float() - image_to_uint8(draft, SPEC).float()
    # A few grey levels on average (6 at most on these photos); what it does to accuracy is measured by
    # `make bench-serve` (served_accuracy), which is where the option is chosen.
    assert diff.abs().mean() < 8


def test_jpeg_draft_leaves_other_formats_and_rotation_alone():
    upright = decode_image(JPEG).resize((800, 600))
    png = encode(upright, "PNG")
    assert decode_image(png, draft_min_side=100).size == (800, 600)
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = encode(upright.rotate(90, expand=True), "JPEG", quality=95, exif=exif.tobytes())
    assert decode_image(sideways, draft_min_side=250).size == (400, 300)  # 1/2 scale, then turned upright


def test_jpeg_draft_covers_mpo_the_jpeg_many_iphones_write():
    first, second = decode_image(JPEG).resize((800, 600)), Image.new("RGB", (800, 600))
    mpo = encode(first, "MPO", save_all=True, append_images=[second], quality=95)
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    draft = decode_image(mpo, draft_min_side=250)
    assert draft.size == (400, 300)  # 1/2 scale, like a JPEG
    assert pil_to_uint8(draft).float().mean() > 20  # the photo (frame 1), not the black frame
