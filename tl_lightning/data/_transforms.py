"""Image transforms built from a backbone's :class:`~tl_lightning.backbones.ImagePreprocess`.

The transforms accept PIL images or tensors and convert everything to the backbone's channels
first (3-channel RGB, or 1-channel L), with the mode handling of
:func:`~tl_lightning.data.decode_image`: 16-bit grayscale is scaled by its bit depth, transparent
pixels are composited over white, and modes that cannot be decoded correctly are refused.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from tl_lightning.backbones._base import ImagePreprocess
from tl_lightning.data._images import convert_image

__all__ = ["image_eval_transform", "image_train_transform"]

_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


class _ConvertMode:
    """PIL images to "RGB" / "L" (:func:`convert_image`); tensors: drop alpha / repeat gray channels."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, img: Any) -> Any:
        if isinstance(img, Image.Image):
            return convert_image(img, self.channels)
        if isinstance(img, torch.Tensor) and img.ndim >= 3:
            c = img.shape[-3]
            if self.channels == 3 and c == 4:
                return img[..., :3, :, :]
            if self.channels == 3 and c == 1:
                return img.expand(*img.shape[:-3], 3, *img.shape[-2:])
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self.channels})"


def _to_float_rgb(p: ImagePreprocess) -> list[Any]:
    return [_ConvertMode(p.input_size[0]), v2.ToImage()]


def _normalize() -> list[Any]:
    return [v2.ToDtype(torch.float32, scale=True)]


class _EvalResizeCrop:
    """Resize to ``size / crop_pct`` (shorter side) and center crop ``size``; small images are not cropped.

    An image whose shorter side is below the crop's is enlarged to fit anyway; resizing it past
    the crop first (crop_pct's margin) and then cutting the margin off only removes content, at
    no gain in resolution. Such images are resized with their shorter side to the crop's
    (``crop_pct = 1``): a square image is the whole input, a non-square one loses only what
    sticks out of the crop along its longer side. ``crop_small=True`` crops them like large ones
    (the pretrained configuration's evaluation, as timm does it).
    """

    def __init__(self, size: tuple[int, int], crop_pct: float, interpolation: str, crop_small: bool = False) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.crop_pct = float(crop_pct)
        self.interpolation = interpolation
        self.crop_small = bool(crop_small)

    def _resize_to(self, pct: float) -> list[int]:
        h, w = self.size
        if h == w:
            return [int(math.floor(h / pct))]  # shorter side, keeps aspect ratio
        return [int(math.floor(h / pct)), int(math.floor(w / pct))]

    def __call__(self, img: Any) -> Any:
        pct = self.crop_pct
        if not self.crop_small and pct < 1.0 and min(v2.functional.get_size(img)) < min(self.size):
            pct = 1.0
        img = v2.functional.resize(
            img, self._resize_to(pct), interpolation=_INTERPOLATION[self.interpolation], antialias=True
        )
        return v2.functional.center_crop(img, list(self.size))

    def __repr__(self) -> str:
        small = "cropped" if self.crop_small else "not cropped"
        return (
            f"{type(self).__name__}(size={self.size}, crop_pct={self.crop_pct}, "
            f"interpolation={self.interpolation}, images_smaller_than_crop={small})"
        )


def image_eval_transform(p: ImagePreprocess, crop_small: bool = False) -> v2.Compose:
    """Validation / test / predict transform: RGB, resize to ``size / crop_pct``, center crop, normalize.

    Images smaller than the crop (shorter side below it) are resized with their shorter side to
    the crop size instead, so the center crop removes nothing from a square image: enlarging a
    64 px image to 256 px and cutting 224 px out of it only loses content (on 64 px digits with
    EfficientNet-Lite0 the whole image scored higher, BENCHMARKS.md).

    Args:
        p: The backbone's image preprocessing.
        crop_small: Crop images smaller than the crop like larger ones (the pretrained
            configuration's resize-then-crop for every image).

    Returns:
        A ``torchvision.transforms.v2.Compose`` mapping a PIL image (or uint8 tensor) to a float
        tensor of shape ``p.input_size``.

    Example:
        >>> from PIL import Image
        >>> t = image_eval_transform(ImagePreprocess(input_size=(3, 32, 32)))
        >>> t(Image.new("L", (50, 40))).shape
        torch.Size([3, 32, 32])
    """
    crop_pct = p.crop_pct if p.crop_pct and p.crop_pct > 0 else 1.0
    return v2.Compose(
        [
            *_to_float_rgb(p),
            _EvalResizeCrop(p.image_size, crop_pct, p.interpolation, crop_small=crop_small),
            *_normalize(),
            v2.Normalize(mean=list(p.mean), std=list(p.std)),
        ]
    )


def image_train_transform(p: ImagePreprocess, augment: bool = True) -> v2.Compose:
    """Training transform: RGB, random resized crop and horizontal flip, normalize.

    Args:
        p: The backbone's image preprocessing.
        augment: When False, the eval transform is returned (deterministic training inputs).

    Returns:
        A ``torchvision.transforms.v2.Compose`` producing float tensors of shape ``p.input_size``.

    Example:
        >>> from PIL import Image
        >>> t = image_train_transform(ImagePreprocess(input_size=(3, 32, 32)))
        >>> t(Image.new("RGB", (50, 40))).shape
        torch.Size([3, 32, 32])
    """
    if not augment:
        return image_eval_transform(p)
    return v2.Compose(
        [
            *_to_float_rgb(p),
            v2.RandomResizedCrop(p.image_size, interpolation=_INTERPOLATION[p.interpolation], antialias=True),
            v2.RandomHorizontalFlip(),
            *_normalize(),
            v2.Normalize(mean=list(p.mean), std=list(p.std)),
        ]
    )
