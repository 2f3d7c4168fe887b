"""Image batches against the model's :class:`~tl_lightning.backbones.ImagePreprocess`.

Everything is judged in two units: the values the model sees (after ``Normalize``; for natural
images each channel has a mean near 0 and a std near 1), and the *implied pixels* ``x * std +
mean``: what the values were before ``Normalize(mean, std)``, which must lie in ``[0, 1]`` when
the pipeline matches the model. Each way of getting it wrong leaves its own trace there:

* 0-255 pixels (not scaled): implied pixels far above 1 (up to 255);
* scaled twice (divided by 255 again): implied pixels all below 0.01;
* normalized twice: implied pixels outside ``[0, 1]``, while undoing ``Normalize`` a second time
  lands them inside it;
* normalized with other statistics: implied pixels outside ``[0, 1]`` by a wider margin than resizing explains;
* normalization missing: every value in ``[0, 1]`` although the model's normalization maps black
  well below 0;
* grayscale replicated: the three implied channels are identical;
* BGR: a heuristic, see :func:`bgr_finding`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from tl_lightning.backbones._base import ImagePreprocess
from tl_lightning.diagnostics._finding import Finding
from tl_lightning.errors import DataError

__all__ = ["IMAGENET_MEAN", "ImageStats", "check_channels", "image_findings"]

#: RGB means of ImageNet photographs: the natural-image prior when a model's normalization is uniform
IMAGENET_MEAN = (0.485, 0.456, 0.406)
# implied pixels may leave [0, 1] a little (antialiased resizing of float images, rounding)
_TOL = 0.02
# share of implied pixels outside [0, 1] that no resizing overshoot explains
_OUTSIDE = 0.05


def check_channels(x: Tensor, expected: int, where: str) -> None:
    """Raise a :class:`DataError` naming the likely cause when ``x`` has the wrong channel count."""
    if x.ndim != 4 or x.shape[1] == expected:
        return
    got = int(x.shape[1])
    if got == 1 and expected == 3:
        cause = (
            "grayscale images reach the model as one channel. Fix: convert them to RGB (PIL "
            "img.convert('RGB'), or v2.Grayscale(num_output_channels=3)); tl_lightning's data modules do it"
        )
    elif got == 4 and expected == 3:
        cause = (
            "RGBA / CMYK images keep a fourth channel. Fix: img.convert('RGB') (drops or composites alpha)"
        )
    elif x.shape[-1] == expected and got != expected:
        cause = "the batch is channels-last (N, H, W, C). Fix: permute(0, 3, 1, 2), or v2.ToImage() in the transform"
    else:
        cause = "the data pipeline makes another channel count than the model was built for"
    raise DataError(
        f"{where}: input batches have {got} channel(s) (shape {tuple(x.shape)}) but the model takes {expected} "
        f"(input_size {expected} x H x W): {cause}"
    )


@dataclass
class ImageStats:
    """Running statistics of image batches, per channel, in model units and implied pixels.

    Args:
        mean: The model's normalization mean (per channel).
        std: The model's normalization std.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    batches: int = 0
    count: int = 0  # values per channel
    integer: bool = False
    sum: Tensor | None = None
    sumsq: Tensor | None = None
    min: Tensor | None = None
    max: Tensor | None = None
    raw_min: Tensor | None = None
    raw_max: Tensor | None = None
    outside_once: int = 0
    outside_twice: int = 0
    negative: int = 0
    gray_raw: float = 0.0
    gray_values: float = 0.0
    sizes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return len(self.mean)

    def update(self, x: Tensor) -> None:
        """Add one batch ``(N, C, H, W)`` (C must equal the normalization's channel count)."""
        self.integer = self.integer or not x.is_floating_point()
        c = int(x.shape[1])
        xs = x.detach().transpose(0, 1).reshape(c, -1).double()
        m = torch.tensor(self.mean, dtype=xs.dtype, device=xs.device)[:, None]
        s = torch.tensor(self.std, dtype=xs.dtype, device=xs.device)[:, None]
        raw = xs * s + m
        raw2 = raw * s + m
        gray_raw = (raw[1:] - raw[:1]).abs().amax() if c > 1 else raw.new_zeros(())
        gray_values = (xs[1:] - xs[:1]).abs().amax() if c > 1 else xs.new_zeros(())
        per_channel = torch.stack(
            [xs.sum(1), (xs * xs).sum(1), xs.amin(1), xs.amax(1), raw.amin(1), raw.amax(1)]
        ).cpu()
        counts = torch.stack(
            [
                ((raw < -_TOL) | (raw > 1 + _TOL)).sum(),
                ((raw2 < -_TOL) | (raw2 > 1 + _TOL)).sum(),
                (xs < 0).sum(),
            ]
        ).cpu()
        scalars = torch.stack([gray_raw, gray_values]).cpu()  # one transfer per kind: few device syncs
        s_, sq, lo, hi, rlo, rhi = per_channel
        if self.sum is None:
            self.sum, self.sumsq, self.min, self.max, self.raw_min, self.raw_max = s_, sq, lo, hi, rlo, rhi
        else:
            assert self.sumsq is not None and self.min is not None and self.max is not None
            assert self.raw_min is not None and self.raw_max is not None
            self.sum, self.sumsq = self.sum + s_, self.sumsq + sq
            self.min, self.max = torch.minimum(self.min, lo), torch.maximum(self.max, hi)
            self.raw_min, self.raw_max = torch.minimum(self.raw_min, rlo), torch.maximum(self.raw_max, rhi)
        self.outside_once += int(counts[0])
        self.outside_twice += int(counts[1])
        self.negative += int(counts[2])
        self.gray_raw = max(self.gray_raw, float(scalars[0]))
        self.gray_values = max(self.gray_values, float(scalars[1]))
        self.count += int(xs.shape[1])
        self.batches += 1
        size = (int(x.shape[-2]), int(x.shape[-1]))
        if size not in self.sizes:
            self.sizes.append(size)

    # -- derived ---------------------------------------------------------------------------
    def channel_mean(self) -> list[float]:
        assert self.sum is not None
        return (self.sum / self.count).tolist()

    def channel_std(self) -> list[float]:
        assert self.sum is not None and self.sumsq is not None
        mean = self.sum / self.count
        return (self.sumsq / self.count - mean * mean).clamp(min=0).sqrt().tolist()

    def pixel_mean(self) -> list[float]:
        """Per-channel mean of the implied 0-1 pixels."""
        return [v * s + m for v, s, m in zip(self.channel_mean(), self.std, self.mean)]


