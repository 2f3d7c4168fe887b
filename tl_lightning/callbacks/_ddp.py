"""Gradient averaging for parameters outside DDP's reducer.

DDP builds its reducer once, when it wraps the model, from the parameters that require grad
at that moment. Parameters unfrozen later get local gradients that DDP never averages, so the
replicas drift apart (Lightning issue 20340). :class:`OutsideReducerSync` records the reducer's
parameters right after the wrap and all-reduces (mean) the gradients of every other trainable
parameter before each optimizer step, in one flat buffer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["OutsideReducerSync", "ddp_module"]


def ddp_module(model: object) -> nn.parallel.DistributedDataParallel | None:
    """The ``DistributedDataParallel`` wrapper of the trainer's model, if any."""
    return model if isinstance(model, nn.parallel.DistributedDataParallel) else None


class OutsideReducerSync:
    """Average the gradients of trainable parameters that DDP's reducer does not cover.

    Args:
        params: Candidate parameters (the callback's layer groups).
    """

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        self.params = list(params)
        self.reducer_ids: set[int] | None = None

    def capture(self, wrapped: nn.parallel.DistributedDataParallel) -> None:
        """Record the parameters DDP's reducer holds (call right after the wrap: on_fit_start)."""
        ignore = getattr(wrapped, "parameters_to_ignore", set())
        self.reducer_ids = {
            id(p)
            for mname, mod in wrapped.module.named_modules()
            for pname, p in mod.named_parameters(recurse=False)
            if p.requires_grad and f"{mname}.{pname}" not in ignore
        }

    @property
    def active(self) -> bool:
        return self.reducer_ids is not None and dist.is_available() and dist.is_initialized()

    def outside(self) -> list[nn.Parameter]:
        """Trainable parameters the reducer does not average."""
        assert self.reducer_ids is not None
        return [p for p in self.params if p.requires_grad and id(p) not in self.reducer_ids]

    def sync(self) -> int:
        """All-reduce (mean) the gradients of :meth:`outside`; return how many tensors were synced.

        Every rank must call it at the same step with the same frozen/unfrozen state (which the
        deterministic schedule guarantees). A parameter without ``.grad`` counts as zero; it
        stays ``None`` only when it has no gradient on any rank (as in DDP).
        """
        if not self.active:
            return 0
        params = self.outside()
        if not params:
            return 0
        world = dist.get_world_size()
        ref = params[0]
        flat = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(ref.dtype) for p in params
        ]
        present = torch.tensor([p.grad is not None for p in params], dtype=ref.dtype, device=ref.device)
        buf = torch.cat([*flat, present])
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        buf.div_(world)
        offset = 0
        counts = buf[-len(params) :]
        for p, has in zip(params, counts.tolist()):
            n = p.numel()
            if has > 0:
                g = buf[offset : offset + n].view_as(p).to(p.dtype)
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
            offset += n
        return len(params)
