"""open_image: every mode to RGB, upright, fast JPEG draft decoding, and clear errors."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile, JpegImagePlugin, features

from conserviz_utils.errors import ImageLoadError
from conserviz_utils.files.images import ALPHA_BACKGROUND, MAX_IMAGE_PIXELS, open_image, to_rgb


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def mode_of(path) -> str:
    with Image.open(path) as image:
        return image.mode


def textured_jpeg(path, width: int, height: int, seed: int = 0, quality: int = 90):
    """A JPEG with smooth shapes, fine texture and noise, like a photo of leaf litter."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    grain = rng.integers(-16, 17, (height, width, 3), dtype=np.int16)
    picture = np.clip(base + grain, 0, 255).astype(np.uint8)
    Image.fromarray(picture).save(path, quality=quality)
    return path


def full_decode_resized(path, size=(224, 224)) -> Image.Image:
    """The walkthrough's way: decode everything, then resize."""
    with Image.open(path) as image:
        return image.convert("RGB").resize(size, Image.Resampling.BILINEAR)


# --- modes ---------------------------------------------------------------------------------


RGB = np.array([[[200, 30, 60], [10, 220, 90]], [[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)


def test_rgb_image_is_returned_unchanged(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "rgb.png")
    image = open_image(tmp_path / "rgb.png")
    assert image.mode == "RGB"
    assert (pixels(image) == RGB).all()


@pytest.mark.parametrize("mode", ["L", "1"])
def test_gray_and_bilevel_become_three_equal_channels(tmp_path, mode):
    gray = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    Image.fromarray(gray).convert(mode).save(tmp_path / "gray.png")
    out = pixels(open_image(tmp_path / "gray.png"))
    assert out.shape == (2, 2, 3)
    for channel in range(3):
        assert (out[..., channel] == gray).all()


def test_palette_image_keeps_its_colours(tmp_path):
    Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(
        tmp_path / "palette.png"
    )
    assert mode_of(tmp_path / "palette.png") == "P"
    assert (pixels(open_image(tmp_path / "palette.png")) == RGB).all()


def test_palette_with_transparent_index_is_composited_without_warning(tmp_path):
    image = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    transparent_index = image.getpixel((0, 0))
    image.save(tmp_path / "palette.png", transparency=transparent_index)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = pixels(open_image(tmp_path / "palette.png"))
    assert tuple(out[0, 0]) == ALPHA_BACKGROUND
    assert tuple(out[1, 1]) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_onto_grey(tmp_path, mode):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = 255
    rgba[0, 0, 3] = 0  # fully transparent white
    rgba[0, 1, 3] = 255  # opaque white
    rgba[1, :, 3] = 128  # half transparent white
    Image.fromarray(rgba).convert(mode).save(tmp_path / "alpha.png")
    out = pixels(open_image(tmp_path / "alpha.png"))
    assert tuple(out[0, 0]) == ALPHA_BACKGROUND
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert 185 <= out[1, 0, 0] <= 195  # half way between grey 128 and white 255


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.fromarray(RGB).resize((16, 16), Image.Resampling.NEAREST).convert("CMYK").save(
        tmp_path / "cmyk.jpg", quality=100
    )
    assert mode_of(tmp_path / "cmyk.jpg") == "CMYK"
    out = pixels(open_image(tmp_path / "cmyk.jpg"))
    assert out.shape == (16, 16, 3)
    assert np.abs(out[12, 12] - [255, 255, 255]).max() < 12
    assert np.abs(out[12, 3] - [0, 0, 0]).max() < 12


def test_16_bit_grayscale_is_scaled_not_clipped_to_white(tmp_path):
    ramp = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert mode_of(tmp_path / "deep.png").startswith("I;16")
    out = pixels(open_image(tmp_path / "deep.png"))[0, :, 0]
    assert list(out) == [0, 64, 128, 255]


def test_16_bit_big_endian_tiff(tmp_path):
    ramp = np.array([[0, 32768, 65535]], dtype=">u2")
    Image.frombuffer("I;16B", (3, 1), ramp.tobytes(), "raw", "I;16B", 0, 1).save(
        tmp_path / "deep.tif"
    )
    assert list(pixels(open_image(tmp_path / "deep.tif"))[0, :, 0]) == [0, 128, 255]


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I", [0, 100, 255], [0, 100, 255]),  # 8-bit data in a 32-bit image
        ("I", [0, 32768, 65535], [0, 128, 255]),  # 16-bit data (how older Pillow opened PNGs)
        ("I", [-1000, 0, 1000], [0, 128, 255]),  # an unknown range: stretched
        ("I", [100_000, 200_000, 300_000], [0, 128, 255]),  # from its minimum to its maximum
        ("F", [0.0, 0.5, 1.0], [0, 128, 255]),  # a float image in [0, 1]
    ],
)
def test_wide_integer_and_float_images_use_their_natural_range(tmp_path, mode, values, expected):
    dtype = np.int32 if mode == "I" else np.float32
    Image.fromarray(np.array([values], dtype=dtype), mode=None).save(tmp_path / "wide.tif")
    assert mode_of(tmp_path / "wide.tif") == mode
    assert list(pixels(open_image(tmp_path / "wide.tif"))[0, :, 0]) == expected


@pytest.mark.parametrize("mode", ["RGBa", "La", "PA", "YCbCr", "HSV"])
def test_to_rgb_handles_in_memory_modes(mode):
    source = Image.fromarray(RGB).convert("RGBA")
    if mode == "La":
        image = source.convert("LA").convert("La")
    elif mode == "PA":
        image = source.convert("PA")
    else:
        image = source.convert(mode) if mode != "RGBa" else source.convert("RGBa")
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (2, 2)
    if mode in ("RGBa", "YCbCr", "HSV"):
        assert np.abs(pixels(out) - RGB).max() <= 3


# --- orientation ---------------------------------------------------------------------------


UPRIGHT = Image.new("RGB", (48, 32), (0, 0, 255))
UPRIGHT.paste((255, 0, 0), (0, 0, 16, 16))  # a red top-left corner: the picture's landmark

# What a camera stores for each EXIF orientation, given the upright picture.
STORED = {
    1: lambda im: im,
    2: lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    3: lambda im: im.transpose(Image.Transpose.ROTATE_180),
    4: lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    5: lambda im: im.transpose(Image.Transpose.TRANSPOSE),
    6: lambda im: im.transpose(Image.Transpose.ROTATE_90),
    7: lambda im: im.transpose(Image.Transpose.TRANSVERSE),
    8: lambda im: im.transpose(Image.Transpose.ROTATE_270),
}


def write_oriented(path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    STORED[orientation](UPRIGHT).save(path, quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_comes_out_upright(tmp_path, orientation):
    write_oriented(tmp_path / "rotated.jpg", orientation)
    image = open_image(tmp_path / "rotated.jpg")
    assert image.size == (48, 32)
    assert np.abs(pixels(image) - pixels(UPRIGHT)).mean() < 4


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_with_a_target_size_is_upright_at_that_size(tmp_path, orientation):
    write_oriented(tmp_path / "rotated.jpg", orientation)
    image = open_image(tmp_path / "rotated.jpg", target_size=(24, 16))
    assert image.size == (24, 16)
    expected = UPRIGHT.resize((24, 16), Image.Resampling.BILINEAR)
    assert np.abs(pixels(image) - pixels(expected)).mean() < 6


# --- JPEG draft mode -----------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height", "scale"), [(960, 540, 2), (1920, 1080, 4)])
def test_draft_mode_decodes_at_a_reduced_scale_no_smaller_than_the_target(
    tmp_path, monkeypatch, width, height, scale
):
    path = textured_jpeg(tmp_path / "photo.jpg", width, height)
    decoded_sizes = []
    original_load = JpegImagePlugin.JpegImageFile.load

    def spy_load(self):
        decoded_sizes.append(self.size)
        return original_load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", spy_load)
    image = open_image(path, target_size=224)
    assert image.size == (224, 224)
    assert decoded_sizes[0] == (width // scale, height // scale)
    assert min(decoded_sizes[0]) >= 224


def test_draft_mode_does_not_reduce_below_the_target(tmp_path, monkeypatch):
    # 640×360 → 224: halving would give 180 rows, fewer than 224, so it decodes in full.
    path = textured_jpeg(tmp_path / "photo.jpg", 640, 360)
    decoded_sizes = []
    original_load = JpegImagePlugin.JpegImageFile.load
    monkeypatch.setattr(
        JpegImagePlugin.JpegImageFile,
        "load",
        lambda self: (decoded_sizes.append(self.size), original_load(self))[1],
    )
    open_image(path, target_size=224)
    assert decoded_sizes[0] == (640, 360)


@pytest.mark.parametrize(("width", "height"), [(640, 360), (960, 540), (965, 541), (2048, 1536)])
def test_draft_decode_looks_the_same_as_a_full_decode(tmp_path, width, height):
    path = textured_jpeg(tmp_path / "photo.jpg", width, height)
    fast = pixels(open_image(path, target_size=224))
    reference = pixels(full_decode_resized(path))
    assert fast.shape == reference.shape == (224, 224, 3)
    assert np.abs(fast - reference).mean() < 2.5  # of 255 levels


def test_draft_decode_of_a_grayscale_jpeg(tmp_path):
    textured_jpeg(tmp_path / "color.jpg", 960, 540)
    with Image.open(tmp_path / "color.jpg") as color:
        color.convert("L").save(tmp_path / "ir.jpg", quality=90)
    fast = open_image(tmp_path / "ir.jpg", target_size=224)
    assert fast.mode == "RGB"
    assert np.abs(pixels(fast) - pixels(full_decode_resized(tmp_path / "ir.jpg"))).mean() < 2.5


def test_draft_decode_on_real_camera_trap_photos(shared_dir):
    manifest = shared_dir / "real_camtrap" / "manifest.csv"
    if not manifest.is_file():
        pytest.skip("../shared/real_camtrap is absent")
    listed = pd.read_csv(manifest)["path"]
    # The largest photos gain most from draft mode and differ most from a full decode.
    paths = sorted(
        (shared_dir / "real_camtrap" / p for p in listed),
        key=lambda p: p.stat().st_size,
        reverse=True,
    )[:4]
    for path in paths:
        fast = pixels(open_image(path, target_size=224))
        reference = pixels(full_decode_resized(path))
        # A few levels of 255: less than the change from swapping bilinear for Lanczos.
        assert np.abs(fast - reference).mean() < 4, path


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "TIFF"])
def test_target_size_resizes_every_format(tmp_path, fmt):
    Image.fromarray(RGB).resize((300, 200)).save(tmp_path / f"picture.{fmt.lower()}", fmt)
    assert open_image(tmp_path / f"picture.{fmt.lower()}", target_size=(64, 32)).size == (64, 32)


def test_target_size_must_be_positive(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="positive"):
        open_image(tmp_path / "rgb.png", target_size=(0, 10))


# --- odd but valid files -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF"])
def test_other_formats_named_jpg_simply_work(tmp_path, fmt):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("this Pillow has no WebP support")
    Image.fromarray(RGB).resize((8, 8), Image.Resampling.NEAREST).save(
        tmp_path / "photo.jpg", fmt, **({"lossless": True} if fmt == "WEBP" else {})
    )
    image = open_image(tmp_path / "photo.jpg", target_size=4)
    assert image.mode == "RGB" and image.size == (4, 4)
    full = open_image(tmp_path / "photo.jpg")
    assert (pixels(full)[::4, ::4] == RGB).all()


def test_one_pixel_image(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "dot.jpg", quality=100)
    assert open_image(tmp_path / "dot.jpg").size == (1, 1)
    enlarged = open_image(tmp_path / "dot.jpg", target_size=224)
    assert enlarged.size == (224, 224)
    assert np.abs(pixels(enlarged)[100, 100] - [10, 20, 30]).max() <= 3


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux's /proc")
def test_files_are_closed_while_the_images_live_on(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "rgb.png")
    Image.fromarray(RGB).save(
        tmp_path / "animated.gif", save_all=True, append_images=[Image.fromarray(RGB[::-1])]
    )
    textured_jpeg(tmp_path / "photo.jpg", 64, 48)
    before = len(os.listdir("/proc/self/fd"))
    images = [open_image(tmp_path / name) for name in ("rgb.png", "animated.gif", "photo.jpg")]
    assert len(os.listdir("/proc/self/fd")) == before
    assert [image.size for image in images] == [(2, 2), (2, 2), (64, 48)]


# --- broken files --------------------------------------------------------------------------


def assert_clear(error: ImageLoadError, path, *phrases: str) -> None:
    message = str(error)
    assert str(path) in message
    assert "Fix:" in message
    for phrase in phrases:
        assert phrase in message


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError) as caught:
        open_image(tmp_path / "ZJ000000.jpg")
    assert_clear(caught.value, tmp_path / "ZJ000000.jpg", "not found")


def test_folder_instead_of_file(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ImageLoadError) as caught:
        open_image(tmp_path / "folder.jpg")
    assert_clear(caught.value, tmp_path / "folder.jpg", "folder")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageLoadError) as caught:
        open_image(tmp_path / "empty.jpg")
    assert_clear(caught.value, tmp_path / "empty.jpg", "0 bytes")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_jpeg(tmp_path, keep):
    whole = textured_jpeg(tmp_path / "whole.jpg", 320, 180).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(ImageLoadError) as caught:
        open_image(tmp_path / "cut.jpg")
    assert_clear(caught.value, tmp_path / "cut.jpg", "truncated")
    assert isinstance(caught.value, OSError)  # callers catching OSError keep working


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "photo.jpg").write_text("<html><body>404 Not Found</body></html>\n")
    with pytest.raises(ImageLoadError) as caught:
        open_image(tmp_path / "photo.jpg")
    assert_clear(caught.value, tmp_path / "photo.jpg", "not an image", "text file", "<html>")


