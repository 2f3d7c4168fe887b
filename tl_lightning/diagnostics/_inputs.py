"""Where the model inputs are in a batch, for every diagnostic the same way.

A batch is searched in this order: a ``(inputs, targets, ...)`` tuple or list gives its first
element; a mapping holding ``input_ids`` or ``pixel_values`` (a tokenized batch, a Hugging Face
style batch) is the inputs itself; a bare tensor is the inputs. Anything else needs an explicit
``input_fn`` on the callback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["InputFn", "Inputs", "batch_inputs", "num_rows", "take_rows", "to_cpu_copy", "to_device"]

Inputs = Tensor | Mapping[str, Tensor]
InputFn = Callable[[Any], Any]

_MAPPING_KEYS = ("input_ids", "pixel_values")


def batch_inputs(batch: Any, input_fn: InputFn | None = None) -> Inputs | None:
    """The model inputs of ``batch`` (``None`` when they cannot be found).

    Args:
        batch: A batch as the data loader yields it.
        input_fn: Explicit extractor (``lambda batch: batch["image"]``), used when given.
    """
    found = input_fn(batch) if input_fn is not None else _find(batch)
    if isinstance(found, Tensor):
        return found
    if isinstance(found, Mapping) and found and all(isinstance(v, Tensor) for v in found.values()):
        return found
    if isinstance(found, Mapping):
        tensors = {k: v for k, v in found.items() if isinstance(v, Tensor)}
        return tensors or None
    return None


def _find(batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping):
        return batch if any(k in batch for k in _MAPPING_KEYS) else None
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    return None


def num_rows(inputs: Inputs) -> int:
    """Batch size of ``inputs`` (the first dimension)."""
    if isinstance(inputs, Tensor):
        return int(inputs.shape[0]) if inputs.ndim else 1
    return min(int(v.shape[0]) for v in inputs.values() if v.ndim)


def take_rows(inputs: Inputs, n: int) -> Inputs:
    """The first ``n`` rows of every tensor."""
    if isinstance(inputs, Tensor):
        return inputs[:n]
    return {k: v[:n] for k, v in inputs.items()}


def to_device(inputs: Inputs, device: torch.device) -> Inputs:
    """``inputs`` on ``device``."""
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    return {k: v.to(device) for k, v in inputs.items()}


def to_cpu_copy(inputs: Inputs) -> Inputs:
    """A detached, contiguous CPU copy (ordinary tensors, also when taken under inference mode)."""

    def copy(t: Tensor) -> Tensor:
        with torch.inference_mode(False):
            return t.detach().to("cpu").contiguous().clone()

    if isinstance(inputs, Tensor):
        return copy(inputs)
    return {k: copy(v) for k, v in inputs.items()}
