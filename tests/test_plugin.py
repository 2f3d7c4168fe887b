"""The callbacks on users' own LightningModules, as Lightning's docs and examples write them:
trainable-only optimizers, Sequential-wrapped trunks, groups given once, plateau-driven phases."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torchvision
from test_callbacks_models import GROUPS, BoringFT, Recorder, group_params, trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tl_lightning.callbacks import GradualUnfreezing, LayerwiseLRDecay
from tl_lightning.errors import ConfigurationError


class TrainableOnly(BoringFT):
    """Lightning's documented convention: the optimizer holds the trainable parameters only."""

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr, weight_decay=0.01)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)}


def test_trainable_only_optimizer_with_warmup_and_scheduler_just_works(tmp_path) -> None:
    rec = Recorder()
    cb = GradualUnfreezing(groups="model", schedule={1: [-1], 2: "all"}, warmup_steps=2)
    trainer(tmp_path, [cb, rec], max_epochs=3).fit(TrainableOnly())
    # re-partitioned once, at setup: the group count never changes afterwards
    assert len(set(rec.n_groups)) == 1 and rec.n_groups[0] == len(GROUPS) + 1
    assert rec.trainable[0] == {"stem": False, "block1": False, "block2": False, "block3": False}
    assert all(rec.trainable[-1].values())
    first_block3 = next(i for i, t in enumerate(rec.trainable) if t["block3"])
    base = rec.lrs[first_block3]["head"]
    assert rec.lrs[first_block3]["block3"] == pytest.approx(base / 2)  # warm-up step 1 of 2, StepLR untouched
    assert rec.lrs[first_block3 + 1]["block3"] == pytest.approx(rec.lrs[first_block3 + 1]["head"])


def test_weight_decay_is_kept_when_repartitioning_for_unfreezing(tmp_path) -> None:
    model = TrainableOnly()
    cb = GradualUnfreezing(groups="model", schedule={1: "all"})
    t = trainer(tmp_path, [cb], max_epochs=1)
    t.fit(model)
    assert {g["weight_decay"] for g in t.optimizers[0].param_groups} == {0.01}


def test_groups_given_once_are_seen_by_the_other_callback(tmp_path) -> None:
    rec = Recorder()
    trainer(tmp_path, [LayerwiseLRDecay(0.5), GradualUnfreezing(groups="model", unfreeze_every=1), rec], max_epochs=1).fit(
        BoringFT()
    )
    lrs = rec.lrs[0]
    assert lrs["block3"] == pytest.approx(0.05) and lrs["block2"] == pytest.approx(0.025)
    with pytest.raises(ConfigurationError, match="different groups="):
        trainer(tmp_path, [LayerwiseLRDecay(0.5, groups={"a": r"^model\.stem"}), GradualUnfreezing(groups="model")]).fit(
            BoringFT()
        )


def test_backbone_lr_scale_puts_the_backbone_at_a_fraction(tmp_path) -> None:
    rec = Recorder()
    trainer(tmp_path, [LayerwiseLRDecay(1.0, backbone_lr_scale=0.1, groups="model"), rec], max_epochs=1).fit(BoringFT())
    lrs = rec.lrs[0]
    assert lrs["head"] == pytest.approx(0.05)
    assert {round(lrs[g], 9) for g in GROUPS} == {0.005}


# -- Lightning's official example, with the library's callbacks --------------------------------


class OfficialExample(pl.LightningModule):
    """``examples/pytorch/domain_templates/computer_vision_fine_tuning.py``'s TransferLearningModel, shrunk:
    resnet18 at random init instead of a downloaded resnet50, 32 px images, 2 classes."""

    def __init__(self, lr: float = 1e-3, milestones: tuple = (1, 2)) -> None:
        super().__init__()
        self.lr, self.milestones = lr, milestones
        backbone = torchvision.models.resnet18()
        _layers = list(backbone.children())[:-1]
        self.feature_extractor = nn.Sequential(*_layers)
        self.fc = nn.Sequential(nn.Linear(512, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feature_extractor(x).squeeze(-1).squeeze(-1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.binary_cross_entropy_with_logits(self(x), y.view(-1, 1).float())

    def configure_optimizers(self) -> Any:
        trainable_parameters = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable_parameters, lr=self.lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(self.milestones), gamma=0.1)
        return [optimizer], [scheduler]

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 2, (8,), generator=g)), batch_size=4)


