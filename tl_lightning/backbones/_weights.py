"""Loading local checkpoints into backbones, with regex key renaming and strict reporting."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from tl_lightning.errors import WeightsUnavailableError

__all__ = ["KeyMap", "is_local_weights", "read_state_dict", "rename_keys", "load_weights"]

# [(regex, replacement or None to drop the key), ...] applied in order, or {regex: replacement}.
KeyMap = Sequence[tuple[str, str | None]] | Mapping[str, str | None]

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt", "checkpoint.pth")


def is_local_weights(weights: str | os.PathLike[str]) -> bool:
    """True when ``weights`` looks like a filesystem path rather than a hub tag / enum name."""
    s = str(weights)
    return (
        os.path.exists(s)
        or s.startswith(("/", "./", "../", "~"))
        or os.sep in s
        or s.endswith((".pth", ".pt", ".bin", ".safetensors", ".ckpt"))
    )


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a file or a folder holding one of the usual weight files.

    Lightning checkpoints (``state_dict`` key) and ``{"model": ...}`` / ``{"state_dict": ...}``
    wrappers are unwrapped.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        found = [p / f for f in _WEIGHT_FILES if (p / f).is_file()]
        if not found:
            raise WeightsUnavailableError(
                f"no weight file in folder {str(p)!r}; expected one of {list(_WEIGHT_FILES)}. "
                "Fix: pass the file itself as weights=..."
            )
        p = found[0]
    if not p.is_file():
        raise WeightsUnavailableError(
            f"weights file {str(p)!r} does not exist. Fix: check the path, or pass pretrained=False "
            "to train from random init on purpose."
        )
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(p))
    else:
        try:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - report any unreadable file the same way
            raise WeightsUnavailableError(f"could not read weights file {str(p)!r}: {err}") from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise WeightsUnavailableError(f"{str(p)!r} does not hold a state dict (got {type(sd).__name__})")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def rename_keys(state_dict: Mapping[str, torch.Tensor], key_map: KeyMap | None) -> dict[str, torch.Tensor]:
    """Apply regex rules to every key; a rule whose replacement is ``None`` drops matching keys.

    Rules apply in order, each to the result of the previous one (``re.sub`` semantics).

    Example:
        >>> rename_keys({"_fc.weight": 1, "x.num_batches_tracked": 2}, [(r"^_fc\\.", "classifier."),
        ...              (r".*num_batches_tracked$", None)])
        {'classifier.weight': 1}
    """
    if not key_map:
        return dict(state_dict)
    rules = list(key_map.items()) if isinstance(key_map, Mapping) else list(key_map)
    compiled = [(re.compile(pat), rep) for pat, rep in rules]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new: str | None = key
        for pattern, rep in compiled:
            if pattern.search(new):
                if rep is None:
                    new = None
                    break
                new = pattern.sub(rep, new)
        if new is not None:
            if new in out:
                raise WeightsUnavailableError(f"key_map maps two checkpoint keys onto {new!r}; fix the rules")
            out[new] = value
    return out


def load_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    key_map: KeyMap | None = None,
    strict: bool = True,
    ignore_missing: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """Load a local checkpoint into ``model`` after renaming keys.

    Args:
        model: Target module.
        path: Checkpoint file or folder.
        key_map: Regex renaming rules (see :func:`rename_keys`).
        strict: Raise when keys are missing or unexpected (after renaming) or shapes differ.
        ignore_missing: Regexes of model keys allowed to be missing (e.g. a new head).

    Returns:
        ``(missing, unexpected)`` key lists (empty when ``strict``).

    Raises:
        WeightsUnavailableError: listing missing / unexpected / mismatched keys, so a wrong
            ``key_map`` is fixed rather than silently training half-random weights.
    """
    sd = rename_keys(read_state_dict(path), key_map)
    own = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sd.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = [k for k in own if k not in sd and not any(re.search(r, k) for r in ignore_missing)]
    unexpected = [k for k in sd if k not in own]
    if strict and (missing or unexpected or mismatched):
        raise WeightsUnavailableError(
            f"weights in {str(path)!r} do not match {type(model).__name__}: "
            f"{len(missing)} missing (e.g. {missing[:5]}), {len(unexpected)} unexpected (e.g. {unexpected[:5]}), "
            f"{len(mismatched)} shape mismatches (e.g. {mismatched[:3]}). "
            "Fix: pass key_map=[(regex, replacement), ...] to rename the checkpoint's keys "
            "(None as replacement drops a key)."
        )
    loadable = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(loadable, strict=False)
    return missing, unexpected