def _fmt(values: list[float] | tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in values) + ")"


def _observed(stats: ImageStats) -> str:
    assert stats.min is not None and stats.max is not None
    return (
        f"observed per-channel mean {_fmt(stats.channel_mean())}, std {_fmt(stats.channel_std())}, "
        f"range [{float(stats.min.min()):.3g}, {float(stats.max.max()):.3g}]"
    )


def _expected(p: ImagePreprocess) -> str:
    lo = [(0 - m) / s for m, s in zip(p.mean, p.std)]
    hi = [(1 - m) / s for m, s in zip(p.mean, p.std)]
    return (
        f"expected Normalize(mean={_fmt(p.mean)}, std={_fmt(p.std)}) of 0-1 pixels: per-channel mean about 0 and "
        f"std about 1 for natural images, values within [{min(lo):.2f}, {max(hi):.2f}]"
    )


def normalization_finding(stats: ImageStats, p: ImagePreprocess) -> Finding | None:
    """The one scaling / normalization mistake the statistics show, if any (the causes exclude each other)."""
    assert (
        stats.min is not None
        and stats.max is not None
        and stats.raw_min is not None
        and stats.raw_max is not None
    )
    total = stats.count * stats.channels
    outside_once = stats.outside_once / total
    outside_twice = stats.outside_twice / total
    raw_lo, raw_hi = float(stats.raw_min.min()), float(stats.raw_max.max())
    lo, hi = float(stats.min.min()), float(stats.max.max())
    identity = all(m == 0 for m in p.mean) and all(s == 1 for s in p.std)
    head = f"{_expected(p)}; {_observed(stats)}"
    # first: with ImageNet statistics, once-normalized values reach 2.6, which alone would read as unscaled
    if not identity and outside_once > _OUTSIDE and outside_twice <= _OUTSIDE / 5:
        return Finding(
            "normalization",
            f"{head}. Undoing Normalize once leaves {100 * outside_once:.0f}% of the values outside 0-1 (range "
            f"[{raw_lo:.2f}, {raw_hi:.2f}]); undoing it twice gives 0-1 pixels. Likely cause: the images were "
            "normalized twice (a Normalize in your transform and another one in the data module or model). Fix: "
            "normalize once",
        )
    if raw_hi > 2.0:
        if stats.integer or (lo >= 0 and hi <= 255.5):
            cause = "raw 0-255 pixels, not scaled to 0-1" + ("" if identity else " and not normalized")
        else:
            cause = "0-255 pixels were normalized without being scaled to 0-1 first"
        return Finding(
            "normalization",
            f"{head}. Undoing Normalize gives pixels up to {raw_hi:.3g}, not 0-1. Likely cause: {cause}. "
            "Fix: v2.ToImage() + v2.ToDtype(torch.float32, scale=True) (or ToTensor()) before v2.Normalize, "
            "or tl_lightning's image_train_transform / image_eval_transform",
        )
    if raw_hi < 0.01 and raw_lo > -_TOL:
        return Finding(
            "normalization",
            f"{head}. Undoing Normalize gives pixels of at most {raw_hi:.2g} of the 0-1 range. Likely cause: the "
            "pixels were scaled to 0-1 twice (ToTensor() or ToDtype(scale=True) and another / 255). Fix: scale once",
        )
    if outside_once > _OUTSIDE:
        return Finding(
            "normalization",
            f"{head}. Undoing the model's Normalize leaves {100 * outside_once:.0f}% of the values outside 0-1 "
            f"(range [{raw_lo:.2f}, {raw_hi:.2f}]). Likely cause: the inputs were normalized with other statistics "
            "than the model's (another model's mean / std). Fix: normalize with the model's preprocess "
            "(model.preprocess.mean / std; tl_lightning's data modules take it from the backbone)",
        )
    black = min((0 - m) / s for m, s in zip(p.mean, p.std))
    if not identity and black < -0.5 and lo >= 0 and hi <= 1 + _TOL:
        return Finding(
            "normalization",
            f"{head}. Every value is in [0, 1] and none is negative, although the model's normalization maps black "
            f"to {black:.2f}. Likely cause: Normalize(mean, std) is missing (0-1 pixels reach the model; unless every "
            "pixel of your images is brighter than the normalization mean). Fix: add v2.Normalize(mean, std) with the "
            "model's statistics",
        )
    return None


