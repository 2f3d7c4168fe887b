"""L2-SP: the penalty's gradient is the analytic one (also with gradient accumulation), the backbone's
weight decay is off, frozen groups cost nothing, weights stay closer to w0, exact resume, DDP."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from test_callbacks_models import GROUPS, BoringFT, make_data, trainer

from tl_lightning import TransferClassifier
from tl_lightning.callbacks import L2SP as ExportedL2SP
from tl_lightning.callbacks import GradualUnfreezing
from tl_lightning.errors import CheckpointError, ConfigurationError
from tl_lightning.finetune import L2SP


class Grads(pl.Callback):
    """Record, at every optimizer step, the weights and the gradients as this callback sees them."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.weights.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None})


def test_exported_from_callbacks() -> None:
    assert ExportedL2SP is L2SP


@pytest.mark.parametrize("bad", [{"alpha": -1.0}, {"beta": float("nan")}, {"alpha": "0.1"}])
def test_bad_arguments_are_one_line_errors(bad: dict) -> None:
    with pytest.raises(ConfigurationError, match="alpha|beta"):
        L2SP(**bad)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_gradient_is_the_analytic_gradient_of_loss_plus_penalty(tmp_path: Path, accumulate: int) -> None:
    alpha, beta = 0.7, 0.3
    model = BoringFT(opt="sgd", lr=0.1, weight_decay=0.0, batch_size=4, n=16)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    before, after = Grads(), Grads()
    trainer(tmp_path, [before, L2SP(alpha, beta, groups="model"), after], max_epochs=1,
            accumulate_grad_batches=accumulate).fit(model)
    assert len(after.grads) == 4 // accumulate
    step = 1  # step 0 starts at w0: the backbone term is 0 there
    weights = after.weights[step]
    # analytic: d/dw [mean of the micro-batch losses + alpha/2 ||w - w0||^2 + beta/2 ||head||^2]
    ref = copy.deepcopy(model)
    ref.load_state_dict(weights)
    ref.zero_grad()
    x, y = make_data(16).tensors
    micro = [slice(i * 4, (i + 1) * 4) for i in range(step * accumulate, (step + 1) * accumulate)]
    loss = sum(torch.nn.functional.cross_entropy(ref(x[s]), y[s]) for s in micro) / accumulate
    params = dict(ref.named_parameters())
    loss = loss + alpha / 2 * sum(((params[n] - w0[n]) ** 2).sum() for n in params if n.startswith("model."))
    loss = loss + beta / 2 * sum((params[n] ** 2).sum() for n in params if n.startswith("head."))
    loss.backward()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(after.grads[step][name], p.grad, atol=1e-6, rtol=1e-5, msg=name)
    # and the callback's part is exactly alpha (w - w0) / beta w
    for name in weights:
        added = after.grads[step][name] - before.grads[step][name]
        expected = alpha * (weights[name] - w0[name]) if name.startswith("model.") else beta * weights[name]
        torch.testing.assert_close(added, expected, atol=1e-7, rtol=1e-6)


def test_penalty_pulls_the_backbone_towards_w0(tmp_path: Path) -> None:
    def drift(callbacks: list) -> float:
        model = BoringFT(opt="sgd", lr=0.3, weight_decay=0.0)
        w0 = {n: p.detach().clone() for n, p in model.model.named_parameters()}
        trainer(tmp_path, callbacks, max_epochs=4).fit(model)
        return sum(float(((p.detach() - w0[n]) ** 2).sum()) for n, p in model.model.named_parameters()) ** 0.5

    free, pulled = drift([]), drift([L2SP(alpha=2.0, beta=0.0, groups="model")])
    assert free > 1e-2
    assert pulled < 0.7 * free


def test_penalty_is_logged_with_its_parts(tmp_path: Path) -> None:
    model = BoringFT(opt="sgd", lr=0.3, weight_decay=0.0)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    rec = Grads()
    t = trainer(tmp_path, [L2SP(0.5, 0.2, groups="model"), rec], max_epochs=1)
    t.fit(model)
    m = t.callback_metrics
    last = rec.weights[-1]  # the penalty is logged at the weights of the last step
    sp = 0.25 * sum(float(((last[n] - w0[n]) ** 2).sum()) for n in last if n.startswith("model."))
    head = 0.1 * sum(float((last[n] ** 2).sum()) for n in last if n.startswith("head."))
    assert float(m["l2sp/backbone"]) == pytest.approx(sp, rel=1e-4) and sp > 0
    assert float(m["l2sp/head"]) == pytest.approx(head, rel=1e-4)
    assert float(m["l2sp/penalty"]) == pytest.approx(sp + head, rel=1e-4)


