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


def image_eval_transform(p: ImagePreprocess) -> v2.Compose:
    """Validation / test / predict transform: RGB, resize to ``size / crop_pct``, center crop, normalize.

    Args:
        p: The backbone's image preprocessing.

    Returns:
        A ``torchvision.transforms.v2.Compose`` mapping a PIL image (or uint8 tensor) to a float
        tensor of shape ``p.input_size``.

    Example:
        >>> from PIL import Image
        >>> t = image_eval_transform(ImagePreprocess(input_size=(3, 32, 32)))
        >>> t(Image.new("L", (50, 40))).shape
        torch.Size([3, 32, 32])
    """
    h, w = p.image_size
    crop_pct = p.crop_pct if p.crop_pct and p.crop_pct > 0 else 1.0
    if h == w:
        resize: int | list[int] = int(math.floor(h / crop_pct))  # shorter side, keeps aspect ratio
    else:
        resize = [int(math.floor(h / crop_pct)), int(math.floor(w / crop_pct))]
    return v2.Compose(
        [
            *_to_float_rgb(p),
            v2.Resize(resize, interpolation=_INTERPOLATION[p.interpolation], antialias=True),
            v2.CenterCrop((h, w)),
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
