"""A short fine-tuning run for tests/test_sharding.py, on 1 process or sharded (FSDP2) on 2.

Run as a script (``python tests/_fsdp_script.py <devices> <out dir> [resume checkpoint]``):
Lightning re-launches it for rank 1. Rank 0 writes ``<out>/weights.pt`` (the full, gathered
state dict at the end) and sharded checkpoints ``<out>/checkpoints/epoch=N.ckpt/`` every epoch.

The recipe: a tiny ViT (LayerNorm, no dropout, so 2 processes x 4 samples equal 1 x 8 exactly),
SGD with momentum (linear in the gradients: float noise stays float noise), layer-wise LR decay by
the callback, head-only at epoch 0, the top two groups from epoch 1, everything from epoch 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from tl_lightning import GradualUnfreezing, LayerwiseLRDecay, TransferClassifier
from tl_lightning.sharding import FSDP2Strategy

EPOCHS = 3
GLOBAL_BATCH = 8


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 3, (16,), generator=g))


class Data(L.LightningDataModule):
    """Rank r gets samples r, r + 2, ... in order: the union of a step's batches is the 1-process batch."""

    def __init__(self, devices: int) -> None:
        super().__init__()
        self.devices = devices

    def _loader(self, ds: TensorDataset) -> DataLoader:
        sampler = None
        if self.devices > 1:
            sampler = DistributedSampler(ds, num_replicas=self.devices, rank=self.trainer.global_rank, shuffle=False)
        return DataLoader(ds, batch_size=GLOBAL_BATCH // self.devices, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self._loader(data())

    def val_dataloader(self) -> DataLoader:
        ds = data()
        return self._loader(TensorDataset(ds.tensors[0][:8], ds.tensors[1][:8]))


def build() -> tuple[TransferClassifier, list[L.Callback]]:
    L.seed_everything(0)
    model = TransferClassifier(
        "timm:test_vit", num_classes=3, pretrained=False, lr=0.05, weight_decay=0.0, scheduler=None,
        optimizer={"_target_": "torch.optim.SGD", "momentum": 0.9},
    )
    return model, [GradualUnfreezing(schedule={1: 2, 2: "all"}), LayerwiseLRDecay(decay=0.8)]


def run(devices: int, out: Path, resume: str | None = None) -> dict[str, torch.Tensor] | None:
    """Train; return the full state dict on rank 0 (``None`` on other ranks)."""
    model, callbacks = build()
    checkpoints = ModelCheckpoint(dirpath=out / "checkpoints", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy=FSDP2Strategy() if devices > 1 else "auto",
        max_epochs=EPOCHS, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[*callbacks, checkpoints], limit_val_batches=1, num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=Data(devices), ckpt_path=resume)
    if devices > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if trainer.global_rank != 0:
        return None
    state = {k: v.float() for k, v in state.items()}
    torch.save({"state": state, "units": [u.name for u in getattr(model, "shard_units", [])]}, out / "weights.pt")
    return state


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