def grayscale_finding(stats: ImageStats) -> Finding | None:
    """The channels are identical: grayscale images replicated to RGB."""
    if stats.channels < 2 or not (stats.gray_raw < 1e-3 or stats.gray_values < 1e-6):
        return None
    return Finding(
        "grayscale",
        f"all {stats.channels} channels of every image are identical: grayscale images replicated to "
        f"{stats.channels} channels. If your images are in colour, they were read as grayscale (PIL mode 'L', "
        "cv2.IMREAD_GRAYSCALE) and the colour is lost. If they are grayscale (X-rays, scans), this is expected: the "
        "pretrained colour filters see gray inputs, which transfer usually tolerates; pass "
        "InputCheck(ignore=['grayscale']) to silence this",
    )


def bgr_finding(stats: ImageStats, p: ImagePreprocess, margin: float) -> Finding | None:
    """Heuristic: the channel means are in the reverse order of the RGB statistics the model implies.

    The reference order is the order of the model's normalization mean when it is not uniform
    (ImageNet's is R > G > B), else that of ImageNet photographs (natural-image prior). The
    finding fires only when the observed implied-pixel channel means are strictly in the reverse
    order of the reference and the first and last differ by at least ``margin``. Collections
    that really are blue-dominant (sky, sea, underwater, some microscopy stains) can trigger it;
    ``InputCheck(ignore=["bgr"])`` silences it.
    """
    if stats.channels != 3:
        return None
    ref = list(p.mean) if max(p.mean) - min(p.mean) > 0.02 else list(IMAGENET_MEAN)
    observed = stats.pixel_mean()
    order = sorted(range(3), key=lambda c: -ref[c])  # reference channels, brightest first
    if len({ref[c] for c in order}) < 3:
        return None
    reversed_order = all(observed[order[i]] < observed[order[i + 1]] for i in range(2))
    if not reversed_order or observed[order[2]] - observed[order[0]] < margin:
        return None
    source = "the model's normalization mean" if ref == list(p.mean) else "ImageNet photographs"
    return Finding(
        "bgr",
        f"the channel means of the pixels are {_fmt(observed)}, in the reverse order of the RGB statistics of "
        f"{source} {_fmt(ref)}. Likely cause: images in BGR order (OpenCV's cv2.imread). Fix: "
        "cv2.cvtColor(img, cv2.COLOR_BGR2RGB), or img[..., ::-1]. (A heuristic: blue-dominant collections such as "
        "sky or underwater photos trigger it too; pass InputCheck(ignore=['bgr']) then)",
    )


