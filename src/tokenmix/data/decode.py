"""Decode image files to 8-bit RGB with Pillow, converting every mode correctly, or fail loudly.

A long training run must never die or quietly learn from garbage because of one bad file, so
decoding has exactly two outcomes: a correct RGB image, or :class:`BadImageError` naming the file
and the reason. What to do with the error is the dataset's ``bad_images`` policy (``"error"``
stops the run, ``"skip"`` drops the sample and counts it; see :mod:`tokenmix.data.loader`).

Conversions (``Image.convert("RGB")`` alone gets several of these wrong):

- ``RGB``: unchanged. ``L``, ``1``, ``CMYK``, ``YCbCr``, ``HSV``, ``LAB``: Pillow's conversion
  (Adobe-inverted CMYK JPEGs are un-inverted by Pillow at decode time).
- 16-bit (``I;16``, ``I;16B``, ``I;16L``, ``I`` with values in 0..65535): rescaled to 0..255
  (``round(v * 255 / 65535)``); Pillow's own conversion would clip everything above 255 to white.
  ``I`` with values outside 0..65535 and float images (``F``) have no defined display range and
  are rejected.
- Alpha (``RGBA``, ``LA``, ``La``, ``RGBa``, ``PA``, palette with a transparency entry):
  composited over an opaque ``background`` (white by default, as a browser shows a transparent
  image on a page). Dropping alpha instead, as ``convert("RGB")`` does, exposes whatever colour
  the encoder left under transparent pixels (often black, sometimes noise).
- Multi-frame files (GIF, TIFF): the first frame.

Not applied, to match the torchvision/timm ImageNet pipelines the official results were trained
with: EXIF orientation and ICC colour profiles. Truncated files raise unless a caller has set
Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES``.

Decompression bombs raise :class:`BadImageError` before any pixel is decoded: the size in the
file's header is checked against ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`). Pillow's own
guard is not enough: below twice ``Image.MAX_IMAGE_PIXELS`` (179 M pixels) it only warns, so a
164 KB PNG of 13000 x 13000 pixels takes about 1.8 GB to decode, in every loader worker that
meets it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

BAD_IMAGE_POLICIES = ("error", "skip")
WHITE = (255, 255, 255)
_ALPHA_MODES = {"RGBA", "LA", "La", "RGBa", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}

# 2**26 = 67 M pixels (8192 x 8192): above the photos of full-frame cameras (61 MP at most), so
# real photographs pass, while one decoded RGB image stays near 200 MB per loader worker.
# Pillow itself only warns up to 179 M pixels and errors beyond.
DEFAULT_MAX_PIXELS = 2**26


class BadImageError(ValueError):
    """A file that cannot be decoded into a correct RGB image; the message names the file.

    Takes one message argument so it survives being re-raised from a DataLoader worker.
    """


def check_bad_images_policy(policy: str) -> str:
    """Return ``policy`` if it is a known bad-image policy, else raise naming the choices."""
    if policy not in BAD_IMAGE_POLICIES:
        raise ValueError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, got {policy!r}")
    return policy


def decode_image(
    source: str | Path | bytes,
    *,
    name: str | None = None,
    draft_size: tuple[int, int] | None = None,
    background: tuple[int, int, int] = WHITE,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Read and fully decode an image file (or its bytes) into an 8-bit RGB ``PIL.Image``.

    Args:
        source: a file path, or the encoded bytes.
        name: how errors name the file (defaults to the path; required to be useful for bytes).
        draft_size: if given, let the JPEG decoder downscale by 1/2, 1/4 or 1/8 while decoding,
            keeping both sides at least this ``(width, height)``. Several times faster for large
            photos that are resized down anyway; off for evaluation so results match a full decode.
        background: colour that transparent pixels are composited over.
        max_pixels: refuse images whose header declares more pixels (width x height) than this,
            before decoding them (decompression bombs); ``None`` leaves only Pillow's own limit.

    Raises:
        BadImageError: empty, truncated, not an image, larger than ``max_pixels``, or a mode
            without a defined RGB meaning.
    """
    label = (
        name if name is not None else (str(source) if not isinstance(source, bytes) else "<bytes>")
    )
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(fp) as img:
            width, height = img.size  # from the header: nothing is decoded yet
            if max_pixels is not None and width * height > max_pixels:
                raise BadImageError(
                    f"{label}: {width}x{height} = {width * height:,} pixels exceeds max_pixels "
                    f"{max_pixels:,}; refused unread as a possible decompression bomb "
                    "(raise data.max_pixels if such images are expected)"
                )
            if draft_size is not None and img.format == "JPEG" and img.mode in ("RGB", "L"):
                img.draft(img.mode, draft_size)
            img.load()
            return to_rgb(img, name=label, background=background)
    except BadImageError:
        raise
    except Exception as err:
        # OSError covers UnidentifiedImageError (empty / not an image) and truncated data;
        # Pillow's plugins raise many other types (struct.error, SyntaxError, IndexError, ...)
        # on malformed files, and every one of them means this file, not the program, is bad.
        raise BadImageError(f"{label}: cannot decode image ({type(err).__name__}: {err})") from err


def to_rgb(
    img: Image.Image, *, name: str = "<image>", background: tuple[int, int, int] = WHITE
) -> Image.Image:
    """Convert a loaded image of any supported mode to 8-bit RGB (rules in the module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode in _SIXTEEN_BIT_MODES:
        return Image.fromarray(_sixteen_to_eight(np.asarray(img), name, mode)).convert("RGB")
    if mode == "F":
        raise BadImageError(f"{name}: float image (mode F) has no defined 8-bit range")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        # premultiplied La has no direct route to RGBA in Pillow; un-premultiply via LA first
        rgba = (img.convert("LA") if mode == "La" else img).convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise BadImageError(f"{name}: cannot convert mode {mode} to RGB ({err})") from err


def _sixteen_to_eight(arr: np.ndarray, name: str, mode: str) -> np.ndarray:
    values = arr.astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise BadImageError(
            f"{name}: {mode} image with values in [{values.min()}, {values.max()}], "
            "outside the 16-bit range 0..65535"
        )
    return ((values * 255 + 32767) // 65535).astype(np.uint8)
