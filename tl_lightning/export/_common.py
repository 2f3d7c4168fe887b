"""Machinery every export format shares: the model, the output folder, the check batches, the check.

An export runs in four steps: resolve the model (a :class:`~tl_lightning.TransferClassifier` or
the path of its checkpoint) -> write the artifact into a staging folder next to the output ->
load it back the way a user would and compare its logits with the module's on batches that
differ from the one used to trace it (another batch size, for text other lengths and padding)
-> move the files into the output folder. An artifact that does not reproduce the module is
never left in the output folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn

from tl_lightning._checks import check_number
from tl_lightning.errors import ConfigurationError, ExportError
from tl_lightning.freezing import eval_mode

__all__ = [
    "CHECK_TEXTS",
    "MANIFEST_NAME",
    "Batch",
    "ExportCheck",
    "ImageLogits",
    "TextLogits",
    "as_args",
    "check_atol",
    "check_batches",
    "compare_logits",
    "eval_mode",
    "logits_module",
    "model_inputs",
    "prepare_output",
    "quiet_export",
    "quiet_transformers",
    "read_manifest",
    "resolve_model",
    "save_tokenizer",
    "staged_output",
    "trace_batch",
    "write_manifest",
]

#: The file every export writes next to its artifact: labels, task, preprocessing, the check.
MANIFEST_NAME = "tl_lightning.json"
#: One batch of model inputs: pixels ``(B, C, H, W)`` or a mapping of token tensors.
Batch = Union[Tensor, dict[str, Tensor]]
_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Texts of different lengths, so the check batches pad differently from the trace batch.
TRACE_TEXTS = ("an exported model", "is checked against the module it came from")
CHECK_TEXTS = (
    ("a short text", "a longer text, with punctuation and some rarer words: export, verify!", "x"),
    ("one text alone, no padding at all",),
)


@dataclasses.dataclass(frozen=True)
class ExportCheck:
    """The outcome of loading an artifact back and comparing it with the module.

    Attributes:
        max_abs_diff: Largest ``|artifact logits - module logits|`` over every check batch.
        atol: The tolerance it was held to.
        batch_shapes: The input shape of each check batch (``[B, C, H, W]`` or ``[B, T]``).
        loaders: The loader calls that were checked (``"onnxruntime.InferenceSession"``, ...).
    """

    max_abs_diff: float
    atol: float
    batch_shapes: list[list[int]]
    loaders: list[str]


def resolve_model(model_or_ckpt_path: Any) -> Any:
    """A :class:`~tl_lightning.TransferClassifier` from itself or from a checkpoint path (loaded on CPU).

    Raises:
        CheckpointError: the checkpoint is missing or unreadable.
        ConfigurationError: the object is not a TransferClassifier, or not on the CPU.
    """
    from tl_lightning.modules.classifier import TransferClassifier

    if isinstance(model_or_ckpt_path, (str, os.PathLike)):
        return _merged(TransferClassifier.load_from_checkpoint(str(model_or_ckpt_path), map_location="cpu"))
    model = model_or_ckpt_path
    if not isinstance(model, TransferClassifier):
        raise ConfigurationError(
            f"export takes a TransferClassifier or the path of its checkpoint, got {type(model).__name__}; "
            "for a checkpoint pass its path (tl-export ckpt_path=...)"
        )
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ConfigurationError(
            f"export runs on the CPU but the model's weights are on {sorted(devices)}; call model.cpu() first"
        )
    return _merged(model, copy=True)


def _merged(model: Any, copy: bool = False) -> Any:
    """A model with a LoRA adapter is exported merged (plain layers: W + alpha/r * B @ A), as every
    format needs; an in-memory model is copied first so the caller's keeps its adapter."""
    from tl_lightning.finetune.lora import get_adapter, merge_lora

    if get_adapter(model) is None:
        return model
    import copy as _copy

    return merge_lora(_copy.deepcopy(model) if copy else model)


