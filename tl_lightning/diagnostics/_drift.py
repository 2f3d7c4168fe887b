"""Relative weight change of each layer group since a snapshot: ``||w - w0|| / ||w0||``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tl_lightning.backbones._base import LayerGroup
from tl_lightning.errors import CheckpointError

__all__ = ["WeightDrift"]


class WeightDrift:
    """Keeps the starting weights ``w0`` of every parameter and measures each group's drift from them.

    Parameters are stored under their names in the module (``module.named_parameters()``), so
    the snapshot survives a checkpoint and maps onto a rebuilt module. Only tensors go into
    :meth:`state_dict` (checkpoints load with ``weights_only=True``).

    Args:
        device: Where ``w0`` is kept: ``"cpu"`` (default: no accelerator memory) or
            ``"param"`` (next to each parameter: faster measurements, more device memory).
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.w0: dict[str, Tensor] = {}

    def __bool__(self) -> bool:
        return bool(self.w0)

    def _where(self, p: Tensor) -> torch.device:
        return p.device if self.device == "param" else torch.device("cpu")

    def snapshot(self, named: Iterable[tuple[str, nn.Parameter]]) -> None:
        """Copy the current values as ``w0``."""
        with torch.no_grad():
            self.w0 = {n: p.detach().to(self._where(p), copy=True) for n, p in named}

    def measure(self, module: nn.Module, groups: Sequence[LayerGroup]) -> dict[str, float]:
        """Relative drift of each group (``nan`` for a group whose ``w0`` is all zeros)."""
        names = {id(p): n for n, p in module.named_parameters()}
        out: dict[str, float] = {}
        with torch.no_grad():
            for g in groups:
                num, den = 0.0, 0.0
                for p in g.parameters():
                    w0 = self.w0.get(names.get(id(p), ""))
                    if w0 is None:
                        continue
                    cur = p.detach().to(w0.device, torch.float32)
                    ref = w0.float()
                    num += float(((cur - ref) ** 2).sum())
                    den += float((ref * ref).sum())
                out[g.name] = math.sqrt(num) / math.sqrt(den) if den > 0 else float("nan")
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"device": self.device, "w0": {n: t.detach().cpu() for n, t in self.w0.items()}}

    def load_state_dict(self, state: Mapping[str, Any], module: nn.Module | None = None) -> None:
        """Restore ``w0``; with ``module``, check that the names and shapes fit it."""
        w0 = dict(state.get("w0") or {})
        if module is not None and w0:
            own = dict(module.named_parameters())
            missing = [n for n in w0 if n not in own]
            wrong = [n for n, t in w0.items() if n in own and tuple(own[n].shape) != tuple(t.shape)]
            if missing or wrong:
                raise CheckpointError(
                    f"the checkpoint's starting weights (w0) do not fit this model: {len(missing)} unknown and "
                    f"{len(wrong)} differently shaped parameter(s), e.g. {(missing or wrong)[:3]}; resume with the "
                    "model the checkpoint was trained with"
                )
            self.w0 = {n: t.to(self._where(own[n])) for n, t in w0.items()}
        else:
            self.w0 = w0