def test_official_fine_tuning_example_with_the_library_callbacks(tmp_path) -> None:
    """``MilestonesFinetuning(milestones=(1, 2))`` becomes one callback: the 4 ResNet stages at the first
    milestone, the stem at the second, each at lr/10 as BaseFinetuning's default initial_denom_lr=10."""
    seen: list[dict[str, Any]] = []

    class Spy(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            fe = pl_module.feature_extractor
            seen.append(
                {
                    "groups": len(optimizer.param_groups),
                    "stem": fe[0].weight.requires_grad,
                    "stages": [fe[i][0].conv1.weight.requires_grad for i in range(4, 8)],
                    "lr": {g["name"]: g["lr"] for g in optimizer.param_groups},
                    "bn_eval": not fe[1].training,
                }
            )

    cb = GradualUnfreezing(schedule={1: 4, 2: "all"}, groups="feature_extractor", phase_lr_scale=0.1)
    trainer(tmp_path, [cb, Spy()], max_epochs=3).fit(OfficialExample())
    assert cb.layer_group_names == ["stem", "layer1", "layer2", "layer3", "layer4"]
    epoch0, epoch1, epoch2 = seen[0], seen[2], seen[4]
    assert not epoch0["stem"] and epoch0["stages"] == [False] * 4 and epoch0["bn_eval"]
    assert not epoch1["stem"] and epoch1["stages"] == [True] * 4  # {1: 4} = the four stages
    assert epoch2["stem"] and not epoch2["bn_eval"]
    assert len({s["groups"] for s in seen}) == 1
    # MultiStepLR decayed the head to 1e-4 at epoch 1; the stages train at a tenth of it
    assert epoch1["lr"]["head"] == pytest.approx(1e-4) and epoch1["lr"]["layer4"] == pytest.approx(1e-5)


# -- plateau-driven phases ----------------------------------------------------------------------


class Plateau(BoringFT):
    """Logs a rigged validation metric: improves for two epochs, then stalls."""

    VALUES = [1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        value = self.VALUES[min(self.current_epoch, len(self.VALUES) - 1)]
        self.log("val/score", torch.tensor(value), on_epoch=True, sync_dist=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(2, 8)), batch_size=2)


def _plateau_callback(**kw: Any) -> GradualUnfreezing:
    kw.setdefault("groups", "model")
    return GradualUnfreezing(on_plateau=True, monitor="val/score", mode="min", patience=1, **kw)


def test_plateau_starts_the_next_phase_with_its_lr_scale(tmp_path) -> None:
    rec = Recorder()
    cb = _plateau_callback(phases=["none", {"unfreeze": ["block3"], "lr_scale": 0.5}, "all"])
    trainer(tmp_path, [cb, rec], max_epochs=5, num_sanity_val_steps=0).fit(Plateau())
    per_epoch = [rec.trainable[i * 4] for i in range(5)]
    # epoch 0: 1.0, epoch 1: 0.5 (better), epoch 2: 0.5 (no better: plateau) -> phase 0 at epoch 3
    assert [t["block3"] for t in per_epoch] == [False, False, False, True, True]
    assert not per_epoch[3]["block2"]
    assert rec.lrs[12]["block3"] == pytest.approx(rec.lrs[12]["head"] * 0.5)
    # phase 0's own plateau: epoch 3 sets its best, epoch 4 does not improve -> "all" at epoch 5
    assert cb.unfrozen_groups == ["block3"]


def test_max_epochs_ends_a_phase_without_a_plateau(tmp_path) -> None:
    class Improving(Plateau):
        VALUES = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]

    rec = Recorder()
    cb = _plateau_callback(phases=[{"unfreeze": ["block3"], "max_epochs": 2}, {"unfreeze": "all"}])
    trainer(tmp_path, [cb, rec], max_epochs=4, num_sanity_val_steps=0).fit(Improving())
    per_epoch = [rec.trainable[i * 4] for i in range(4)]
    assert [t["block3"] for t in per_epoch] == [True] * 4  # phase 0 is active from the start
    assert [t["stem"] for t in per_epoch] == [False, False, True, True]  # never plateaued: max_epochs=2 ends it
    cb2 = GradualUnfreezing(groups="model", phases=["none", {"unfreeze": "all", "max_epochs": 1}])
    with pytest.raises(ConfigurationError, match="max_epochs"):  # without on_plateau a phase needs an end
        trainer(tmp_path, [cb2], max_epochs=3, num_sanity_val_steps=0).fit(Improving())