def test_backbone_weight_decay_off_head_keeps_its_own(tmp_path: Path) -> None:
    """A user's one-group AdamW is split into named groups first; TransferClassifier's are already named."""
    model = BoringFT(opt="adamw", weight_decay=0.05)
    cb = L2SP(groups="model")
    t = trainer(tmp_path, [cb], max_steps=1)
    t.fit(model)
    backbone = {id(p) for p in model.model.parameters()}
    for g in t.optimizers[0].param_groups:
        in_backbone = {id(p) in backbone for p in g["params"]}
        assert len(in_backbone) == 1, f"group {g['name']} mixes backbone and head"
        assert g["weight_decay"] == (0.0 if in_backbone == {True} else 0.05), g["name"]
    assert {n for n, _ in cb.weight_decay_off} == set(GROUPS)

    clf = TransferClassifier("timm:test_resnet", num_classes=2, pretrained=False, weight_decay=0.05)
    cb = L2SP()
    t = trainer(tmp_path, [cb], max_steps=1)
    x = torch.randn(4, 3, 32, 32)
    t.fit(clf, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.tensor([0, 1, 0, 1])), batch_size=4))
    decay = {g["name"]: g["weight_decay"] for g in t.optimizers[0].param_groups}
    assert decay["head"] == 0.05 and decay["layer4"] == 0.0 and decay["stem"] == 0.0
    assert "l2sp/penalty" in t.callback_metrics


def test_frozen_groups_cost_nothing_and_late_groups_start_from_their_pretrained_value(tmp_path: Path) -> None:
    model = BoringFT(opt="sgd", lr=0.3, weight_decay=0.0)
    initial = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    cb = L2SP(0.5, 0.1, groups="model")
    copies: list[int] = []

    class Count(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
            copies.append(len(cb.reference_weights))

    trainer(tmp_path, [GradualUnfreezing(schedule={1: ["block3"]}), cb, Count()], max_epochs=2).fit(model)
    assert copies == [0, 2], "no copy of frozen weights; block3's two tensors once it trains"
    refs = cb.reference_weights
    assert sorted(refs) == ["model.block3.0.bias", "model.block3.0.weight"]
    for name, ref in refs.items():
        assert torch.equal(ref, initial[name.removeprefix("model.")])
    assert not torch.equal(model.model.block3[0].weight, initial["block3.0.weight"])


class SkipAll(BoringFT):
    def training_step(self, batch: Any, batch_idx: int) -> None:
        return None


def test_a_skipped_backward_gets_no_penalty_step(tmp_path: Path) -> None:
    model = SkipAll(opt="sgd", lr=0.3, weight_decay=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer(tmp_path, [L2SP(0.5, 0.5, groups="model")], max_steps=2).fit(model)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_fused_optimizer_under_float16_amp_is_refused() -> None:
    net = torch.nn.Linear(2, 2)
    fused = torch.optim.Adam(net.parameters(), fused=True)
    fake = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=object()), optimizers=[fused], precision="16-mixed")
    cb = L2SP()
    with pytest.raises(ConfigurationError, match="fused=False"):
        cb.on_fit_start(fake, net)  # type: ignore[arg-type]


def _fit_resumable(folder: Path, max_epochs: int, ckpt_path: Path | None = None, devices: int = 1,
                   batch_size: int = 8) -> BoringFT:
    folder.mkdir(parents=True, exist_ok=True)
    model = BoringFT(opt="sgd", lr=0.2, weight_decay=0.01, batch_size=batch_size)
    from test_ddp import SaveWeights

    pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
        use_distributed_sampler=False, max_epochs=max_epochs, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=folder,
        callbacks=[L2SP(1.0, 0.1, groups="model"), SaveWeights(folder),
                   pl.callbacks.ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0)],
    ).fit(model, ckpt_path=ckpt_path)
    return model


def test_exact_resume_restores_w0(tmp_path: Path) -> None:
    _fit_resumable(tmp_path / "full", max_epochs=4)
    _fit_resumable(tmp_path / "part", max_epochs=2)
    ckpt = torch.load(tmp_path / "part" / "last.ckpt", weights_only=True)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("L2SP"))
    fresh = BoringFT().model.state_dict()
    assert set(state["w0"]) == {f"model.{k}" for k in fresh}
    assert all(torch.equal(state["w0"][f"model.{k}"], v) for k, v in fresh.items())
    _fit_resumable(tmp_path / "resumed", max_epochs=4, ckpt_path=tmp_path / "part" / "last.ckpt")
    full = torch.load(tmp_path / "full" / "rank0.pt")
    resumed = torch.load(tmp_path / "resumed" / "rank0.pt")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_resume_into_another_model_is_refused() -> None:
    cb = L2SP()
    cb._backbone = [("model.other.weight", torch.nn.Parameter(torch.zeros(1)))]
    with pytest.raises(CheckpointError, match="do not have"):
        cb.load_state_dict({"w0": {"model.stem.0.weight": torch.zeros(1)}})


@pytest.mark.ddp
def test_ddp_ranks_identical_and_equal_to_one_process(tmp_path: Path) -> None:
    _fit_resumable(tmp_path / "ddp", max_epochs=2, devices=2, batch_size=4)
    _fit_resumable(tmp_path / "single", max_epochs=2, devices=1, batch_size=8)
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "single" / "rank0.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert max(float((r0[k] - single[k]).abs().max()) for k in r0) < 1e-5
    fresh = BoringFT().state_dict()
    assert max(float((r0[k] - fresh[k]).abs().max()) for k in r0) > 1e-3
