"""Hugging Face export: a ``save_pretrained``-style folder that transformers loads offline.

The folder holds ``config.json`` (the encoder's config plus ``id2label`` / ``label2id``,
``problem_type`` and ``auto_map``), ``model.safetensors``, ``modeling_tl_classifier.py``, the
tokenizer (text) or image processor (images), and ``tl_lightning.json``. Three loaders work on
it, and the export checks each of them before it writes the folder:

* ``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)`` (text;
  ``AutoModelForImageClassification`` for images): the whole classifier, logits equal to the
  module's. The model class comes from the folder's ``modeling_tl_classifier.py``.
* ``AutoModel.from_pretrained(folder)``: the encoder alone (``last_hidden_state`` as trained).
  BERT-style encoders are built with a pooler by default, which the classifier never had:
  pass ``add_pooling_layer=False`` to skip it (otherwise transformers reports it as newly
  initialized; ``last_hidden_state`` is unaffected).
* ``AutoTokenizer.from_pretrained(folder)`` / ``AutoImageProcessor.from_pretrained(folder)``.

Where transformers' own class computes exactly the same thing (a ViT with CLS pooling and a
linear head is ``ViTForImageClassification``), ``config.architectures`` names it and the plain
``AutoModelForImageClassification.from_pretrained(folder)`` (no remote code) is exact too;
the export checks that as well. For other encoders the auto class without
``trust_remote_code=True`` builds transformers' own head (e.g. BERT's pooler + classifier),
which this folder does not hold the weights for: transformers then reports newly initialized
weights, and the logits are not the trained model's.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from tl_lightning.errors import ConfigurationError, ExportError
from tl_lightning.export._common import (
    CHECK_TEXTS,
    ExportCheck,
    check_atol,
    check_batches,
    compare_logits,
    eval_mode,
    model_inputs,
    prepare_output,
    quiet_transformers,
    resolve_model,
    save_tokenizer,
    staged_output,
    write_manifest,
)
from tl_lightning.export._hf_modeling import MODELING_FILE, head_modules, head_spec, modeling_source

__all__ = ["export_hf", "hf_auto_class"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# transformers classes that compute exactly pooling + linear head on the encoder, by model type:
# (pooling, class name). Checked numerically by every export that uses them.
_NATIVE_LINEAR_HEADS = {"vit": ("cls", "ViTForImageClassification")}


def hf_auto_class(modality: str) -> str:
    """The transformers auto class that loads the exported classifier of this modality."""
    return "AutoModelForImageClassification" if modality == "image" else "AutoModelForSequenceClassification"


def _check_supported(model: Any) -> None:
    from tl_lightning.backbones.transformers import HFBackbone

    if not isinstance(model.backbone, HFBackbone):
        raise ConfigurationError(
            f"format 'hf' needs a Hugging Face backbone ('hf:<hub id or folder>'), got {model.hparams.backbone!r}; "
            "export it with format='timm' (timm backbones with a linear head), 'torchscript' or 'onnx'"
        )


def _write_folder(model: Any, stage: Path, class_name: str) -> str | None:
    """Write config, weights, remote code and tokenizer / processor; return the native class or None."""
    from safetensors.torch import save_file

    backbone = model.backbone
    encoder = backbone.model
    modality = model.preprocess.modality
    prefix = encoder.base_model_prefix
    if not prefix:
        raise ExportError(
            f"{type(encoder).__name__} has no base_model_prefix, so AutoModel could not find its weights in the "
            "classifier's; use format='torchscript' or 'onnx'"
        )
    spec = head_spec(model.head)
    auto_class = hf_auto_class(modality)
    native = _NATIVE_LINEAR_HEADS.get(str(getattr(encoder.config, "model_type", "")))
    native_class = native[1] if native and spec["kind"] == "linear" and native[0] == backbone.pooling else None

    config = copy.deepcopy(encoder.config)
    config.id2label = {i: label for i, label in enumerate(model.labels)}
    config.label2id = {label: i for i, label in enumerate(model.labels)}
    config.problem_type = (
        "multi_label_classification" if model.task == "multilabel" else "single_label_classification"
    )
    config.tl_classifier = {"pooling": backbone.pooling, "head": spec, "task": model.task}
    config.auto_map = {auto_class: f"{MODELING_FILE[:-3]}.{class_name}"}
    config.architectures = [native_class or class_name]
    config.save_pretrained(str(stage))

    (stage / MODELING_FILE).write_text(
        modeling_source(
            encoder,
            name=class_name,
            auto_class=auto_class,
            pooling=backbone.pooling,
            head_kind=spec["kind"],
            modality=modality,
        )
    )
    # clones: safetensors refuses tensors that share memory or are not contiguous
    tensors = {f"{prefix}.{k}": v.detach().clone().contiguous() for k, v in encoder.state_dict().items()}
    tensors.update(
        {f"classifier.{k}": v.detach().clone().contiguous() for k, v in head_modules(model.head).state_dict().items()}
    )
    save_file(tensors, str(stage / WEIGHTS_FILE), metadata={"format": "pt"})

    if modality == "text":
        save_tokenizer(model, stage)
    else:
        backbone._image_processor.save_pretrained(str(stage))
    return native_class


def _check_folder(model: Any, stage: Path, atol: float, native_class: str | None) -> ExportCheck:
    """Load the folder with each documented loader and compare with the module.

    Text models are checked on what the saved tokenizer returns (every key it gives, as a user
    passes ``**tokenizer(texts)``), after checking it tokenizes as the model was trained.
    """
    import transformers
    from transformers import AutoModel

    modality = model.preprocess.modality
    auto_name = hf_auto_class(modality)
    auto_cls = getattr(transformers, auto_name)
    folder = str(stage)
    loaders = []
    if modality == "text":
        batches = _check_tokenizer(model, folder)
        loaders.append("transformers.AutoTokenizer.from_pretrained(folder)")
    else:
        from transformers import AutoImageProcessor

        AutoImageProcessor.from_pretrained(folder)
        loaders.append("transformers.AutoImageProcessor.from_pretrained(folder)")
        batches = check_batches(model)

    def call(module: Any) -> Any:
        def run(batch: Any) -> torch.Tensor:
            with torch.no_grad():
                if modality == "image":
                    return module(pixel_values=batch).logits
                return module(**batch).logits

        return run

    with quiet_transformers():
        classifier = auto_cls.from_pretrained(folder, trust_remote_code=True).eval()
    worst, shapes = compare_logits(
        model, call(classifier), batches, atol, f"{auto_name}.from_pretrained(folder, trust_remote_code=True)"
    )
    loaders.append(f"transformers.{auto_name}.from_pretrained(folder, trust_remote_code=True)")
    if native_class is not None:
        with quiet_transformers():
            builtin = auto_cls.from_pretrained(folder).eval()
        if type(builtin).__name__ != native_class:
            raise ExportError(f"{auto_name} built {type(builtin).__name__}, expected {native_class}")
        diff, _ = compare_logits(model, call(builtin), batches, atol, f"{native_class}.from_pretrained(folder)")
        worst = max(worst, diff)
        loaders.append(f"transformers.{auto_name}.from_pretrained(folder)")

    # the encoder alone, pooled and classified by the module's own head
    with quiet_transformers():
        encoder = AutoModel.from_pretrained(folder).eval()
    pooling = model.backbone.pooling

    def encoder_logits(batch: Any) -> torch.Tensor:
        inputs = {"pixel_values": batch} if modality == "image" else dict(batch)
        with torch.no_grad():
            hidden = encoder(**inputs).last_hidden_state
            mask = None if modality == "image" else batch.get("attention_mask")
            if pooling == "cls":
                pooled = hidden[:, 0]
            elif mask is None:
                pooled = hidden.mean(dim=1)
            else:
                m = mask.to(hidden.dtype).unsqueeze(-1)
                pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
            return model.head(pooled)

    diff, _ = compare_logits(model, encoder_logits, batches, atol, "AutoModel.from_pretrained(folder) + the head")
    worst = max(worst, diff)
    loaders.append("transformers.AutoModel.from_pretrained(folder)")
    return ExportCheck(max_abs_diff=worst, atol=atol, batch_shapes=shapes, loaders=loaders)


def _check_tokenizer(model: Any, folder: str) -> list[dict[str, torch.Tensor]]:
    """The saved tokenizer's batches for the check texts; an ExportError if they differ from the model's."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    names = model_inputs(model)
    batches = []
    for texts, expected in zip(CHECK_TEXTS, check_batches(model)):
        got = dict(tokenizer(list(texts), truncation=True, padding=True, return_tensors="pt"))
        if any(n not in got or not torch.equal(got[n], expected[n]) for n in names):
            raise ExportError(
                "AutoTokenizer.from_pretrained(folder)(texts, truncation=True, padding=True) does not reproduce "
                "the model's tokenization; the export was not written"
            )
        batches.append(got)
    return batches