def test_restore_best_loads_the_phases_best_weights_before_unfreezing(tmp_path) -> None:
    class Worse(Plateau):
        VALUES = [1.0, 0.2, 0.9, 0.9, 0.9]

    ends: dict[int, dict[str, torch.Tensor]] = {}
    starts: dict[int, dict[str, torch.Tensor]] = {}

    class Snap(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            starts[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.state_dict().items()}

        def on_train_epoch_end(self, trainer, pl_module):
            ends[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.state_dict().items()}

    cb = _plateau_callback(phases=["none", "all"], restore_best=True)
    trainer(tmp_path, [cb, Snap()], max_epochs=4, num_sanity_val_steps=0).fit(Worse())
    assert cb.unfrozen_groups == GROUPS
    # best was epoch 1 (0.2); epoch 2 (0.9) is the plateau, so epoch 3 starts from epoch 1's weights
    assert all(torch.equal(starts[3][k], ends[1][k]) for k in ends[1])
    assert not all(torch.equal(ends[2][k], ends[1][k]) for k in ends[1])


def test_plateau_resume_is_exact(tmp_path) -> None:
    def callbacks() -> list:
        return [LayerwiseLRDecay(0.5, groups="model"), _plateau_callback(phases=[["block3"], "all"], warmup_steps=2)]

    full = Plateau()
    trainer(tmp_path / "full", callbacks(), max_epochs=6, num_sanity_val_steps=0).fit(full)
    first = Plateau()
    t1 = trainer(tmp_path / "a", callbacks(), max_epochs=3, num_sanity_val_steps=0)
    t1.fit(first)
    ckpt = tmp_path / "mid.ckpt"
    t1.save_checkpoint(ckpt)
    resumed = Plateau(seed=7)
    cbs = callbacks()
    trainer(tmp_path / "b", cbs, max_epochs=6, num_sanity_val_steps=0).fit(resumed, ckpt_path=ckpt)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert cbs[1].unfrozen_groups == GROUPS
    assert group_params(resumed, "stem")[0].requires_grad


def test_plateau_needs_the_metric_to_be_logged(tmp_path) -> None:
    cb = GradualUnfreezing(groups="model", on_plateau=True, monitor="val/nope")
    with pytest.raises(ConfigurationError, match="val/nope"):
        trainer(tmp_path, [cb], max_epochs=2, num_sanity_val_steps=0).fit(Plateau())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"restore_best": True}, "needs on_plateau"),
        ({"on_plateau": True, "unfreeze_every": 2}, "drop unfreeze_every"),
        ({"phases": [{"unfreez": "all"}]}, "unknown key"),
        ({"phases": [{"unfreeze": "all", "lr_scale": 0}]}, "lr_scale"),
        ({"phases": []}, "non-empty"),
        ({"on_plateau": True, "mode": "up"}, "mode"),
    ],
)
def test_phase_argument_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        GradualUnfreezing(**kwargs)
