"""decode_image: every PIL mode decoded to the 8-bit RGB / L pixels a backbone expects, or refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tl_lightning.backbones import ImagePreprocess
from tl_lightning.data import decode_image, image_eval_transform
from tl_lightning.errors import ConfigurationError, DataError

# 16-bit samples and their 8-bit values: v * 255 / 65535, rounded (257 -> 1, 32896 -> 128)
DEEP = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
DEEP_8 = [[0, 1, 128, 255]]


def _pixels(img: Image.Image) -> list:
    return np.asarray(img).tolist()


def _gray_rgb(values: list[list[int]]) -> list:
    return [[[v, v, v] for v in row] for row in values]


def test_16_bit_png_is_scaled_by_its_bit_depth_not_clipped(tmp_path: Path) -> None:
    Image.fromarray(DEEP).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as raw:
        assert raw.mode == "I;16"
    gray = decode_image(tmp_path / "deep.png", channels=1)
    assert gray.mode == "L" and _pixels(gray) == DEEP_8  # convert("L") clips: [[0, 255, 255, 255]]
    rgb = decode_image(tmp_path / "deep.png")
    assert rgb.mode == "RGB" and _pixels(rgb) == _gray_rgb(DEEP_8)


def test_16_bit_big_and_little_endian_and_mode_i(tmp_path: Path) -> None:
    big = Image.frombytes("I;16B", (4, 1), DEEP.astype(">u2").tobytes())
    big.save(tmp_path / "big.tif")
    with Image.open(tmp_path / "big.tif") as raw:
        assert raw.mode == "I;16B"
    assert _pixels(decode_image(tmp_path / "big.tif", 1)) == DEEP_8
    little = Image.frombytes("I;16L", (4, 1), DEEP.astype("<u2").tobytes())
    assert _pixels(decode_image(little, 1)) == DEEP_8
    # a 16-bit PGM is read as mode "I" (maxval 1023 rescaled to 16 bits by PIL)
    (tmp_path / "ten_bit.pgm").write_bytes(b"P5\n2 1\n1023\n" + np.array([0, 1023], dtype=">u2").tobytes())
    with Image.open(tmp_path / "ten_bit.pgm") as raw:
        assert raw.mode == "I"
    assert _pixels(decode_image(tmp_path / "ten_bit.pgm", 1)) == [[0, 255]]


def test_32_bit_integer_and_in_memory_i_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.array([[-5, 100000]], dtype=np.int32)).save(tmp_path / "i32.tif")
    with pytest.raises(DataError, match=r"i32\.tif.*mode 'I' \(32-bit integer\)"):
        decode_image(tmp_path / "i32.tif")
    with pytest.raises(DataError, match=r"mode 'I' \(integer, unknown bit depth\)"):
        decode_image(Image.fromarray(np.array([[0, 255]], dtype=np.int32)))


def test_float_in_unit_range_is_scaled_other_ranges_refused(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)).save(tmp_path / "unit.tif")
    assert _pixels(decode_image(tmp_path / "unit.tif", 1)) == [[0, 128, 255, 64]]  # convert("L"): [[0, 0, 1, 0]]
    Image.fromarray(np.array([[-1.0, 300.0]], dtype=np.float32)).save(tmp_path / "depth.tif")
    with pytest.raises(DataError, match=r"depth\.tif.*mode 'F'.*\[-1, 300\]"):
        decode_image(tmp_path / "depth.tif")
    with pytest.raises(DataError, match="NaN or infinite"):
        decode_image(Image.fromarray(np.array([[np.nan, 0.5]], dtype=np.float32)))


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([200, 10, 20, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "opaque.png")
    assert _pixels(decode_image(tmp_path / "opaque.png")) == [[[200, 10, 20], [0, 0, 255]]]
    pal.info["transparency"] = 1  # the blue entry is transparent: white, not blue
    pal.save(tmp_path / "transparent.png")
    pal.save(tmp_path / "transparent.gif")
    assert _pixels(decode_image(tmp_path / "transparent.png")) == [[[200, 10, 20], [255, 255, 255]]]
    assert _pixels(decode_image(tmp_path / "transparent.gif")) == [[[200, 10, 20], [255, 255, 255]]]


def test_alpha_is_composited_over_white(tmp_path: Path) -> None:
    rgba = Image.fromarray(np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 128]]], dtype=np.uint8))
    rgba.save(tmp_path / "rgba.png")
    # fully transparent pixels no longer show the colour they store; half transparent black is mid gray
    assert _pixels(decode_image(tmp_path / "rgba.png")) == [[[10, 20, 30], [255, 255, 255], [127, 127, 127]]]
    la = Image.fromarray(np.array([[[100, 255], [100, 0]]], dtype=np.uint8), mode="LA")
    la.save(tmp_path / "la.png")
    assert _pixels(decode_image(tmp_path / "la.png", 1)) == [[100, 255]]
    premultiplied = Image.new("RGBa", (1, 1), (100, 100, 100, 128))  # un-premultiplied: 199, then over white
    assert _pixels(decode_image(premultiplied)) == [[[227, 227, 227]]]


def test_cmyk_bilevel_and_ycbcr(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (2, 1), (255, 0, 0, 0))  # cyan
    cmyk.putpixel((1, 0), (0, 0, 0, 255))  # black
    cmyk.save(tmp_path / "cmyk.tif")
    assert _pixels(decode_image(tmp_path / "cmyk.tif")) == [[[0, 255, 255], [0, 0, 0]]]
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    bilevel.save(tmp_path / "bw.png")
    assert _pixels(decode_image(tmp_path / "bw.png", 1)) == [[0, 255]]
    ycbcr = Image.new("YCbCr", (2, 1), (128, 128, 128))  # neutral gray
    ycbcr.putpixel((1, 0), (76, 85, 255))  # red in JPEG's full-range YCbCr
    red = _pixels(decode_image(ycbcr))[0][1]
    assert _pixels(decode_image(ycbcr))[0][0] == [128, 128, 128]
    assert red[0] >= 250 and red[1] <= 5 and red[2] <= 5


def test_rgb_to_one_channel_is_luma() -> None:
    rgb = Image.new("RGB", (1, 1), (255, 0, 0))
    assert _pixels(decode_image(rgb, channels=1)) == [[76]]  # ITU-R 601-2: 0.299 * 255
    with pytest.raises(ConfigurationError, match="channels must be 1"):
        decode_image(rgb, channels=4)


def test_unsupported_mode_names_the_file_and_the_mode(tmp_path: Path) -> None:
    Image.new("LAB", (2, 2), (50, 0, 0)).save(tmp_path / "lab.tif")
    with pytest.raises(DataError, match=r"lab\.tif.*mode 'LAB' is not supported"):
        decode_image(tmp_path / "lab.tif")


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*junk\.png"):
        decode_image(tmp_path / "junk.png")


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    img.putpixel((0, 0), (255, 255, 255))  # top-left marker
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees clockwise
    img.save(tmp_path / "side.png", exif=exif)
    out = decode_image(tmp_path / "side.png")
    assert out.size == (2, 4)
    assert out.getpixel((1, 0)) == (255, 255, 255)  # the marker is now top-right


def test_transforms_decode_16_bit_pil_images_the_same_way() -> None:
    pre = ImagePreprocess(input_size=(3, 4, 4), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=1.0)
    deep = Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))
    x = image_eval_transform(pre)(deep)
    torch.testing.assert_close(x, torch.full((3, 4, 4), 128 / 255))  # was all 1.0 (white)
