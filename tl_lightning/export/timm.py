"""timm export: the classifier as a native timm model with the new head as its classifier.

The folder is what ``timm``'s own ``save_for_hf`` writes (the Hugging Face hub layout timm
reads): ``model.safetensors``, a state dict of ``timm.create_model(arch, num_classes=N)`` whose
classifier (``pretrained_cfg["classifier"]``: ``fc``, ``head``, ``head.fc``, ...) holds our
linear head, and ``config.json`` (``architecture``, ``num_classes``, ``label_names``,
``model_args``, ``pretrained_cfg`` with the trained ``input_size`` / ``mean`` / ``std`` /
``interpolation`` / ``crop_pct``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tl_lightning.errors import ConfigurationError, ExportError
from tl_lightning.export._common import (
    ExportCheck,
    check_atol,
    check_batches,
    compare_logits,
    eval_mode,
    prepare_output,
    resolve_model,
    staged_output,
    write_manifest,
)

__all__ = ["export_timm"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def _check_supported(model: Any) -> None:
    from tl_lightning.backbones.timm import TimmBackbone
    from tl_lightning.heads import LinearHead

    name = model.hparams.backbone
    if not isinstance(model.backbone, TimmBackbone):
        raise ConfigurationError(
            f"format 'timm' needs a timm backbone ('timm:<arch>'), got {name!r}; export it with "
            "format='torchscript' or 'onnx' (or 'hf' for a Hugging Face backbone)"
        )
    if not isinstance(model.head, LinearHead):
        raise ConfigurationError(
            f"format 'timm' maps a linear head onto the timm classifier, but this model has a "
            f"{type(model.head).__name__} (model.head=mlp); export it with format='torchscript' or 'onnx'"
        )


def timm_classifier_model(model: Any) -> nn.Module:
    """A copy of the timm trunk with ``num_classes`` outputs whose classifier holds the trained head.

    Raises:
        ExportError: the timm model's classifier is not one ``nn.Linear`` on the features.
    """
    trunk = model.backbone.model
    timm_model = copy.deepcopy(trunk).to(memory_format=torch.contiguous_format)
    timm_model.reset_classifier(model.num_classes)
    classifier = timm_model.get_classifier()
    fc = model.head.fc
    if not isinstance(classifier, nn.Linear) or classifier.weight.shape != fc.weight.shape:
        raise ExportError(
            f"the classifier of timm model {type(trunk).__name__} ({trunk.pretrained_cfg.get('classifier')!r}) is "
            f"{classifier!r}, not a Linear{tuple(fc.weight.shape[::-1])} the head maps onto; export with "
            "format='torchscript' or 'onnx'"
        )
    with torch.no_grad():
        classifier.weight.copy_(fc.weight)
        if classifier.bias is not None and fc.bias is not None:
            classifier.bias.copy_(fc.bias)
    return timm_model.eval()


def export_timm(
    model_or_ckpt_path: Any,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    atol: float = 1e-4,
) -> Path:
    """Save a timm-backbone classifier as a native timm model and check it loads back exactly.

    Load the result with ``timm.create_model("local-dir:<folder>", pretrained=True)`` (config
    and weights, offline), or ``timm.create_model(arch, num_classes=N, **config["model_args"])``
    followed by ``load_state_dict(safetensors.torch.load_file(folder / "model.safetensors"))``.
    ``timm.data.resolve_model_data_config(model)`` then gives the trained preprocessing.
    Also writes ``tl_lightning.json`` (labels, task, preprocessing, the check).

    Args:
        model_or_ckpt_path: A :class:`~tl_lightning.TransferClassifier` with a ``timm:`` backbone
            and a linear head (on the CPU), or the path of its checkpoint.
        out_dir: The output folder (created; must be empty unless ``overwrite``).
        overwrite: Replace the files of the same name in a non-empty ``out_dir``.
        atol: Largest allowed ``|timm model - module|`` logit difference on the check batch.

    Returns:
        The output folder.

    Raises:
        ConfigurationError: the backbone is not a timm model, or the head is an MLP.
        ExportError: the timm classifier cannot hold the head, or the reloaded model strays
            from the module by more than ``atol``.

    Example:
        >>> folder = export_timm("run/checkpoints/best.ckpt", "exported/timm")  # doctest: +SKIP
        >>> net = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # doctest: +SKIP
    """
    import timm
    from timm.models import save_for_hf

    atol = check_atol(atol)
    out = prepare_output(out_dir, overwrite)
    model = resolve_model(model_or_ckpt_path)
    _check_supported(model)
    with eval_mode(model), staged_output(out, overwrite) as stage:
        timm_model = timm_classifier_model(model)
        preprocess = model.preprocess
        data_config = {
            "input_size": tuple(int(v) for v in preprocess.input_size),
            "mean": tuple(float(v) for v in preprocess.mean),
            "std": tuple(float(v) for v in preprocess.std),
            "interpolation": preprocess.interpolation,
            "crop_pct": float(preprocess.crop_pct),
        }
        save_for_hf(
            timm_model,
            str(stage),
            model_config={"label_names": list(model.labels)},
            safe_serialization=True,
            data_config=data_config,
        )
        loaded = timm.create_model(f"local-dir:{stage}", pretrained=True).eval()

        def run(batch: Any) -> torch.Tensor:
            with torch.no_grad():
                return loaded(batch)

        diff, shapes = compare_logits(model, run, check_batches(model), atol, "the timm model loaded back")
        check = ExportCheck(
            max_abs_diff=diff,
            atol=atol,
            batch_shapes=shapes,
            loaders=['timm.create_model("local-dir:<folder>", pretrained=True)'],
        )
        write_manifest(stage, model, "timm", {"weights": WEIGHTS_FILE, "config": CONFIG_FILE}, check, ["pixel_values"])
    return out
