"""Schedulers keep working across an unfreeze: every group exists from step one, LRs follow the closed form."""

from __future__ import annotations

import math

import pytest
import torch
from test_callbacks_models import GROUPS, BoringFT, Recorder, trainer

from tl_lightning.callbacks import GradualUnfreezing, LayerwiseLRDecay

LR, DECAY, STEPS_PER_EPOCH, EPOCHS, WARM = 0.05, 0.5, 4, 3, 2
TOTAL = STEPS_PER_EPOCH * EPOCHS
MULT = {g: DECAY ** (len(GROUPS) - 1 - i) for i, g in enumerate(GROUPS)} | {"head": 1.0}
UNFREEZE_STEP = {"block3": 4, "block2": 8, "block1": 8, "stem": 8}  # schedule {1: [-1], 2: "all"}


def onecycle(s: int, max_lr: float) -> float:
    initial, end_pct = max_lr / 25.0, 0.3 * TOTAL - 1
    final = initial / 1e4
    if s <= end_pct:
        return _cos(initial, max_lr, s / end_pct)
    return _cos(max_lr, final, (s - end_pct) / (TOTAL - 1 - end_pct))


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def warmup_cosine_factor(s: int, warm: int = 3) -> float:
    if s < warm:
        return s / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / (TOTAL - warm))))


def _warmup_cosine(opt, m):
    try:
        from tl_lightning.optim.schedulers import warmup_cosine
    except ImportError:  # pragma: no cover - H2's module not there
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine_factor), "interval": "step"}
    return {"scheduler": warmup_cosine(opt, total_steps=TOTAL, warmup_steps=3), "interval": "step"}


# name -> (scheduler factory, closed form lr(step s, epoch e, base lr b))
CASES = {
    "onecycle": (
        lambda o, m: {"scheduler": torch.optim.lr_scheduler.OneCycleLR(o, max_lr=LR, total_steps=TOTAL), "interval": "step"},
        lambda s, e, b: onecycle(s, b),
    ),
    "lambda": (
        lambda o, m: {"scheduler": torch.optim.lr_scheduler.LambdaLR(o, lambda k: 1.0 / (k + 1)), "interval": "step"},
        lambda s, e, b: b / (s + 1),
    ),
    "plateau": (
        lambda o, m: {
            "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=0),
            "monitor": "const",
        },
        lambda s, e, b: b * 0.5 ** max(0, e - 1),
    ),
    "cosine": (
        lambda o, m: {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=TOTAL), "interval": "step"},
        lambda s, e, b: _cos(b, 0.0, s / TOTAL),
    ),
    "warmup_cosine": (_warmup_cosine, lambda s, e, b: b * warmup_cosine_factor(s)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_scheduler_across_unfreeze(tmp_path, name):
    factory, closed = CASES[name]
    rec = Recorder()
    model = BoringFT(lr=LR, sched=factory)
    unfreeze = GradualUnfreezing(groups="model", schedule={1: [-1], 2: "all"}, warmup_steps=WARM)
    trainer(tmp_path, [LayerwiseLRDecay(DECAY, groups="model"), unfreeze, rec], max_epochs=EPOCHS).fit(model)
    assert len(rec.lrs) == TOTAL
    assert set(rec.n_groups) == {2 * (len(GROUPS) + 1)}  # never a new group
    for s, lrs in enumerate(rec.lrs):
        e = s // STEPS_PER_EPOCH
        for g, m in MULT.items():
            warm = 1.0
            if g in UNFREEZE_STEP and s >= UNFREEZE_STEP[g]:
                warm = min(1.0, (s - UNFREEZE_STEP[g] + 1) / WARM)
            want = closed(s, e, LR * m) * warm
            for key in (g, g + "/no_decay"):
                assert lrs[key] == pytest.approx(want, rel=1e-6, abs=1e-12), (name, s, key)
    # the unfreeze happened, groups were frozen before it
    assert rec.trainable[3] == {g: False for g in GROUPS}
    assert rec.trainable[4]["block3"] and not rec.trainable[4]["block2"]
    assert all(rec.trainable[8].values())
