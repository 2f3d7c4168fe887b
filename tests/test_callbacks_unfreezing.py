"""GradualUnfreezing / LayerwiseLRDecay behaviour: freezing cost, BN handling, bad input, plug-in use."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torchvision
from test_callbacks_models import GROUPS, BoringFT, Recorder, group_params, trainer
from torch import nn

from tl_lightning.callbacks import GradualUnfreezing, LayerwiseLRDecay
from tl_lightning.freezing import no_grad_if_frozen
from tl_lightning.errors import ConfigurationError, UnknownNameError


class Probe(pl.Callback):
    """At the first step: does the frozen trunk's output carry a graph? BN modes? grads?"""

    def __init__(self) -> None:
        self.out = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.out:
            return
        x = torch.randn(4, 8)
        self.out["trunk_grad_fn"] = pl_module.model[:3](x).grad_fn
        self.out["bn_training"] = {n: getattr(pl_module.model, n)[1].training for n in GROUPS}
        self.out["frozen_grads"] = [p.grad for n in GROUPS[:3] for p in group_params(pl_module, n)]
        self.out["head_grad"] = pl_module.head.weight.grad is not None

    def on_train_end(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        frozen = {id(p) for n in GROUPS[:3] for p in group_params(pl_module, n)}
        self.out["frozen_with_state"] = [p for p in opt.state if id(p) in frozen]
        self.out["n_state"] = len(opt.state)


def test_frozen_prefix_costs_nothing_and_bn_is_eval(tmp_path):
    model, probe = BoringFT(bn=True), Probe()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer(tmp_path, [GradualUnfreezing.top_n(1, groups="model"), probe], max_epochs=2).fit(model)
    assert probe.out["trunk_grad_fn"] is None  # no autograd graph through the frozen prefix
    assert probe.out["bn_training"] == {"stem": False, "block1": False, "block2": False, "block3": True}
    assert all(g is None for g in probe.out["frozen_grads"]) and probe.out["head_grad"]
    assert probe.out["frozen_with_state"] == [] and probe.out["n_state"] > 0  # no optimizer state
    after = model.state_dict()
    for k in before:  # frozen weights and BN running statistics untouched
        if k.startswith(("model.stem", "model.block1", "model.block2")):
            assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["model.block3.1.running_mean"], after["model.block3.1.running_mean"])


def test_train_bn_keeps_norm_layers_training(tmp_path):
    model, probe = BoringFT(bn=True), Probe()
    trainer(tmp_path, [GradualUnfreezing.feature_extraction(groups="model", train_bn=True), probe], max_epochs=1).fit(model)
    assert all(probe.out["bn_training"].values())
    assert model.model.stem[1].weight.requires_grad and not model.model.stem[0].weight.requires_grad


def test_no_grad_if_frozen_helper():
    trunk, head = nn.Linear(4, 4), nn.Linear(4, 2)
    trunk.requires_grad_(False)
    with no_grad_if_frozen(trunk) as off:
        feats = trunk(torch.randn(2, 4))
    assert off and feats.grad_fn is None and head(feats).requires_grad
    trunk.weight.requires_grad_(True)
    with no_grad_if_frozen(trunk) as off:
        assert not off and trunk(torch.randn(2, 4)).grad_fn is not None


