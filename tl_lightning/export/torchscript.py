"""TorchScript export: ``model.pt``, a traced ``inputs -> logits`` module that runs without tl_lightning.

TorchScript is deprecated in recent torch releases (``torch.jit.trace`` / ``save`` / ``load``
emit a ``FutureWarning`` in torch 2.14) but still works and still loads in C++ (LibTorch);
for new deployments prefer ONNX (:func:`~tl_lightning.export.export_onnx`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from tl_lightning.errors import ExportError
from tl_lightning.export._common import (
    ExportCheck,
    as_args,
    check_atol,
    check_batches,
    compare_logits,
    eval_mode,
    logits_module,
    model_inputs,
    prepare_output,
    quiet_export,
    resolve_model,
    save_tokenizer,
    staged_output,
    trace_batch,
    write_manifest,
)

__all__ = ["export_torchscript"]

MODEL_FILE = "model.pt"


def export_torchscript(
    model_or_ckpt_path: Any,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    atol: float = 1e-4,
) -> Path:
    """Trace the classifier to TorchScript and check the saved module against it.

    The folder gets ``model.pt`` (``torch.jit.trace`` of ``head(backbone(x))``: a module taking
    ``pixel_values`` ``(B, C, H, W)``, or ``input_ids, attention_mask[, token_type_ids]``
    ``(B, T)`` int64 tensors, and returning logits ``(B, num_classes)``; batch size and sequence
    length are free), ``tl_lightning.json`` (labels, task, input names, preprocessing, the check)
    and, for text models, the tokenizer (``AutoTokenizer.from_pretrained(folder)``).

    Args:
        model_or_ckpt_path: A :class:`~tl_lightning.TransferClassifier` (on the CPU) or the path
            of its checkpoint.
        out_dir: The output folder (created; must be empty unless ``overwrite``).
        overwrite: Replace the files of the same name in a non-empty ``out_dir``.
        atol: Largest allowed ``|exported - module|`` logit difference on the check batches.

    Returns:
        The output folder.

    Raises:
        ExportError: tracing failed, or the saved module does not reproduce the model within
            ``atol`` on batches of another size (and, for text, other lengths) than the traced one.

    Example:
        >>> folder = export_torchscript("run/checkpoints/best.ckpt", "exported/ts")  # doctest: +SKIP
        >>> module = torch.jit.load(folder / "model.pt")  # doctest: +SKIP
        >>> logits = module(pixels)  # doctest: +SKIP
    """
    atol = check_atol(atol)
    out = prepare_output(out_dir, overwrite)
    model = resolve_model(model_or_ckpt_path)
    with eval_mode(model), staged_output(out, overwrite) as stage:
        names = model_inputs(model)
        path = stage / MODEL_FILE
        try:
            with quiet_export(), torch.no_grad():
                traced = torch.jit.trace(logits_module(model), as_args(trace_batch(model), names), check_trace=False)
                torch.jit.save(traced, str(path))
        except Exception as err:  # noqa: BLE001 - the tracer raises many types
            raise ExportError(
                f"torch.jit.trace failed for {model.hparams.backbone!r}: {type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}; try format='onnx'"
            ) from err
        with quiet_export():
            loaded = torch.jit.load(str(path), map_location="cpu")

        def run(batch: Any) -> torch.Tensor:
            with torch.no_grad():
                return loaded(*as_args(batch, names))

        diff, shapes = compare_logits(model, run, check_batches(model), atol, "the TorchScript module")
        save_tokenizer(model, stage)
        check = ExportCheck(max_abs_diff=diff, atol=atol, batch_shapes=shapes, loaders=["torch.jit.load"])
        write_manifest(stage, model, "torchscript", {"model": MODEL_FILE}, check, names)
    return out