def test_git_lfs_pointer_named_jpg(tmp_path):
    (tmp_path / "photo.jpg").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12345\n"
    )
    with pytest.raises(ImageLoadError, match="git lfs pull"):
        open_image(tmp_path / "photo.jpg")


def test_binary_garbage_named_jpg(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ImageLoadError) as caught:
        open_image(tmp_path / "photo.jpg")
    assert_clear(caught.value, tmp_path / "photo.jpg", "not an image")
    assert "text file" not in str(caught.value)


# --- decompression bombs -------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size: a decompression bomb's first bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG with its frame header patched to claim another size."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 60)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"\xff\xc0")  # SOF0: length(2) precision(1) height(2) width(2)
    data[start + 5 : start + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any pixel data is decoded."""

    def refuse(self):
        raise AssertionError("a refused image must not be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize(
    ("make", "width", "height"),
    [
        (png_claiming, 100_000, 100_000),  # far above Pillow's own limit
        (png_claiming, 10_000, 10_000),  # above Pillow's warning, below its error
        (jpeg_claiming, 9_000, 9_000),  # 81 MP: below Pillow's warning, above ours
        (jpeg_claiming, 65_000, 65_000),
    ],
)
def test_decompression_bomb_is_refused_before_decoding(tmp_path, no_decoding, make, width, height):
    (tmp_path / "bomb.jpg").write_bytes(make(width, height))
    assert (tmp_path / "bomb.jpg").stat().st_size < 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        with pytest.raises(ImageLoadError) as caught:
            open_image(tmp_path / "bomb.jpg")
    assert_clear(caught.value, tmp_path / "bomb.jpg", "too large")
    assert width * height > MAX_IMAGE_PIXELS


def test_max_pixels_limit_is_a_parameter(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "square.png")
    with pytest.raises(ImageLoadError, match="100×100"):
        open_image(tmp_path / "square.png", max_pixels=9_999)
    assert open_image(tmp_path / "square.png", max_pixels=10_000).size == (100, 100)
