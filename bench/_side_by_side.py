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


def alternate(*steps: Callable[[], None], rounds: int, device: torch.device) -> list[list[float]]:
    """One warm-up call each, then ``rounds`` rounds of one timed call of every step.

    The order rotates from round to round, so no variant always runs first (or right after the
    same neighbour). Returns one list of seconds per step.
    """
    for step in steps:
        step()
    times: list[list[float]] = [[] for _ in steps]
    order = list(range(len(steps)))
    for r in range(rounds):
        rotated = order[r % len(order) :] + order[: r % len(order)]
        for i in rotated:
            times[i].append(timed(steps[i], device))
    return times
