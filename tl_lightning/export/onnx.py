"""ONNX export: ``model.onnx`` with free batch (and sequence) axes, checked with onnxruntime.

Uses torch's ``torch.export``-based exporter (``dynamo=True``, the default since torch 2.9; it
needs ``onnxscript``). The older TorchScript-based exporter (``dynamo=False``) is deprecated
and warns so in torch 2.14, so it is not used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from tl_lightning.errors import ConfigurationError, ExportError
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

__all__ = ["export_onnx"]

MODEL_FILE = "model.onnx"
# A single ONNX protobuf is limited to 2 GiB; larger models keep their weights in a side file.
_EXTERNAL_DATA_BYTES = 1_800_000_000


def _require_onnx() -> Any:
    try:
        import onnxruntime
        import onnxscript  # noqa: F401 - torch.onnx.export(dynamo=True) imports it
    except ImportError as err:
        raise ConfigurationError(
            f"format 'onnx' needs onnx, onnxscript and onnxruntime ({err.name} is missing); "
            "install them with: pip install 'tl-lightning[export]'"
        ) from err
    return onnxruntime


def export_onnx(
    model_or_ckpt_path: Any,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    atol: float = 1e-4,
) -> Path:
    """Export the classifier to ONNX and check it with onnxruntime.

    The folder gets ``model.onnx`` (inputs ``pixel_values`` float32 ``(batch, C, H, W)``, or
    ``input_ids``, ``attention_mask`` and, where the model uses it, ``token_type_ids`` int64
    ``(batch, sequence)``; output ``logits`` ``(batch, num_classes)``), plus
    ``model.onnx.data`` for models over ~1.8 GB, ``tl_lightning.json`` (labels, task, inputs,
    preprocessing, the check) and, for text models, the tokenizer.

    Args:
        model_or_ckpt_path: A :class:`~tl_lightning.TransferClassifier` (on the CPU) or the path
            of its checkpoint.
        out_dir: The output folder (created; must be empty unless ``overwrite``).
        overwrite: Replace the files of the same name in a non-empty ``out_dir``.
        atol: Largest allowed ``|onnxruntime - module|`` logit difference on the check batches.

    Returns:
        The output folder.

    Raises:
        ConfigurationError: onnx / onnxscript / onnxruntime are not installed.
        ExportError: the exporter failed, or onnxruntime's logits stray from the module's by
            more than ``atol`` on batches of another size (and length) than the exported one.

    Example:
        >>> import onnxruntime  # doctest: +SKIP
        >>> folder = export_onnx("run/checkpoints/best.ckpt", "exported/onnx")  # doctest: +SKIP
        >>> session = onnxruntime.InferenceSession(str(folder / "model.onnx"))  # doctest: +SKIP
        >>> (logits,) = session.run(["logits"], {"pixel_values": pixels.numpy()})  # doctest: +SKIP
    """
    atol = check_atol(atol)
    ort = _require_onnx()
    out = prepare_output(out_dir, overwrite)
    model = resolve_model(model_or_ckpt_path)
    with eval_mode(model), staged_output(out, overwrite) as stage:
        names = model_inputs(model)
        batch = torch.export.Dim("batch")
        if model.preprocess.modality == "image":
            dynamic_shapes: tuple[dict[int, Any], ...] = ({0: batch},)
        else:
            sequence = torch.export.Dim("sequence")
            dynamic_shapes = tuple({0: batch, 1: sequence} for _ in names)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        external = size > _EXTERNAL_DATA_BYTES
        path = stage / MODEL_FILE
        try:
            with quiet_export(), torch.no_grad():
                torch.onnx.export(
                    logits_module(model),
                    as_args(trace_batch(model), names),
                    str(path),
                    input_names=names,
                    output_names=["logits"],
                    dynamo=True,
                    dynamic_shapes=dynamic_shapes,
                    external_data=external,
                )
        except Exception as err:  # noqa: BLE001 - the exporter raises many types
            raise ExportError(
                f"torch.onnx.export failed for {model.hparams.backbone!r}: {type(err).__name__}: "
                f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}; try format='torchscript'"
            ) from err
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(batch: Any) -> Any:
            feed = {name: tensor.numpy() for name, tensor in zip(names, as_args(batch, names))}
            return session.run(["logits"], feed)[0]

        diff, shapes = compare_logits(model, run, check_batches(model), atol, "the ONNX model in onnxruntime")
        save_tokenizer(model, stage)
        files = {"model": MODEL_FILE}
        if external:
            files["weights"] = f"{MODEL_FILE}.data"
        check = ExportCheck(
            max_abs_diff=diff, atol=atol, batch_shapes=shapes, loaders=["onnxruntime.InferenceSession"]
        )
        write_manifest(stage, model, "onnx", files, check, names)
    return out
