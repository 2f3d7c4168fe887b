"""Decoding image files into the pixels a backbone expects: 8-bit ``"RGB"`` (or ``"L"``).

PIL opens files in many modes, and ``Image.convert("RGB")`` is wrong for several of them: a
16-bit grayscale PNG (``"I;16"``) is clipped to 255 and comes out all white, a float image
(``"F"``) is clipped too, and transparent pixels of ``"RGBA"`` / ``"P"`` images show whatever
colour they happen to store. :func:`decode_image` handles each mode explicitly and refuses the
ones it cannot decode correctly, so the data modules and prediction read pixels the same way.
"""

from __future__ import annotations

from pathlib import Path
import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from tl_lightning.errors import ConfigurationError, DataError

__all__ = ["decode_image", "READ_ERRORS"]

#: What PIL raises for a missing, truncated or corrupt file.
READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError)

_WHITE = (255, 255, 255)
# converted by PIL itself, correctly: "1" -> 0 / 255, YCbCr (JPEG full range) and HSV -> RGB,
# RGBX drops its padding byte, CMYK -> RGB with the usual uncalibrated formula
# R = (255 - K) * (1 - C / 255) (no ICC colour management)
_PIL_CONVERTS = ("RGB", "L", "1", "YCbCr", "HSV", "RGBX", "CMYK")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


def decode_image(source: str | Path | Image.Image, channels: int = 3) -> Image.Image:
    """Read an image file (or convert a PIL image) to 8-bit ``"RGB"`` (``channels=3``) or ``"L"`` (``1``).

    Every mode PIL reads is handled explicitly:

    * ``"RGB"``, ``"L"``, ``"1"`` (0 / 255), ``"YCbCr"``, ``"HSV"``, ``"RGBX"``, ``"CMYK"``
      (uncalibrated ``R = (255 - K)(1 - C/255)``, no ICC profile): PIL's own conversion.
    * 16-bit grayscale (``"I;16"``, ``"I;16L"``, ``"I;16B"``, ``"I;16N"``, and ``"I"`` read
      from 16-bit PNG / PGM / TIFF files): scaled to 8 bit by the file's bit depth
      (``round(v * 255 / (2**bits - 1))``; 16 bits, or a TIFF's ``BitsPerSample`` such as 12),
      never clipped. A 32-bit integer image (or an in-memory ``"I"`` image, whose bit depth is
      unknown) is refused.
    * Float (``"F"``): values in ``[0, 1]`` are intensities and scaled by 255. Any other range
      is refused: there is no single correct mapping (scaling each image by its own min / max
      would change what equal values mean from one image to the next).
    * Transparency (``"RGBA"``, ``"LA"``, ``"PA"``, premultiplied ``"RGBa"`` / ``"La"``, and
      ``"P"`` palettes with a transparent colour): composited over a white background, as
      image viewers show it. Dropping the alpha channel instead would expose the arbitrary
      colour that fully transparent pixels store.
    * ``"LAB"`` is refused (PIL's conversion is not a colour transform); so is any other mode.

    Files are decoded fully (a truncated file fails here, not mid-training), their EXIF
    orientation is applied (a photo taken sideways comes out as viewers show it), and the first
    frame of an animated / multi-page file is used.

    Args:
        source: A file path, or an already opened PIL image.
        channels: 3 for ``"RGB"``, 1 for ``"L"`` (``preprocess.input_size[0]``).

    Returns:
        A loaded PIL image in mode ``"RGB"`` or ``"L"``.

    Raises:
        DataError: The file cannot be read, or its mode cannot be decoded correctly; the message
            names the file and the mode.
        ConfigurationError: ``channels`` is not 1 or 3.

    Example:
        >>> import numpy as np
        >>> from PIL import Image
        >>> deep = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))  # mode "I;16"
        >>> np.asarray(decode_image(deep, channels=1)).tolist()  # convert("L") gives [[0, 255, 255]]
        [[0, 128, 255]]
    """
    if channels not in (1, 3):
        raise ConfigurationError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if isinstance(source, Image.Image):
        return _oriented(convert_image(source, channels, "<in-memory image>"), _orientation(source))
    path = Path(source)
    try:
        with Image.open(path) as img:
            img.load()  # a full decode: headers alone let truncated files through
            # the bit depth comes from the opened file (its format, TIFF tags): convert first
            return _oriented(convert_image(img, channels, str(path)), _orientation(img))
    except DataError:
        raise
    except READ_ERRORS as err:
        raise DataError(
            f"cannot read image {str(path)!r}: {type(err).__name__}: {err}. Fix: remove or replace the file "
            "(the data modules skip unreadable files with on_bad_image='skip')"
        ) from err