def model_inputs(model: Any) -> list[str]:
    """The names of the exported model's inputs: ``["pixel_values"]`` or the token tensors it uses."""
    if model.preprocess.modality == "image":
        return ["pixel_values"]
    encoded = model.preprocess(list(TRACE_TEXTS))
    encoder = getattr(model.backbone, "model", None)
    accepted = set(inspect.signature(encoder.forward).parameters) if encoder is not None else set(_TEXT_INPUTS)
    names = [n for n in _TEXT_INPUTS if n in encoded and n in accepted]
    # the exported signature is positional: (input_ids, attention_mask[, token_type_ids])
    if names[:2] != ["input_ids", "attention_mask"]:
        raise ExportError(
            f"the tokenizer of {model.hparams.backbone!r} gives {sorted(encoded)} and the encoder takes "
            f"{sorted(accepted & set(_TEXT_INPUTS))}; the export needs input_ids and attention_mask"
        )
    return names


def _text_batch(model: Any, texts: Sequence[str], names: Sequence[str]) -> dict[str, Tensor]:
    encoded = model.preprocess(list(texts))
    return {n: encoded[n] for n in names}


def trace_batch(model: Any) -> Batch:
    """The example batch an artifact is traced / exported with (2 inputs)."""
    if model.preprocess.modality == "image":
        generator = torch.Generator().manual_seed(0)
        return torch.randn(2, *model.preprocess.input_size, generator=generator)
    return _text_batch(model, TRACE_TEXTS, model_inputs(model))


def check_batches(model: Any) -> list[Batch]:
    """Batches the artifact is checked on; they differ in size (and padding) from :func:`trace_batch`."""
    if model.preprocess.modality == "image":
        generator = torch.Generator().manual_seed(1)
        return [torch.randn(3, *model.preprocess.input_size, generator=generator)]
    names = model_inputs(model)
    return [_text_batch(model, texts, names) for texts in CHECK_TEXTS]


def batch_shape(batch: Batch) -> list[int]:
    """``[B, C, H, W]`` for pixels, ``[B, T]`` for tokens."""
    tensor = batch if isinstance(batch, Tensor) else batch["input_ids"]
    return [int(s) for s in tensor.shape]


def as_args(batch: Batch, names: Sequence[str]) -> tuple[Tensor, ...]:
    """The batch as positional tensors in the order of ``names`` (the exported signature)."""
    if isinstance(batch, Tensor):
        return (batch,)
    return tuple(batch[n] for n in names)


class ImageLogits(nn.Module):
    """``pixel_values -> logits``: the backbone and head of a classifier, without Lightning around them."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.head(self.backbone(pixel_values))


class TextLogits(nn.Module):
    """``(input_ids, attention_mask, token_type_ids) -> logits`` with plain tensor arguments.

    Tracers and exporters take positional tensors, not the mapping a tokenizer returns; the
    optional inputs are left out of the call when the model does not use them.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        inputs = {"input_ids": input_ids}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return self.head(self.backbone(inputs))


def logits_module(model: Any) -> nn.Module:
    """The classifier as a plain module over tensors, in eval mode (what TorchScript and ONNX see).

    The LightningModule itself is not traced: its ``trainer`` property raises outside a Trainer,
    and its forward holds no more than ``head(backbone(x))``.
    """
    cls = ImageLogits if model.preprocess.modality == "image" else TextLogits
    return cls(model.backbone, model.head).eval()


@torch.no_grad()
def reference_logits(model: Any, batch: Batch) -> Tensor:
    """The module's own logits for ``batch`` (float32, CPU)."""
    return model(batch).float()


def compare_logits(
    model: Any, run: Any, batches: Sequence[Batch], atol: float, what: str
) -> tuple[float, list[list[int]]]:
    """Run ``run(batch) -> logits`` on every batch; raise ExportError if it strays from the module.

    Returns:
        ``(max |diff|, batch shapes)``.
    """
    worst = 0.0
    shapes = []
    for batch in batches:
        expected = reference_logits(model, batch)
        got = torch.as_tensor(run(batch)).float()
        shapes.append(batch_shape(batch))
        if tuple(got.shape) != tuple(expected.shape):
            raise ExportError(
                f"{what} returned logits of shape {list(got.shape)} for a batch of shape {shapes[-1]}, the module "
                f"{list(expected.shape)}; the export is broken and was not written"
            )
        diff = float((got - expected).abs().max())
        if not diff <= atol:  # also catches NaN
            raise ExportError(
                f"{what} differs from the module by up to {diff:.3g} (> atol={atol:g}) on a batch of shape "
                f"{shapes[-1]}; the export was not written. Report it with the backbone name "
                f"{model.hparams.backbone!r}, or try another format"
            )
        worst = max(worst, diff)
    return worst, shapes