def export_hf(
    model_or_ckpt_path: Any,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    atol: float = 1e-4,
) -> Path:
    """Save a Hugging Face-backbone classifier as a transformers folder and check every loader on it.

    See the module docstring for the folder's layout and the loaders. Only ``hf:`` backbones
    export this way; the classifier class is remote code in the folder (offline, but it needs
    ``trust_remote_code=True``), except where transformers has an identical class
    (``ViTForImageClassification`` for a ViT with CLS pooling and a linear head).

    Args:
        model_or_ckpt_path: A :class:`~tl_lightning.TransferClassifier` with an ``hf:`` backbone
            (on the CPU), or the path of its checkpoint.
        out_dir: The output folder (created; must be empty unless ``overwrite``).
        overwrite: Replace the files of the same name in a non-empty ``out_dir``.
        atol: Largest allowed logit difference between each loader's model and the module.

    Returns:
        The output folder.

    Raises:
        ConfigurationError: the backbone is not a Hugging Face model.
        ExportError: a loader fails on the folder or strays from the module by more than ``atol``,
            or the saved tokenizer tokenizes differently.

    Example:
        >>> from transformers import AutoModelForSequenceClassification, AutoTokenizer  # doctest: +SKIP
        >>> folder = export_hf("run/checkpoints/best.ckpt", "exported/hf")  # doctest: +SKIP
        >>> model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)  # doctest: +SKIP
        >>> tokenizer = AutoTokenizer.from_pretrained(folder)  # doctest: +SKIP
        >>> logits = model(**tokenizer(["a fine film"], truncation=True, return_tensors="pt")).logits  # doctest: +SKIP
    """
    atol = check_atol(atol)
    out = prepare_output(out_dir, overwrite)
    model = resolve_model(model_or_ckpt_path)
    _check_supported(model)
    modality = model.preprocess.modality
    class_name = "TLForImageClassification" if modality == "image" else "TLForSequenceClassification"
    with eval_mode(model), staged_output(out, overwrite) as stage:
        native_class = _write_folder(model, stage, class_name)
        check = _check_folder(model, stage, atol, native_class)
        files = {"config": CONFIG_FILE, "weights": WEIGHTS_FILE, "modeling": MODELING_FILE}
        write_manifest(stage, model, "hf", files, check, model_inputs(model))
    return out