def convert_image(img: Image.Image, channels: int, name: str = "<in-memory image>") -> Image.Image:
    """The mode conversion of :func:`decode_image` alone (no file reading, no EXIF orientation).

    The image transforms use it on PIL images that are not in the target mode yet.
    """
    target = "RGB" if channels == 3 else "L"
    mode = img.mode
    if mode == target:
        return img
    if mode in _PIL_CONVERTS:
        return img.convert(target)
    if mode == "P":
        has_alpha = "transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA")
        return _flatten(img.convert("RGBA"), target) if has_alpha else img.convert(target)
    if mode in _ALPHA:
        return _flatten(img, target)
    if mode in _SIXTEEN_BIT or mode == "I":
        return _gray(_scale_integers(img, name), target)
    if mode == "F":
        return _gray(_scale_float(img, name), target)
    hint = " (a CIELAB image: convert it to sRGB with a colour-managed tool)" if mode == "LAB" else ""
    raise DataError(
        f"cannot decode image {name!r}: mode {mode!r} is not supported{hint}. "
        "Fix: convert the file to 8-bit RGB or grayscale (PNG / JPEG)"
    )


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # EXIF orientation -> the transposition that undoes it (as PIL's ImageOps.exif_transpose)


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except READ_ERRORS:  # a damaged EXIF block is no reason to drop the pixels
        return 1
    return value if isinstance(value, int) else 1


def _oriented(img: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE.get(orientation)
    return img if method is None else img.transpose(method)


def _flatten(img: Image.Image, target: str) -> Image.Image:
    """Composite an image with an alpha channel over white."""
    if img.mode == "La":  # PIL converts premultiplied gray only to "LA" (un-premultiplied)
        img = img.convert("LA")
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert(target)


def _bit_depth(img: Image.Image) -> int | None:
    """Significant bits per sample of an integer grayscale image, when the file says so."""
    if img.mode in _SIXTEEN_BIT:
        bits = 16
    elif img.format in ("PNG", "PPM"):  # PIL reads 16-bit PNG / PGM (any maxval, rescaled) as "I"
        bits = 16
    elif img.format == "TIFF":
        bits = 32
    else:
        return None
    if img.format == "TIFF":
        declared = getattr(img, "tag_v2", {}).get(258)  # BitsPerSample, e.g. (12,)
        if declared:
            bits = int(declared[0] if isinstance(declared, tuple) else declared)
    return bits


def _scale_integers(img: Image.Image, name: str) -> np.ndarray:
    bits = _bit_depth(img)
    if bits is None or bits > 16:
        what = f"{bits}-bit integer" if bits else "integer, unknown bit depth"
        raise DataError(
            f"cannot decode image {name!r}: mode {img.mode!r} ({what}) has no standard 8-bit mapping. "
            "Fix: convert the file to 8- or 16-bit grayscale PNG with your own intensity scaling"
        )
    values = np.asarray(img).astype(np.int64)
    top = (1 << bits) - 1
    if values.size and (values.min() < 0 or values.max() > top):
        raise DataError(
            f"cannot decode image {name!r}: mode {img.mode!r} declares {bits} bits but holds values in "
            f"[{values.min()}, {values.max()}]. Fix: re-save the file with a correct bit depth"
        )
    return np.round(values * (255.0 / top)).astype(np.uint8)


def _scale_float(img: Image.Image, name: str) -> np.ndarray:
    values = np.asarray(img, dtype=np.float64)
    if values.size and not np.isfinite(values).all():
        raise DataError(
            f"cannot decode image {name!r}: mode 'F' (float) holds NaN or infinite values. "
            "Fix: convert the file to 8- or 16-bit PNG with your own intensity scaling"
        )
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"cannot decode image {name!r}: mode 'F' (float) holds values in [{low:g}, {high:g}], not the [0, 1] "
            "intensities that can be decoded without guessing a scale. Fix: convert the file to 8- or 16-bit "
            "PNG with your own intensity scaling"
        )
    return np.round(values * 255.0).astype(np.uint8)


def _gray(values: np.ndarray, target: str) -> Image.Image:
    gray = Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8))  # 2-D uint8: mode "L"
    return gray if target == "L" else gray.convert("RGB")
