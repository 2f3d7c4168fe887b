"""What a TransferClassifier checkpoint carries besides the weights, so it stands on its own.

A checkpoint written by :class:`~tl_lightning.TransferClassifier` holds, under the
``"tl_lightning"`` key: the labels and task; the input preprocessing the model was trained with
(image size / mean / std / crop, or the tokenizer's ``max_length``), which may differ from the
backbone's defaults (``data.max_length=32``); the data settings that shape inputs
(``text_column``, ...); and, for backbones whose architecture is described by files (Hugging
Face config, tokenizer, image processor), those files. ``load_from_checkpoint`` rebuilds the
model from the checkpoint alone: no network, no original folder, the same predictions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from tl_lightning.backbones import ImagePreprocess, PreprocessConfig, TextPreprocess
from tl_lightning.errors import CheckpointError

__all__ = ["preprocess_to_dict", "preprocess_from_dict", "materialize_files", "read_checkpoint", "cache_dir"]


def preprocess_to_dict(p: PreprocessConfig) -> dict[str, Any]:
    """Plain description of a preprocess (the tokenizer itself travels as backbone files).

    Example:
        >>> preprocess_to_dict(ImagePreprocess(input_size=(3, 32, 32)))["input_size"]
        [3, 32, 32]
    """
    if isinstance(p, TextPreprocess):
        return {"modality": "text", "max_length": int(p.max_length)}
    out = {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.init}
    out["input_size"] = [int(v) for v in out["input_size"]]
    out["mean"] = [float(v) for v in out["mean"]]
    out["std"] = [float(v) for v in out["std"]]
    out["modality"] = "image"
    return out


def preprocess_from_dict(saved: dict[str, Any], base: PreprocessConfig) -> PreprocessConfig:
    """Rebuild the preprocess saved by :func:`preprocess_to_dict` on top of the backbone's ``base``."""
    modality = saved.get("modality")
    if modality != base.modality:
        raise CheckpointError(
            f"the checkpoint's inputs are {modality!r} but the backbone takes {base.modality!r} inputs; "
            "rebuild the model with the backbone the checkpoint was trained with"
        )
    if isinstance(base, TextPreprocess):
        return base.with_max_length(int(saved["max_length"]))
    fields = {k: v for k, v in saved.items() if k != "modality"}
    fields["input_size"] = tuple(fields["input_size"])
    fields["mean"] = tuple(fields["mean"])
    fields["std"] = tuple(fields["std"])
    return ImagePreprocess(**fields)


def cache_dir() -> Path:
    """Where files unpacked from checkpoints go: ``$TL_LIGHTNING_CACHE`` or ``~/.cache/tl_lightning``."""
    root = os.environ.get("TL_LIGHTNING_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tl_lightning"
    )
    return Path(root)


def materialize_files(files: dict[str, bytes], kind: str = "backbone") -> Path:
    """Write ``{relative name: content}`` into a content-addressed folder and return it.

    The same files always map to the same folder, so loading a checkpoint twice reuses it and
    nothing accumulates.
    """
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(files[name])
    folder = cache_dir() / kind / digest.hexdigest()[:24]
    if not (folder / ".complete").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            target = (folder / name).resolve()
            if folder.resolve() not in target.parents:
                raise CheckpointError(f"checkpoint file name {name!r} points outside its folder; refusing to write it")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            tmp.write_bytes(content)
            tmp.replace(target)
        (folder / ".complete").write_text("ok\n")
    return folder


def read_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu", sharded_ok: bool = False) -> dict[str, Any]:
    """Load a Lightning checkpoint with ``weights_only=True``; a clear error for anything else.

    Memory-mapped where the format allows, so looking at a large checkpoint is cheap. With
    ``sharded_ok``, a sharded checkpoint folder (``trainer=fsdp``) gives its ``meta.pt`` (everything
    but the weights, ``state_dict`` empty); without, it is an error naming the conversion command.

    Raises:
        CheckpointError: the file is missing, truncated, not a torch file, or not a Lightning
            checkpoint (no ``state_dict``).
    """
    p = Path(path).expanduser()
    sharded = p.is_dir() and (p / "meta.pt").is_file()
    if sharded and not sharded_ok:
        raise CheckpointError(
            f"{str(p)!r} is a sharded checkpoint (a folder written by trainer=fsdp); it resumes training, but to load "
            f"or predict with it make one file first: python -m tl_lightning.sharding {p} {p.with_suffix('')}_full.ckpt"
        )
    if sharded:
        # everything but the weights and optimizer state, which the sharded strategy loads itself
        p = p / "meta.pt"
    if not p.is_file():
        raise CheckpointError(
            f"checkpoint {str(p)!r} does not exist (or is not a file). Fix: pass the path of a .ckpt written by "
            "tl-train, e.g. outputs/<task>/<date>/<time>/checkpoints/last.ckpt"
        )
    try:
        try:
            checkpoint = torch.load(str(p), map_location=map_location, weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            checkpoint = torch.load(str(p), map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for broken files
        raise CheckpointError(
            f"{str(p)!r} is not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "it may be truncated (a copy or a save that did not finish) or not a .ckpt at all. Fix: point at "
            "another checkpoint, e.g. the run's checkpoints/last.ckpt"
        ) from err
    if sharded and isinstance(checkpoint, dict):
        checkpoint.setdefault("state_dict", {})
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{str(p)!r} is a torch file but not a Lightning checkpoint (no 'state_dict'; found {keys}). "
            "Fix: pass a .ckpt written by tl-train or Trainer.save_checkpoint"
        )
    return checkpoint
