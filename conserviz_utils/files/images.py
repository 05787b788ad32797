"""Safe, fast image decoding: every file becomes an upright RGB image or a clear ImageLoadError."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, JpegImagePlugin

from conserviz_utils.errors import ImageLoadError

#: Largest image (width × height) that `open_image` decodes by default: 64 megapixels, about
#: 190 MB as RGB. Real camera traps top out near 5 MP (2592×1944); anything far larger is
#: more likely a corrupt or malicious header than a photo.
MAX_IMAGE_PIXELS = 64_000_000

#: Transparent areas are composited onto this grey: it is close to the ImageNet mean, so a
#: see-through region reads as "nothing here" to a pretrained network rather than as black.
ALPHA_BACKGROUND = (128, 128, 128)

# How to turn each EXIF orientation upright (Pillow's ImageOps.exif_transpose table, applied
# here to the converted image, which no longer carries the file's EXIF block).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Orientations 5–8 swap width and height, so a decode target must be swapped with them.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}

_REEXTRACT_FIX = (
    "extract the image again from the original archive (competition.zip), or remove its row "
    "from the CSV"
)


def open_image(
    path: str | os.PathLike,
    *,
    target_size: int | tuple[int, int] | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Image.Image:
    """Open an image file (whatever its extension says) as a loaded, upright 8-bit RGB Pillow image.

    Every mode is converted sensibly (`to_rgb`), EXIF orientation applied, and the header's size
    checked against ``max_pixels`` before any pixel is decoded. With ``target_size`` (``(width,
    height)`` or an int for a square) a JPEG decodes at the strongest DCT reduction that keeps it
    no smaller than the target, then is resized: 2× faster at 960×540, 3–4× on 5–10 MP photos.

    Raises:
        ImageLoadError: The file is missing, empty, truncated, not an image, or too large.
    """
    path = Path(path)
    size = as_size(target_size)
    check_image_file(path)
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning is replaced by the clear size check below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise _too_large(path, f"Pillow refused it: {exc}", max_pixels) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageLoadError(
            f"not an image Pillow can read{_describe_start(path)}",
            path=path,
            fix=_REEXTRACT_FIX,
        ) from exc
    except OSError as exc:
        raise ImageLoadError(f"cannot be read ({exc})", path=path, fix=_REEXTRACT_FIX) from exc

    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise _too_large(path, f"its header claims {width}×{height} pixels", max_pixels)
        try:
            return _decode(image, size)
        except MemoryError as exc:
            raise _too_large(path, "decoding it ran out of memory", max_pixels) from exc
        except Exception as exc:  # noqa: BLE001  (any decoder failure means a broken file)
            raise ImageLoadError(
                f"is truncated, corrupt or of an unsupported kind: decoding failed "
                f"({type(exc).__name__}: {exc})",
                path=path,
                fix=_REEXTRACT_FIX,
            ) from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """A loaded image of any Pillow mode as 8-bit RGB: wide modes scaled to 0–255 (not clipped), alpha on grey."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(image), image.mode)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        # Through RGBA, or Pillow warns and the transparent colour leaks into the picture.
        image = image.convert("RGBA")
    if not {"A", "a"} & set(image.getbands()):
        return image.convert("RGB")
    if image.mode == "La":
        image = image.convert("LA")  # Pillow un-premultiplies La only towards LA
    background = Image.new("RGBA", image.size, (*ALPHA_BACKGROUND, 255))
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


