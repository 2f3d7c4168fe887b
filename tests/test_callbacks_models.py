"""Small LightningModules shared by the fine-tuning callback tests (no tests of their own here)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

GROUPS = ["stem", "block1", "block2", "block3"]


def make_data(n: int = 32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return TensorDataset(x, y)


class BoringFT(pl.LightningModule):
    """A 4-group trunk in ``self.model`` plus ``self.head``; the user's own optimizer/scheduler.

    Args:
        sched: ``None`` or a function ``(optimizer, module) -> scheduler or lr_scheduler dict``.
        bn: Put BatchNorm1d in every trunk block.
    """

    def __init__(
        self,
        lr: float = 0.05,
        weight_decay: float = 0.01,
        sched: Callable[[Any, Any], Any] | None = None,
        bn: bool = False,
        opt: str = "adamw",
        batch_size: int = 8,
        n: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)

        def block(i: int, o: int) -> nn.Module:
            layers: list[nn.Module] = [nn.Linear(i, o)]
            if bn:
                layers.append(nn.BatchNorm1d(o))
            layers.append(nn.Tanh())
            return nn.Sequential(*layers)

        self.model = nn.Sequential(
            OrderedDict(stem=block(8, 16), block1=block(16, 16), block2=block(16, 16), block3=block(16, 16))
        )
        self.head = nn.Linear(16, 2)
        self.lr, self.wd, self.sched, self.opt, self.bs, self.n = lr, weight_decay, sched, opt, batch_size, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.model(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        self.log("const", 1.0, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        if self.opt == "sgd":
            opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.wd)
        else:
            opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.wd)
        if self.sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": self.sched(opt, self)}

    def train_dataloader(self) -> DataLoader:
        data = make_data(self.n)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # explicit, unshuffled: rank r gets samples r, r + world, ... (tests/test_ddp.py relies on it)
            sampler = torch.utils.data.DistributedSampler(data, shuffle=False)
            return DataLoader(data, batch_size=self.bs, sampler=sampler)
        return DataLoader(data, batch_size=self.bs, shuffle=False)


def trainer(tmp_path: Any, callbacks: list, **kw: Any) -> pl.Trainer:
    kw.setdefault("max_epochs", 3)
    return pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        **kw,
    )


def group_params(module: BoringFT, name: str) -> list[nn.Parameter]:
    return list(getattr(module.model, name).parameters())


class Recorder(pl.Callback):
    """Record, at every optimizer step, the effective LR of each named param group."""

    def __init__(self) -> None:
        self.lrs: list[dict[str, float]] = []
        self.n_groups: list[int] = []
        self.trainable: list[dict[str, bool]] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.lrs.append({g.get("name", str(i)): float(g["lr"]) for i, g in enumerate(optimizer.param_groups)})
        self.n_groups.append(len(optimizer.param_groups))
        self.trainable.append({n: group_params(pl_module, n)[0].requires_grad for n in GROUPS})