def check_atol(atol: Any) -> float:
    """The comparison tolerance, a finite number > 0."""
    return check_number("atol", atol, low=0.0, low_open=True)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def prepare_output(out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    """Check the output folder before any work: a file, or a non-empty folder without overwrite, is refused."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"output {str(out)!r} is a file; pass a folder (it is created if missing)")
    if out.is_dir() and not _is_empty_dir(out) and not overwrite:
        entries = sorted(p.name for p in out.iterdir())
        raise ConfigurationError(
            f"output folder {str(out)!r} exists and is not empty ({len(entries)} entries, e.g. {entries[:3]}); "
            "pass another folder, or overwrite=True (tl-export ... overwrite=true) to replace the files an "
            "export writes there"
        )
    return out


@contextlib.contextmanager
def staged_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a staging folder next to ``out``; on success move its files into ``out``, else delete it.

    With ``overwrite``, files of the same name in ``out`` are replaced and other files are left
    alone (a folder the user pointed at is never emptied wholesale).
    """
    prepare_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    # a plain identifier (transformers names the module of remote code after the folder), made
    # with mkdir rather than mkdtemp so the final folder gets the usual permissions, not 0700
    stage = out.parent / f"tl_export_{uuid.uuid4().hex[:12]}"
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if not out.exists() or _is_empty_dir(out):
        if out.exists():
            out.rmdir()
        stage.rename(out)
        return
    for entry in sorted(stage.iterdir()):
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    stage.rmdir()


def write_manifest(
    folder: Path, model: Any, fmt: str, files: Mapping[str, str], check: ExportCheck, inputs: Sequence[str]
) -> Path:
    """Write ``tl_lightning.json``: what the artifact is, what it expects and how well it was checked."""
    from tl_lightning import __version__
    from tl_lightning.modules._checkpoint import preprocess_to_dict

    manifest = {
        "format": fmt,
        "files": dict(files),
        "backbone": str(model.hparams.backbone),
        "task": model.task,
        "labels": list(model.labels),
        "inputs": list(inputs),
        "output": "logits",
        "activation": "softmax" if model.task == "multiclass" else "sigmoid",
        "preprocess": preprocess_to_dict(model.preprocess),
        "check": dataclasses.asdict(check),
        "versions": {"tl_lightning": __version__, "torch": torch.__version__},
    }
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``tl_lightning.json`` of an exported folder."""
    return json.loads((Path(folder) / MANIFEST_NAME).read_text())


def save_tokenizer(model: Any, folder: Path) -> None:
    """Save a text model's tokenizer, truncating at the trained ``max_length`` by default.

    ``model_max_length`` is set to the length the model was trained with, so
    ``tokenizer(texts, truncation=True, padding=True)`` reproduces the training inputs.
    """
    if model.preprocess.modality != "text":
        return
    import copy

    tokenizer = copy.deepcopy(model.preprocess.tokenizer)
    tokenizer.model_max_length = int(model.preprocess.max_length)
    tokenizer.save_pretrained(str(folder))


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence the tracers' and exporters' progress prints and known-harmless warnings.

    The numbers decide: every artifact is checked on batches of other shapes afterwards, which
    is what a ``TracerWarning`` ("might not generalize to other inputs") asks for.
    """
    import io

    # tracing probes every attribute of a transformers model, which logs about unused ones (loss_type)
    with quiet_transformers(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..*deprecated.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used.*")
        yield


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' logging at error level only (its load reports list the pooler a classifier never had)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
