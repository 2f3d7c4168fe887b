"""Export a trained classifier for use without tl_lightning: Hugging Face, timm, TorchScript, ONNX.

Every export loads its artifact back the way a user would (transformers' auto classes,
``timm.create_model``, ``torch.jit.load``, onnxruntime), runs it on batches of another size
than the one it was traced with (and for text other lengths and padding), and compares the
logits with the module's: more than ``atol`` (1e-4) apart raises
:class:`~tl_lightning.errors.ExportError` and nothing is written to the output folder. Each
folder also gets ``tl_lightning.json``: labels, task, input names, the trained preprocessing
and the measured difference.

========== ===================================================== ==============================
format     files                                                 backbones
========== ===================================================== ==============================
``hf``     config.json, model.safetensors, modeling file,        ``hf:`` (linear or MLP head)
           tokenizer / image processor
``timm``   config.json, model.safetensors (timm hub layout)      ``timm:`` with a linear head
``torchscript`` model.pt (+ tokenizer)                           any
``onnx``   model.onnx (+ tokenizer)                              any
========== ===================================================== ==============================

Example:
    >>> from tl_lightning.export import export
    >>> folder = export("run/checkpoints/best.ckpt", "exported/onnx", format="onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from tl_lightning._checks import check_choice
from tl_lightning.export._common import MANIFEST_NAME, ExportCheck, read_manifest
from tl_lightning.export.hf import export_hf
from tl_lightning.export.onnx import export_onnx
from tl_lightning.export.timm import export_timm
from tl_lightning.export.torchscript import export_torchscript

__all__ = [
    "FORMATS",
    "MANIFEST_NAME",
    "ExportCheck",
    "export",
    "export_hf",
    "export_onnx",
    "export_timm",
    "export_torchscript",
    "read_manifest",
]

#: The export formats, in the order the CLI lists them.
FORMATS = ("hf", "timm", "torchscript", "onnx")
_EXPORTERS = {"hf": export_hf, "timm": export_timm, "torchscript": export_torchscript, "onnx": export_onnx}


def export(
    model_or_ckpt_path: Any,
    out_dir: str | os.PathLike[str],
    format: Literal["hf", "timm", "torchscript", "onnx"],  # noqa: A002 - the word users know
    *,
    overwrite: bool = False,
    atol: float = 1e-4,
) -> Path:
    """Export a :class:`~tl_lightning.TransferClassifier` (or its checkpoint) into ``out_dir``.

    Args:
        model_or_ckpt_path: The classifier (on the CPU) or the path of a checkpoint written by
            ``tl-train`` / ``Trainer.save_checkpoint`` (rebuilt offline, on the CPU).
        out_dir: The output folder; created, and refused when it holds files unless ``overwrite``.
        format: ``"hf"`` (:func:`export_hf`), ``"timm"`` (:func:`export_timm`),
            ``"torchscript"`` (:func:`export_torchscript`) or ``"onnx"`` (:func:`export_onnx`).
        overwrite: Replace the files of the same name in a non-empty ``out_dir`` (other files
            stay).
        atol: Largest allowed logit difference between the loaded artifact and the module.

    Returns:
        The output folder (its ``tl_lightning.json`` holds the measured difference:
        ``read_manifest(folder)["check"]["max_abs_diff"]``).

    Raises:
        UnknownNameError: ``format`` is not one of :data:`FORMATS`.
        ConfigurationError: the output folder is not empty, or the format does not fit the
            model (``timm`` needs a timm backbone, ``hf`` a Hugging Face one).
        CheckpointError: the checkpoint is missing or unreadable.
        ExportError: the artifact could not be made or does not reproduce the module.
    """
    check_choice("format", format, FORMATS)
    return _EXPORTERS[format](model_or_ckpt_path, out_dir, overwrite=overwrite, atol=atol)
