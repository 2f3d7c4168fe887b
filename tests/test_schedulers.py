"""LR schedules: shapes of the curves, layer-wise ratios kept, build_scheduler fills in steps."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau, StepLR

from tl_lightning.errors import ConfigurationError
from tl_lightning.optim import build_scheduler, constant, slanted_triangular, warmup_cosine

BASE_LRS = [0.25, 0.5, 1.0]  # a layer-wise decay of 0.5


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in BASE_LRS])


def _lrs(sched, opt, steps: int) -> list[list[float]]:
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def _assert_ratios_kept(history: list[list[float]]) -> None:
    for lrs in history:
        for lr, base in zip(lrs, BASE_LRS):
            assert lr == pytest.approx(lrs[-1] * base / BASE_LRS[-1], abs=1e-12)


def test_warmup_cosine_curve() -> None:
    opt = _optimizer()
    hist = _lrs(warmup_cosine(opt, total_steps=20, warmup_steps=4, min_lr_ratio=0.1), opt, 21)
    top = [h[-1] for h in hist]
    assert top[0] == 0.0
    assert top[2] == pytest.approx(0.5)
    assert top[4] == pytest.approx(1.0)  # peak right after warmup
    assert all(a >= b for a, b in zip(top[4:], top[5:]))  # monotone decay
    assert top[20] == pytest.approx(0.1)
    mid = 4 + (20 - 4) // 2
    assert top[mid] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    _assert_ratios_kept(hist)


def test_warmup_fraction_equals_steps() -> None:
    a, b = _optimizer(), _optimizer()
    ha = _lrs(warmup_cosine(a, total_steps=50, warmup_fraction=0.1), a, 50)
    hb = _lrs(warmup_cosine(b, total_steps=50, warmup_steps=5), b, 50)
    assert ha == hb


def test_slanted_triangular_curve() -> None:
    opt = _optimizer()
    hist = _lrs(slanted_triangular(opt, total_steps=100, cut_frac=0.1, ratio=32), opt, 101)
    top = [h[-1] for h in hist]
    assert top[0] == pytest.approx(1 / 32)
    assert top[10] == pytest.approx(1.0) and max(top) == pytest.approx(1.0)
    assert top.index(max(top)) == 10
    assert top[100] == pytest.approx(1 / 32)
    assert all(a <= b for a, b in zip(top[:10], top[1:11]))
    assert all(a >= b for a, b in zip(top[10:], top[11:]))
    _assert_ratios_kept(hist)


def test_constant_keeps_lrs() -> None:
    opt = _optimizer()
    hist = _lrs(constant(opt), opt, 5)
    assert all(h == BASE_LRS for h in hist)


def test_build_scheduler_supplies_total_steps() -> None:
    opt = _optimizer()
    sched = build_scheduler(functools.partial(warmup_cosine, warmup_steps=2), opt, total_steps=10)
    hist = _lrs(sched, opt, 11)
    assert hist[10][-1] == pytest.approx(0.0)  # reached the end exactly at step 10
    # a bound total_steps wins over the supplied one
    opt2 = _optimizer()
    sched2 = build_scheduler(functools.partial(warmup_cosine, total_steps=20), opt2, total_steps=10)
    assert _lrs(sched2, opt2, 11)[10][-1] == pytest.approx(0.5)


def test_build_scheduler_one_cycle_keeps_layerwise_ratios() -> None:
    opt = _optimizer()
    sched = build_scheduler(functools.partial(OneCycleLR, pct_start=0.3), opt, total_steps=20)
    assert isinstance(sched, OneCycleLR) and sched.total_steps == 20
    assert [g["max_lr"] for g in opt.param_groups] == BASE_LRS
    hist = _lrs(sched, opt, 20)
    _assert_ratios_kept(hist)
    assert max(h[-1] for h in hist) == pytest.approx(1.0, rel=1e-3)


def test_build_scheduler_one_cycle_respects_bound_max_lr() -> None:
    opt = _optimizer()
    build_scheduler(functools.partial(OneCycleLR, max_lr=2.0), opt, total_steps=10)
    assert [g["max_lr"] for g in opt.param_groups] == [2.0, 2.0, 2.0]


def test_build_scheduler_torch_schedulers() -> None:
    opt = _optimizer()
    cos = build_scheduler(functools.partial(CosineAnnealingLR), opt, total_steps=7)
    assert cos.T_max == 7
    step = build_scheduler(functools.partial(StepLR, step_size=3), _optimizer(), total_steps=None)
    assert isinstance(step, StepLR)
    plateau = build_scheduler(functools.partial(ReduceLROnPlateau, patience=1), _optimizer(), total_steps=None)
    assert isinstance(plateau, ReduceLROnPlateau)


def test_build_scheduler_errors() -> None:
    with pytest.raises(ConfigurationError, match="max_epochs or max_steps"):
        build_scheduler(functools.partial(warmup_cosine), _optimizer(), total_steps=None)
    with pytest.raises(ConfigurationError, match="callable"):
        build_scheduler("warmup_cosine", _optimizer(), total_steps=10)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"total_steps": 0}, "total_steps"),
        ({"total_steps": 10, "warmup_steps": 2, "warmup_fraction": 0.1}, "not both"),
        ({"total_steps": 10, "warmup_steps": 10}, "shorter"),
        ({"total_steps": 10, "min_lr_ratio": 2.0}, "min_lr_ratio"),
    ],
)
def test_warmup_cosine_argument_errors(kwargs, fragment) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        warmup_cosine(_optimizer(), **kwargs)


def test_slanted_triangular_argument_errors() -> None:
    with pytest.raises(ConfigurationError, match="cut_frac"):
        slanted_triangular(_optimizer(), 10, cut_frac=1.5)
    with pytest.raises(ConfigurationError, match="ratio"):
        slanted_triangular(_optimizer(), 10, ratio=0.5)
