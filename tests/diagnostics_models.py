"""Modules, data and trainers shared by the diagnostics tests (no tests of their own here)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

GROUPS = ["stem", "block1", "block2", "block3"]


def natural_crops(n: int, seed: int = 0) -> list[Image.Image]:
    """Random crops (40-160 px) of skimage's coffee and chelsea photographs (installed, offline)."""
    from skimage import data

    photos = [data.coffee(), data.chelsea()]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        photo = photos[i % 2]
        h, w = photo.shape[:2]
        size = int(rng.integers(40, 160))
        top, left = int(rng.integers(0, h - size)), int(rng.integers(0, w - size))
        crops.append(Image.fromarray(photo[top : top + size, left : left + size]))
    return crops


def image_batches(
    transform: Any, n_batches: int = 3, batch_size: int = 8, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, targets)`` batches made by ``transform`` from natural crops."""
    crops = natural_crops(n_batches * batch_size, seed)
    out = []
    for b in range(n_batches):
        x = torch.stack([transform(c) for c in crops[b * batch_size : (b + 1) * batch_size]])
        out.append((x, torch.arange(batch_size) % 2))
    return out


def tiny_image_classifier(**kwargs: Any) -> Any:
    from tl_lightning import TransferClassifier

    kwargs.setdefault("labels", ["a", "b"])
    return TransferClassifier("timm:test_resnet", pretrained=False, **kwargs)


def image_loader(n: int = 24, batch_size: int = 8, classes: int = 2, seed: int = 0) -> DataLoader:
    """Normalized-looking 32 px images (natural crops through the library's eval transform)."""
    from tl_lightning.backbones import ImagePreprocess
    from tl_lightning.data._transforms import image_eval_transform

    t = image_eval_transform(ImagePreprocess(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3))
    x = torch.stack([t(c) for c in natural_crops(n, seed)])
    y = torch.arange(n) % classes
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


class ScriptedModule(pl.LightningModule):
    """A 4-group MLP trunk in ``self.model`` plus a head; logs ``train/acc`` / ``val/acc`` from scripts.

    Args:
        train_acc: ``train/acc`` logged in each epoch.
        val_acc: ``val/acc`` logged in each epoch.
        lr: SGD learning rate (a large one moves the top groups fast).
    """

    def __init__(
        self, train_acc: Sequence[float] = (), val_acc: Sequence[float] = (), lr: float = 0.5, seed: int = 0
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.model = nn.Sequential(
            OrderedDict((name, nn.Sequential(nn.Linear(8, 8), nn.Tanh())) for name in GROUPS)
        )
        self.head = nn.Linear(8, 2)
        self.train_acc, self.val_acc, self.lr = list(train_acc), list(val_acc), lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.model(x))

    def _scripted(self, values: list[float]) -> float:
        return values[min(self.current_epoch, len(values) - 1)] if values else 0.0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        self.log("train/acc", self._scripted(self.train_acc), on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self(x), y), on_step=False, on_epoch=True)
        self.log("val/acc", self._scripted(self.val_acc), on_step=False, on_epoch=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def vector_loader(n: int = 32, batch_size: int = 8, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=batch_size)


def trainer(tmp_path: Any, callbacks: list, **kw: Any) -> pl.Trainer:
    kw.setdefault("max_epochs", 2)
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=kw.pop("num_sanity_val_steps", 0),
        **kw,
    )
