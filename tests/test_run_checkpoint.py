"""LastAndBestCheckpoint: last.ckpt is the latest state every epoch whatever the monitored metric
does; NaN / inf scores and non-finite weights never become "best"."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from tl_lightning.callbacks import LastAndBestCheckpoint
from tl_lightning.modules._checkpoint import read_checkpoint


class Scripted(pl.LightningModule):
    """Logs ``val/acc = scores[epoch]``; from epoch ``poison_at`` on, its weight is NaN."""

    def __init__(self, scores: list[float], poison_at: int | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.scores = scores
        self.poison_at = poison_at

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def on_train_epoch_end(self) -> None:
        if self.poison_at is not None and self.current_epoch >= self.poison_at:
            with torch.no_grad():
                self.layer.weight.fill_(float("nan"))

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", torch.tensor(self.scores[self.current_epoch]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(module: Scripted, callback: ModelCheckpoint, epochs: int) -> None:
    data = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[callback], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(module, data, data)


def checkpoint(tmp_path: Path, cls: type[ModelCheckpoint] = LastAndBestCheckpoint) -> ModelCheckpoint:
    return cls(dirpath=tmp_path, filename="epoch_{epoch:03d}", monitor="val/acc", mode="max", save_last=True,
               save_top_k=1, auto_insert_metric_name=False)


def test_last_is_the_last_epoch_when_the_metric_gets_worse(tmp_path: Path) -> None:
    callback = checkpoint(tmp_path)
    fit(Scripted([0.9, 0.5, 0.4]), callback, epochs=3)
    assert read_checkpoint(tmp_path / "last.ckpt")["epoch"] == 2, "last.ckpt is the last epoch"
    assert Path(callback.best_model_path).name == "epoch_000.ckpt" and float(callback.best_model_score) == pytest.approx(0.9)


def test_lightning_modelcheckpoint_keeps_the_best_epoch_as_last(tmp_path: Path) -> None:
    """The behaviour LastAndBestCheckpoint exists for (if Lightning changes it, this test says so)."""
    fit(Scripted([0.9, 0.5, 0.4]), checkpoint(tmp_path, ModelCheckpoint), epochs=3)
    assert read_checkpoint(tmp_path / "last.ckpt")["epoch"] == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_never_become_best(bad: float, tmp_path: Path) -> None:
    callback = checkpoint(tmp_path)
    with pytest.warns(UserWarning, match="not a candidate for the best checkpoint"):
        fit(Scripted([bad, 0.2, bad]), callback, epochs=3)
    assert Path(callback.best_model_path).name == "epoch_001.ckpt"
    assert math.isfinite(float(callback.best_model_score))
    assert read_checkpoint(tmp_path / "last.ckpt")["epoch"] == 2


def test_only_non_finite_scores_save_no_best(tmp_path: Path) -> None:
    callback = checkpoint(tmp_path)
    with pytest.warns(UserWarning, match="val/acc is nan"):
        fit(Scripted([float("nan"), float("nan")]), callback, epochs=2)
    assert callback.best_model_path == "" and callback.best_model_score is None
    assert (tmp_path / "last.ckpt").is_file()


def test_non_finite_weights_are_never_best_nor_last(tmp_path: Path) -> None:
    """Epoch 1 reports the best score with NaN weights: the best stays epoch 0, last.ckpt stays finite."""
    callback = checkpoint(tmp_path)
    with pytest.warns(UserWarning, match="NaN / inf weights"):
        fit(Scripted([0.5, 0.9], poison_at=1), callback, epochs=2)
    assert Path(callback.best_model_path).name == "epoch_000.ckpt"
    last = read_checkpoint(tmp_path / "last.ckpt")
    assert last["epoch"] == 0 and torch.isfinite(last["state_dict"]["layer.weight"]).all()


def test_save_last_now_writes_the_current_state(tmp_path: Path) -> None:
    callback = checkpoint(tmp_path)

    class SaveAtStep(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                assert callback.save_last_now(trainer) == str(tmp_path / "last.ckpt")
                raise KeyError("stop")

    data = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    trainer = pl.Trainer(max_epochs=3, callbacks=[callback, SaveAtStep()], logger=False, enable_progress_bar=False,
                         num_sanity_val_steps=0, accelerator="cpu")
    with pytest.raises(KeyError):
        trainer.fit(Scripted([0.1, 0.2, 0.3]), data, data)
    assert read_checkpoint(tmp_path / "last.ckpt")["global_step"] == 3