def size_finding(stats: ImageStats, pretrained: tuple[int, int], ratio: float) -> Finding | None:
    """Inputs much smaller or larger than the resolution the weights were trained at."""
    ph, pw = pretrained
    for h, w in stats.sizes:
        small, large = min(h / ph, w / pw), max(h / ph, w / pw)
        if small < 1 / ratio:
            return Finding(
                "size",
                f"inputs are {h}x{w} px but the weights were pretrained at {ph}x{pw} px ({ph / h:.2g}x larger): "
                "objects look much smaller to the pretrained filters than in pretraining and fine detail is lost, "
                "so pretrained features transfer worse and accuracy usually drops; ViTs also interpolate their "
                f"position embeddings. Fix: resize closer to {ph}x{pw} (data.image_size={ph}) if the images have "
                "the detail, or accept the cost for speed",
            )
        if large > ratio:
            return Finding(
                "size",
                f"inputs are {h}x{w} px but the weights were pretrained at {ph}x{pw} px (pretraining was {h / ph:.2g}x smaller): "
                "compute grows with the pixel count and objects look larger to the pretrained filters than in "
                "pretraining. A modestly larger test size can help (FixRes), a much larger one mostly costs time. "
                f"Fix: data.image_size={ph} unless the extra resolution is needed",
            )
    return None


def image_findings(
    stats: ImageStats,
    p: ImagePreprocess,
    pretrained: tuple[int, int] | None,
    ignore: set[str],
    size_ratio: float,
    bgr_margin: float,
) -> list[Finding]:
    """Every finding about the image batches seen so far (checks named in ``ignore`` skipped)."""
    found: list[Finding] = []
    norm = None if "normalization" in ignore else normalization_finding(stats, p)
    if norm is not None:
        found.append(norm)
    # channel statistics are only meaningful once the scaling is right
    if norm is None:
        gray = None if "grayscale" in ignore else grayscale_finding(stats)
        if gray is not None:
            found.append(gray)
        elif "bgr" not in ignore:
            bgr = bgr_finding(stats, p, bgr_margin)
            if bgr is not None:
                found.append(bgr)
    if pretrained is not None and "size" not in ignore:
        size = size_finding(stats, pretrained, size_ratio)
        if size is not None:
            found.append(size)
    return found
