"""InputCheck: catch inputs that do not match what the pretrained model expects, before they cost a run.

Misaligned preprocessing is the quiet way transfer fails: a model fed 0-255 pixels, images
normalized twice, BGR images from OpenCV or a text batch from another model's tokenizer still
trains, just badly. :class:`InputCheck` looks at the first training batches, compares them with
the model's preprocessing, and warns once with what it expected, what it saw and the likely cause.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from tl_lightning._checks import check_choice, check_fraction, check_int, check_number
from tl_lightning._targets import GroupsSpec, _find_backbones, _get_attr_path
from tl_lightning.backbones._base import Backbone, ImagePreprocess, PreprocessConfig, TextPreprocess
from tl_lightning.diagnostics._finding import Finding
from tl_lightning.diagnostics._image_checks import ImageStats, check_channels, image_findings
from tl_lightning.diagnostics._inputs import InputFn, batch_inputs
from tl_lightning.diagnostics._text_checks import (
    TextStats,
    TokenizerFacts,
    embedding_rows,
    position_limit,
    text_findings,
)
from tl_lightning.errors import ConfigurationError

__all__ = ["CHECKS", "InputCheck", "find_expected_preprocess"]

#: the checks InputCheck runs; each can be switched off with ``ignore=[...]``
CHECKS = ("normalization", "bgr", "grayscale", "size", "tokenizer", "unknown_tokens", "truncation")


def _timm_preprocess(module: nn.Module) -> ImagePreprocess | None:
    cfg = getattr(module, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or "mean" not in cfg or "input_size" not in cfg:
        return None
    interpolation = cfg.get("interpolation", "bilinear")
    return ImagePreprocess(
        input_size=tuple(int(v) for v in cfg["input_size"]),  # type: ignore[arg-type]
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg.get("std", (1.0,) * len(cfg["mean"]))),
        interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear",
        crop_pct=float(cfg.get("crop_pct", 0.875)),
    )


def find_expected_preprocess(
    pl_module: nn.Module, groups: GroupsSpec = None
) -> tuple[PreprocessConfig | None, tuple[int, int] | None, str]:
    """What the model expects: its preprocessing, the image size its weights were pretrained at, and where that came from.

    Looked up in order: the module's ``preprocess`` attribute (``TransferClassifier.preprocess``:
    the backbone's, following the data module's ``max_length`` / ``image_size``); the one
    tl_lightning :class:`~tl_lightning.backbones.Backbone` inside the module (or inside the
    submodule ``groups`` names); a timm model inside it (its ``pretrained_cfg``). The pretrained
    size comes from that Backbone when it holds pretrained weights, or from the timm model.

    Returns:
        ``(preprocess or None, (height, width) or None, description of the source)``.
    """
    root = _get_attr_path(pl_module, groups) if isinstance(groups, str) else pl_module
    backbones = _find_backbones(root)
    backbone: Backbone | None = backbones[0][1] if len(backbones) == 1 else None
    timm_model = (
        None if backbone is not None else next((m for m in root.modules() if _timm_preprocess(m)), None)
    )
    pretrained: tuple[int, int] | None = None
    if (
        backbone is not None
        and backbone.pretrained_source is not None
        and isinstance(backbone.preprocess, ImagePreprocess)
    ):
        pretrained = backbone.preprocess.image_size
    elif timm_model is not None:
        tp = _timm_preprocess(timm_model)
        pretrained = tp.image_size if tp is not None else None
    own = getattr(pl_module, "preprocess", None)
    if isinstance(own, (ImagePreprocess, TextPreprocess)):
        return own, pretrained, f"{type(pl_module).__name__}.preprocess"
    if backbone is not None:
        return backbone.preprocess, pretrained, f"its Backbone {backbone.name or type(backbone).__name__!r}"
    if timm_model is not None:
        return (
            _timm_preprocess(timm_model),
            pretrained,
            f"the pretrained_cfg of timm model {type(timm_model).__name__}",
        )
    return None, None, ""


class InputCheck(Callback):
    """Compare the first training batches with the model's preprocessing; warn once, naming the likely cause.

    Images: per-channel mean / std after normalization, value range (0-255 pixels not scaled,
    scaled twice, normalized twice, other statistics, normalization missing), BGR channel order
    (a heuristic, see below), grayscale replicated to RGB, size against the pretrained size; a
    channel count the model cannot take is a :class:`~tl_lightning.errors.DataError` at once,
    with the fix, instead of a shape error deep in the forward. Texts: ids beyond the model's
    embedding (an error), signs of another model's tokenizer (vocabulary size, first special
    token, padding id), the share of unknown tokens, the share of sequences cut at
    ``max_length``.

    The expected preprocessing is ``preprocess=`` when given, else found on the module (see
    :func:`find_expected_preprocess`): ``TransferClassifier.preprocess``, a tl_lightning Backbone,
    or a timm model's ``pretrained_cfg``. Correct inputs produce no warning. The check runs on
    each rank's own batches; the warning comes from rank 0. It keeps no state in checkpoints: a
    resumed run checks its (possibly changed) input pipeline again.

    BGR heuristic: the mean of each channel of the implied 0-1 pixels is compared with the RGB
    order of the model's normalization mean (ImageNet's R > G > B), or of ImageNet photographs
    when that mean is uniform. Only a strict reversal by at least ``bgr_margin`` fires, but a
    collection that really is blue-dominant (sky, sea, underwater) can trigger it.

    Args:
        num_batches: How many training batches to look at (their statistics are pooled).
        preprocess: The expected :class:`~tl_lightning.backbones.ImagePreprocess` /
            :class:`~tl_lightning.backbones.TextPreprocess`, when the module does not carry one.
        pretrained_size: Image size ``(height, width)`` (or one int) the weights were trained at;
            default: from the Backbone (when pretrained) or timm model. ``None`` found: no size check.
        groups: Attribute path of the pretrained network inside the module (``"model"``), where
            the Backbone / timm model is looked for.
        input_fn: Extracts the inputs from a batch (default: the first element of a tuple /
            list, a tokenized mapping, or the batch tensor itself).
        ignore: Checks to skip, from :data:`CHECKS`.
        size_ratio: Warn when an input side is more than this factor smaller or larger than the
            pretrained size.
        bgr_margin: Smallest spread of the channel means (0-1 pixels) the BGR heuristic acts on.
        unk_threshold: Largest share of unknown tokens that passes.
        truncation_threshold: Largest share of sequences filling ``max_length`` that passes.

    Example:
        >>> from tl_lightning.diagnostics import InputCheck
        >>> cb = InputCheck(num_batches=5, ignore=["grayscale"])
    """

    def __init__(
        self,
        num_batches: int = 3,
        preprocess: PreprocessConfig | None = None,
        pretrained_size: int | Sequence[int] | None = None,
        groups: str | None = None,
        input_fn: InputFn | None = None,
        ignore: Sequence[str] = (),
        size_ratio: float = 2.0,
        bgr_margin: float = 0.03,
        unk_threshold: float = 0.05,
        truncation_threshold: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_batches = check_int("num_batches", num_batches, low=1)
        if preprocess is not None and not isinstance(preprocess, (ImagePreprocess, TextPreprocess)):
            raise ConfigurationError(
                f"preprocess must be an ImagePreprocess or TextPreprocess, got {type(preprocess).__name__}"
            )
        if isinstance(pretrained_size, int):
            pretrained_size = (pretrained_size, pretrained_size)
        if pretrained_size is not None:
            size = list(pretrained_size)
            if len(size) != 2:
                raise ConfigurationError(
                    f"pretrained_size must be an int or (height, width), got {pretrained_size!r}"
                )
            pretrained_size = (
                check_int("pretrained_size[0]", size[0], low=1),
                check_int("pretrained_size[1]", size[1], low=1),
            )
        if groups is not None and not isinstance(groups, str):
            raise ConfigurationError(f"groups must be an attribute path such as 'model', got {groups!r}")
        ignore = [ignore] if isinstance(ignore, str) else list(ignore)
        for name in ignore:
            check_choice("ignore", name, CHECKS)
        self.preprocess = preprocess
        self.pretrained_size: tuple[int, int] | None = pretrained_size  # type: ignore[assignment]
        self.groups = groups
        self.input_fn = input_fn
        self.ignore = set(ignore)
        self.size_ratio = check_number("size_ratio", size_ratio, low=1.0, low_open=True)
        self.bgr_margin = check_number("bgr_margin", bgr_margin, low=0.0)
        self.unk_threshold = check_fraction("unk_threshold", unk_threshold)
        self.truncation_threshold = check_fraction("truncation_threshold", truncation_threshold)
        #: what the last check found (also after the warning)
        self.findings: list[Finding] = []
        self._reset()

    def _reset(self) -> None:
        self._seen = 0
        self._done = False
        self._expected: PreprocessConfig | None = None
        self._pretrained: tuple[int, int] | None = None
        self._source = ""
        self._image: ImageStats | None = None
        self._text: TextStats | None = None
        self._facts: TokenizerFacts | None = None
        self._rows: int | None = None
        self._limit: int | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._reset()
        self.findings = []

    def _resolve(self, pl_module: nn.Module) -> None:
        # at the first batch, not in setup: TransferClassifier follows the data module's preprocess in its own setup
        found, pretrained, source = find_expected_preprocess(pl_module, self.groups)
        if self.preprocess is not None:
            found, source = self.preprocess, "preprocess="
        self._expected, self._source = found, source
        self._pretrained = self.pretrained_size or pretrained
        if isinstance(found, TextPreprocess):
            self._facts = TokenizerFacts.of(found.tokenizer)
            self._rows = embedding_rows(pl_module)
            self._limit = position_limit(pl_module, found.tokenizer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._done:
            return
        if self._seen == 0:
            self._resolve(pl_module)
            if self._expected is None:
                self._finish(
                    f"InputCheck: found no expected preprocessing on {type(pl_module).__name__} (no `preprocess` "
                    "attribute, no tl_lightning Backbone, no timm model); nothing was checked. Fix: "
                    "InputCheck(preprocess=ImagePreprocess(...) or TextPreprocess(tokenizer, max_length))"
                )
                return
        inputs = batch_inputs(batch, self.input_fn)
        if inputs is None:
            self._finish(
                f"InputCheck: cannot find the inputs in training batches of type {type(batch).__name__}; nothing was "
                "checked. Fix: InputCheck(input_fn=lambda batch: <the model inputs>)"
            )
            return
        where = f"InputCheck (expected preprocessing from {self._source})"
        if isinstance(self._expected, ImagePreprocess):
            if isinstance(inputs, Mapping) and isinstance(inputs.get("pixel_values"), Tensor):
                inputs = inputs["pixel_values"]  # a Hugging Face style image batch
            if not isinstance(inputs, Tensor):
                self._finish(
                    f"{where}: the model takes images but the batches hold {type(inputs).__name__}; nothing was checked"
                )
                return
            if inputs.ndim != 4:
                self._finish(
                    f"{where}: image batches should be (N, C, H, W), got shape {tuple(inputs.shape)}; nothing was checked"
                )
                return
            check_channels(inputs, self._expected.input_size[0], where)
            if self._image is None:
                self._image = ImageStats(tuple(self._expected.mean), tuple(self._expected.std))
            self._image.update(inputs)
        else:
            assert isinstance(self._expected, TextPreprocess) and self._facts is not None
            if isinstance(inputs, Tensor) and inputs.is_floating_point():
                self._finish(
                    f"{where}: the model takes token ids but the batches hold a float tensor; nothing was checked"
                )
                return
            if not isinstance(inputs, Tensor) and "input_ids" not in inputs:
                self._finish(
                    f"{where}: text batches hold no 'input_ids' (keys {sorted(inputs)}); nothing was checked"
                )
                return
            if self._text is None:
                self._text = TextStats()
            self._text.update(inputs, self._facts, self._expected.max_length, self._rows)
        self._seen += 1
        if self._seen >= self.num_batches:
            self._report()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # an epoch shorter than num_batches
        if not self._done and self._seen:
            self._report()

    def _report(self) -> None:
        expected = self._expected
        if isinstance(expected, ImagePreprocess) and self._image is not None:
            self.findings = image_findings(
                self._image, expected, self._pretrained, self.ignore, self.size_ratio, self.bgr_margin
            )
        elif isinstance(expected, TextPreprocess) and self._text is not None and self._facts is not None:
            self.findings = text_findings(
                self._text,
                expected,
                self._facts,
                self._rows,
                self._limit,
                self.ignore,
                self.unk_threshold,
                self.truncation_threshold,
            )
        if not self.findings:
            self._done = True
            return
        lines = "\n".join(f"  - {f}" for f in self.findings)
        self._finish(
            f"InputCheck: the first {self._seen} training batch(es) do not look like what the model expects "
            f"(preprocessing from {self._source}):\n{lines}"
        )

    def _finish(self, message: str) -> None:
        self._done = True
        rank_zero_warn(message)
