"""A run stopped mid-schedule and resumed from its checkpoint ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from test_callbacks_models import GROUPS, BoringFT, group_params, trainer

from tl_lightning.callbacks import GradualUnfreezing, LayerwiseLRDecay


def _sched(o, m):
    return {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=16), "interval": "step"}


def _callbacks(**kw):
    kw.setdefault("schedule", {2: [-1], 3: "all"})
    kw.setdefault("warmup_steps", 3)
    return [LayerwiseLRDecay(0.5, groups="model"), GradualUnfreezing(groups="model", **kw)]


def _run(tmp_path, stop: dict, total: dict, **kw):
    full = BoringFT(sched=_sched, bn=True)
    trainer(tmp_path / "full", _callbacks(**kw), **total).fit(full)

    first = BoringFT(sched=_sched, bn=True)
    t1 = trainer(tmp_path / "a", _callbacks(**kw), **stop)
    t1.fit(first)
    ckpt = tmp_path / "mid.ckpt"
    t1.save_checkpoint(ckpt)

    resumed = BoringFT(sched=_sched, bn=True, seed=123)  # different init: everything must come from the ckpt
    cbs = _callbacks(**kw)
    trainer(tmp_path / "b", cbs, **total).fit(resumed, ckpt_path=ckpt)
    return full, resumed, torch.load(ckpt, weights_only=False), cbs[1]


def _assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_resume_before_unfreeze_is_exact(tmp_path):
    full, resumed, ckpt, cb = _run(tmp_path, {"max_epochs": 2}, {"max_epochs": 4})
    _assert_same(full, resumed)
    (key,) = [k for k in ckpt["callbacks"] if k.startswith("GradualUnfreezing")]
    assert ckpt["callbacks"][key]["unfrozen"] == []
    assert cb.unfrozen_groups == GROUPS
    # the frozen trunk really did not move before the unfreeze, and BN stats were not updated
    fresh = BoringFT(sched=_sched, bn=True)
    assert torch.equal(ckpt["state_dict"]["model.stem.0.weight"], fresh.model.stem[0].weight)
    assert torch.equal(ckpt["state_dict"]["model.stem.1.running_mean"], fresh.model.stem[1].running_mean)


def test_resume_mid_warmup_is_exact_and_never_refreezes(tmp_path):
    # step schedule: block3 unfreezes at step 2, warm-up 4 steps; stop at step 4 (end of epoch 0), mid-warm-up.
    # (stop with max_epochs: Lightning resumes a run stopped by max_steps at an epoch end one batch off)
    kw = {"schedule": {2: [-1], 6: "all"}, "interval": "step", "warmup_steps": 4}

    class Spy(pl.Callback):
        seen: list = []

        def on_train_start(self, trainer, pl_module):
            Spy.seen.append(group_params(pl_module, "block3")[0].requires_grad)

    full, resumed, ckpt, cb = _run(tmp_path, {"max_epochs": 1}, {"max_epochs": 3}, **kw)
    _assert_same(full, resumed)
    (key,) = [k for k in ckpt["callbacks"] if k.startswith("GradualUnfreezing")]
    state = ckpt["callbacks"][key]
    assert state["unfrozen"] == ["block3"] and state["factors"]["unfreeze_step"] == {"block3": 2}
    assert cb.warmup_factor("block3", 4) < 1.0  # the checkpoint really is mid-warm-up

    # Lightning 21901: on resume, already unfrozen groups are trainable from the first batch
    m = BoringFT(sched=_sched, bn=True)
    trainer(tmp_path / "c", [*_callbacks(**kw), Spy()], max_steps=5).fit(
        m, ckpt_path=tmp_path / "mid.ckpt"
    )
    assert Spy.seen[0] is True


def test_two_instances_have_distinct_state_keys():
    a = GradualUnfreezing(groups="model", state_key="a")
    b = GradualUnfreezing(groups="model", state_key="b")
    assert a.state_key != b.state_key
