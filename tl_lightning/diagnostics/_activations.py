"""Capture the output of each layer group during one forward pass, with forward hooks.

A group's output is the output of the last of its modules to run (a ResNet stage's
``nn.Sequential``, a transformer layer, the ``conv1``/``bn1``/``act1`` stem's last one); groups
made only of bare parameters (a ViT's ``cls_token``) have none. Hooks are attached only for
the probe forward, so training pays nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from typing_extensions import Self

from tl_lightning.backbones._base import LayerGroup

__all__ = ["GroupOutputs", "first_tensor", "pooled"]


def first_tensor(output: Any) -> Tensor | None:
    """The main tensor of a module output (a tensor, the first of a tuple, ``last_hidden_state``)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        hidden = output.get("last_hidden_state")
        if isinstance(hidden, Tensor):
            return hidden
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, Tensor):
                return item
    return None


def pooled(act: Tensor) -> Tensor:
    """One vector per example: spatial mean of ``(n, C, H, W)``, token mean of ``(n, T, D)``."""
    act = act.detach().float()
    if act.ndim == 4:
        return act.mean(dim=(2, 3))
    if act.ndim == 3:
        return act.mean(dim=1)
    return act.reshape(act.shape[0], -1)


class GroupOutputs:
    """Context manager: while active, ``outputs[group name]`` is the group's latest output.

    Example:
        >>> with GroupOutputs(groups) as capture:  # doctest: +SKIP
        ...     model(x)
        >>> capture.outputs["layer3"].shape  # doctest: +SKIP
    """

    def __init__(self, groups: Sequence[LayerGroup]) -> None:
        self.groups = list(groups)
        self.outputs: dict[str, Tensor] = {}
        self._handles: list[Any] = []

    def _hook(self, name: str, batch: int | None) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            t = first_tensor(output)
            # a module reused on other tensors (e.g. a shared norm) must not replace the output by a differently shaped one
            if t is not None and t.ndim >= 1 and (batch is None or t.shape[0] == batch):
                self.outputs[name] = t

        return hook

    def attach(self, batch: int | None = None) -> GroupOutputs:
        self.outputs = {}
        for g in self.groups:
            for _, module in g.modules:
                self._handles.append(module.register_forward_hook(self._hook(g.name, batch)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> Self:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()
