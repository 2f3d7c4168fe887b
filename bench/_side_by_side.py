"""Timing two variants side by side in one process (shared by the bench/ scripts).

Single steps of the two variants alternate, and which one goes first alternates too, so drift in
machine load hits both alike; per-round ratios are then robust on a noisy, shared machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def timed(step: Callable[[], None], device: torch.device) -> float:
    """Seconds one call of ``step`` takes (CUDA work included)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def alternate(
    a: Callable[[], None], b: Callable[[], None], rounds: int, device: torch.device
) -> tuple[list[float], list[float]]:
    """One warm-up call each, then ``rounds`` rounds of one timed call of ``a`` and one of ``b``."""
    a(), b()
    times_a: list[float] = []
    times_b: list[float] = []
    for r in range(rounds):
        pair = [(times_a, a), (times_b, b)]
        for times, step in pair if r % 2 == 0 else pair[::-1]:
            times.append(timed(step, device))
    return times_a, times_b