def test_never_adds_param_groups_and_errors_when_params_missing(tmp_path):
    class FilteredOpt(BoringFT):
        def configure_optimizers(self):
            return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)

    with pytest.raises(ConfigurationError, match="never adds optimizer param groups"):
        trainer(tmp_path, [GradualUnfreezing(groups="model", schedule={1: "all"}, repartition=False)], max_epochs=2).fit(
            FilteredOpt()
        )
    # with LayerwiseLRDecay the frozen parameters are included from the start
    rec, m = Recorder(), FilteredOpt()
    trainer(tmp_path, [LayerwiseLRDecay(1.0, groups="model"), GradualUnfreezing(groups="model", schedule={1: "all"}), rec],
            max_epochs=2).fit(m)
    assert len(set(rec.n_groups)) == 1 and all(rec.trainable[-1].values())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"schedule": {1: ["blok3"]}}, UnknownNameError, r"block3.*valid names"),
        ({"schedule": {1: [7]}}, ConfigurationError, r"out of range.*stem"),
        ({"schedule": {1: [-5]}}, ConfigurationError, "out of range"),
        ({"initially_trainable": 9, "preset": "top_n_unfrozen"}, ConfigurationError, "only 4 layer groups"),
    ],
)
def test_bad_schedule_names_and_indices(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        trainer(tmp_path, [GradualUnfreezing(groups="model", **kwargs)], max_epochs=1).fit(BoringFT())


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: GradualUnfreezing(schedule={-1: "all"}), "negative"),
        (lambda: GradualUnfreezing(schedule={"x": "all"}), "not an epoch"),
        (lambda: GradualUnfreezing(schedule={1: 0}), "> 0"),
        (lambda: GradualUnfreezing(schedule={1: []}), "empty"),
        (lambda: GradualUnfreezing(unfreeze_every=0), ">= 1"),
        (lambda: GradualUnfreezing(preset="gradul"), "gradual"),
        (lambda: GradualUnfreezing(schedule={1: "all"}, unfreeze_every=2), "only one of"),
        (lambda: LayerwiseLRDecay(0.0), r"\(0, 1\]"),
        (lambda: LayerwiseLRDecay(1.5), r"\(0, 1\]"),
        (lambda: LayerwiseLRDecay(0.5, head_lr=-1.0), "head_lr"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises((ConfigurationError, UnknownNameError), match=match):
        make()


def test_yaml_friendly_schedule_and_gradual_preset():
    cb = GradualUnfreezing(schedule={"2": ["layer4"], "4": 2, "6": "all"})
    assert list(cb.schedule) == [2, 4, 6] and cb.schedule[4] == 2 and cb.schedule[6] == "all"
    assert GradualUnfreezing.gradual(every=2, k=1).unfreeze_every == 2


def test_unknown_groups_attribute_lists_choices(tmp_path):
    with pytest.raises(UnknownNameError, match=r"'modl'.*did you mean 'model'"):
        trainer(tmp_path, [GradualUnfreezing(groups="modl")], max_epochs=1).fit(BoringFT())


class TorchvisionUser(pl.LightningModule):
    """What a new user writes: a torchvision resnet18 in self.model, AdamW + OneCycleLR."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = torchvision.models.resnet18(num_classes=3)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.05)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=self.trainer.estimated_stepping_batches)
        return [opt], [{"scheduler": sched, "interval": "step"}]

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 3, (8,), generator=g))
        return torch.utils.data.DataLoader(data, batch_size=4)


def test_plug_in_torchvision_resnet(tmp_path):
    lrs, trainable = [], []

    class Rec(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            lrs.append({g["name"]: g["lr"] for g in optimizer.param_groups})
            trainable.append(pl_module.model.layer4[0].conv1.weight.requires_grad)

    decay = LayerwiseLRDecay(0.5, groups="model")
    unfreeze = GradualUnfreezing(groups="model", schedule={1: [-1]})
    trainer(tmp_path, [decay, unfreeze, Rec()], max_epochs=2).fit(TorchvisionUser())
    assert unfreeze.layer_group_names == ["stem", "layer1", "layer2", "layer3", "layer4"]  # fc is the head
    assert trainable == [False, False, True, True]
    first = lrs[0]
    assert first["layer4"] == pytest.approx(2 * first["layer3"]) == pytest.approx(16 * first["stem"])
    assert first["head"] == pytest.approx(first["layer4"]) and "layer4/no_decay" in first


def _rgb_data():
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 3, (8,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=4)


def test_layer_decay_callback_applies_to_transfer_classifier_groups(tmp_path):
    """TransferClassifier(layer_decay=1.0) + LayerwiseLRDecay(0.5): the callback's decay is applied
    to the module's named groups (it used to warn and leave every group at the same LR)."""
    from tl_lightning import TransferClassifier

    model = TransferClassifier(backbone="timm:test_resnet", pretrained=False, num_classes=3, lr=0.01, head_lr=0.1)
    seen = []

    class Rec(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append({g["name"]: g["lr"] for g in optimizer.param_groups})

    unfreeze = GradualUnfreezing(schedule={1: [-1]}, warmup_steps=2)
    trainer(tmp_path, [LayerwiseLRDecay(0.5), unfreeze, Rec()], max_epochs=2).fit(model, _rgb_data())
    assert unfreeze.layer_group_names == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert len({len(s) for s in seen}) == 1
    first = seen[0]
    assert first["layer4"] == pytest.approx(0.01)
    assert first["layer3"] == pytest.approx(0.005) and first["stem"] == pytest.approx(0.01 / 16)
    assert first["head"] == pytest.approx(0.1)  # the module's own head LR is kept
    assert seen[2]["layer4"] == pytest.approx(seen[0]["layer4"] / 2)  # warm-up step 1 of 2
    assert seen[3]["layer4"] == pytest.approx(seen[0]["layer4"]) == pytest.approx(2 * seen[0]["layer3"])


def test_layer_decay_callback_refuses_a_module_that_already_decays(tmp_path):
    from tl_lightning import TransferClassifier
    from tl_lightning.errors import ConfigurationError

    model = TransferClassifier(backbone="timm:test_resnet", pretrained=False, num_classes=3, layer_decay=0.5)
    with pytest.raises(ConfigurationError, match="apply the decay twice"):
        trainer(tmp_path, [LayerwiseLRDecay(0.9)], max_epochs=1).fit(model, _rgb_data())


def test_second_fit_with_a_new_trainer_keeps_warmup_factors_positive(tmp_path):
    """The callback keeps its progress across fit() calls while a new Trainer restarts global_step."""
    cb = GradualUnfreezing(groups="model", schedule={1: "all"}, warmup_steps=100)
    model = BoringFT(opt="sgd")
    trainer(tmp_path, [LayerwiseLRDecay(1.0, groups="model"), cb], max_epochs=3).fit(model)
    assert cb.unfrozen_groups == GROUPS

    factors: list[float] = []

    class Probe(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            factors.extend(cb.warmup_factor(n, trainer.global_step) for n in GROUPS)

    trainer(tmp_path, [LayerwiseLRDecay(1.0, groups="model"), cb, Probe()], max_epochs=1).fit(model)
    assert factors and all(0.0 < f <= 1.0 for f in factors), factors


def test_layer_decay_gives_configure_optimizers_back_after_a_crash(tmp_path):
    class Crash(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            raise RuntimeError("boom")

    cb = LayerwiseLRDecay(0.5, groups="model")
    crashed = BoringFT()
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, [cb, Crash()]).fit(crashed)
    assert "configure_optimizers" not in vars(crashed), "the wrapper must not outlive the fit"

    other = BoringFT()
    recorder = Recorder()
    trainer(tmp_path, [cb, recorder], max_epochs=1).fit(other)
    names = set(recorder.lrs[0])
    assert {"stem", "block3"} <= names, names  # the new module's optimizer was re-partitioned