def _decode(image: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    """Decode an opened image (via JPEG draft mode when it pays), upright, RGB, resized."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    # Resize in the file's own orientation, then turn upright: the same pixels either way,
    # and the draft request and its box are both in the file's orientation.
    file_size = size[::-1] if size and orientation in _TRANSPOSING_ORIENTATIONS else size
    box = None
    if file_size is not None and isinstance(image, JpegImagePlugin.JpegImageFile):
        drafted = image.draft("RGB", file_size)
        if drafted is not None and drafted[1][2:] != image.size:
            box = drafted[1]  # the reduced decode's exact extent, for a sub-pixel-true resize
    image.load()
    image = to_rgb(image)
    if file_size is not None and (image.size != file_size or box is not None):
        image = image.resize(file_size, Image.Resampling.BILINEAR, box=box)
    if orientation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[orientation])
    return image


def _scale_to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Map 16-bit, 32-bit or float pixels to 0–255 by their type's natural range."""
    pixels = np.nan_to_num(pixels.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    else:
        low, high = float(pixels.min()), float(pixels.max())
        if mode == "F" and low >= 0.0 and high <= 1.0:
            low, high = 0.0, 1.0  # float images in [0, 1]
        elif low >= 0.0 and high <= 255.0:
            low, high = 0.0, 255.0  # 8-bit data stored in a wider mode
        elif low >= 0.0 and high <= 65535.0:
            low, high = 0.0, 65535.0  # 16-bit data (older Pillow opens 16-bit PNGs as "I")
        # otherwise: an unknown range, stretched from its minimum to its maximum
    scaled = (pixels - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def check_image_file(path: Path) -> None:
    """Raise a clear ImageLoadError when the path is missing, a folder, or an empty file."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ImageLoadError(
            "image file not found",
            path=path,
            fix="check the filepath column against the image folder, or extract the images "
            "again from competition.zip",
        ) from None
    except OSError as exc:
        raise ImageLoadError(f"cannot be read ({exc})", path=path, fix=_REEXTRACT_FIX) from exc
    if not path.is_file():
        raise ImageLoadError("is a folder, not an image file", path=path, fix=_REEXTRACT_FIX)
    if stat.st_size == 0:
        raise ImageLoadError(
            "is empty (0 bytes): the download or extraction was interrupted",
            path=path,
            fix=_REEXTRACT_FIX,
        )


def _describe_start(path: Path) -> str:
    """Say what the file looks like when it is not an image, e.g. a text or HTML page."""
    try:
        with open(path, "rb") as file:
            head = file.read(64)
    except OSError:
        return ""
    if head.startswith(b"version https://git-lfs"):
        return " (it is a Git LFS pointer: run `git lfs pull` to fetch the real file)"
    # Text if (nearly) every byte decodes; the last character may be cut by the 64-byte read.
    text = head.decode("utf-8", errors="ignore")
    if len(text.encode("utf-8")) < len(head) - 3 or not text.strip():
        return ""
    if not all(character.isprintable() or character.isspace() for character in text):
        return ""
    return f" (it is a text file starting {text.strip().splitlines()[0][:40]!r})"


def _too_large(path: Path, why: str, max_pixels: int) -> ImageLoadError:
    """The error for an image refused as a possible decompression bomb."""
    return ImageLoadError(
        f"refused as too large to decode safely: {why}, the limit is {max_pixels:,} pixels",
        path=path,
        fix="if the photo is genuine, shrink it first or pass a larger max_pixels",
    )


def as_size(target_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """Normalise an int or (width, height) target to a (width, height) tuple of ints ≥ 1."""
    if target_size is None:
        return None
    if isinstance(target_size, int):
        target_size = (target_size, target_size)
    width, height = (int(s) for s in target_size)
    if width < 1 or height < 1:
        raise ValueError(f"target_size must be positive, got {target_size!r}")
    return width, height


# Infrared night shots are stored as RGB JPEGs whose three channels are (almost) equal; colour
# day shots differ by tens of levels. Half a level on average separates them with room to spare.
_NIGHT_CHANNEL_SPREAD = 4.0


def is_night_shot(image: Image.Image) -> bool:
    """True for a grayscale (infrared, flash-lit) image, even when it is stored as RGB."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    spread = (pixels.max(axis=2) - pixels.min(axis=2)).mean()
    return bool(spread < _NIGHT_CHANNEL_SPREAD)


def describe_images(features, max_images: int | None = 2000, seed: int = 0):
    """``width``, ``height`` (as stored) and ``night`` of each image by id (a seeded subset of ``max_images``)."""
    import pandas as pd

    if max_images is not None and len(features) > max_images:
        features = features.sample(n=max_images, random_state=seed)
    rows = []
    for image_id, path in features["path"].items():
        # A thumbnail is enough to tell grey from colour, and JPEG draft mode makes it cheap.
        # open_image first: an unreadable file raises our ImageLoadError, not Pillow's.
        night = is_night_shot(open_image(path, target_size=(64, 64)))
        with Image.open(path) as header:
            width, height = header.size
        rows.append((image_id, width, height, night))
    return pd.DataFrame(rows, columns=["id", "width", "height", "night"]).set_index("id")
