"""When to unfreeze what: the phase plan of :class:`~tl_lightning.callbacks.GradualUnfreezing`.

Pure logic, no Lightning: a plan is a list of :class:`Phase` objects. Phase ``k`` unfreezes
something (group names, indices, a count of top groups, or ``"all"``) and starts at a fixed
epoch / step, or when the previous phase reaches a plateau of a monitored metric, or when the
previous phase has run ``max_epochs`` (whichever comes first). The plan's progress is plain data
(:meth:`UnfreezePlan.state_dict`), so a resumed run continues exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tl_lightning._checks import check_int, check_number
from tl_lightning.errors import ConfigurationError, UnknownNameError, did_you_mean

__all__ = ["Action", "Phase", "UnfreezePlan", "parse_action", "parse_schedule", "parse_phases", "resolve_action"]

# what one phase unfreezes: "all", the top-k still-frozen groups, or named / indexed groups
Action = str | int | list[str | int]


def parse_action(where: str, value: Any) -> Action:
    """Validate one "what to unfreeze" value (``where`` names it in errors)."""
    if isinstance(value, bool):
        raise ConfigurationError(f"{where} = {value!r}: expected group names, indices or a count")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigurationError(f"{where} = {value}: the number of groups to unfreeze must be > 0")
        return value
    if isinstance(value, str):
        return "all" if value == "all" else [value]
    if isinstance(value, Sequence):
        items = list(value)
        if not items:
            raise ConfigurationError(f"{where} is empty; list the groups to unfreeze or drop the entry")
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (str, int)):
                raise ConfigurationError(f"{where} entry {v!r} is not a group name or index")
        return items
    raise ConfigurationError(
        f"{where} = {value!r}: expected a list of group names / indices (-1 = top group), "
        "an int k (unfreeze the top k still-frozen groups) or 'all'"
    )


def parse_schedule(schedule: Mapping[Any, Any]) -> dict[int, Action]:
    """``{epoch or step: action}`` with int keys (YAML gives strings), sorted; errors name the key."""
    out: dict[int, Action] = {}
    for key, value in dict(schedule).items():
        try:
            at = int(key)
        except (TypeError, ValueError):
            raise ConfigurationError(f"schedule key {key!r} is not an epoch/step number") from None
        if isinstance(key, float) and not float(key).is_integer():
            raise ConfigurationError(f"schedule key {key!r} is not a whole epoch/step number")
        if at < 0:
            raise ConfigurationError(f"schedule key {at} is negative; epochs and steps count from 0")
        if at in out:
            raise ConfigurationError(f"schedule key {at} appears twice")
        out[at] = parse_action(f"schedule[{at}]", value)
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class Phase:
    """One step of the plan.

    Attributes:
        unfreeze: What the phase unfreezes when it starts.
        start: Fixed epoch (or step) at which it starts; ``None``: when the previous phase
            plateaus or runs out of ``max_epochs``.
        lr_scale: LR multiplier of the groups this phase unfreezes (relative to the LR their
            param group has), applied inside ``optimizer.step`` so schedulers never see it.
        max_epochs: The phase ends after this many epochs (steps) even without a plateau.
    """

    unfreeze: Action
    start: int | None = None
    lr_scale: float = 1.0
    max_epochs: int | None = None


def parse_phases(phases: Sequence[Any]) -> list[Phase]:
    """Phases from plain data (YAML / finetuning-scheduler style).

    Each entry is an action (``["layer4"]``, ``2``, ``"all"``, or ``"none"`` for "nothing more":
    a head-only first phase) or a mapping with ``unfreeze`` (required), ``lr_scale`` (default
    1.0) and ``max_epochs`` (optional). The first phase is active from the start of training;
    each next one starts when the previous one plateaus or has run its ``max_epochs``.

    Example:
        >>> parse_phases([["layer4"], {"unfreeze": "all", "lr_scale": 0.1, "max_epochs": 3}])[1]
        Phase(unfreeze='all', start=None, lr_scale=0.1, max_epochs=3)
    """
    if isinstance(phases, (str, Mapping)) or not isinstance(phases, Sequence) or not phases:
        raise ConfigurationError(f"phases must be a non-empty list of phases, got {phases!r}")
    out = []
    for i, item in enumerate(phases):
        where = f"phases[{i}]"
        if isinstance(item, Mapping):
            unknown = sorted(set(item) - {"unfreeze", "lr_scale", "max_epochs"})
            if unknown:
                raise UnknownNameError(
                    f"{where}: unknown key(s) {unknown}{did_you_mean(unknown[0], ['unfreeze', 'lr_scale', 'max_epochs'])} "
                    "Valid keys: ['unfreeze', 'lr_scale', 'max_epochs']"
                )
            if "unfreeze" not in item:
                raise ConfigurationError(f"{where} needs 'unfreeze' (group names, a count or 'all'), got {dict(item)!r}")
            action = _phase_action(f"{where}.unfreeze", item["unfreeze"])
            scale = check_number(f"{where}.lr_scale", item.get("lr_scale", 1.0), low=0.0, low_open=True)
            max_epochs = item.get("max_epochs")
            if max_epochs is not None:
                max_epochs = check_int(f"{where}.max_epochs", max_epochs, low=1)
            out.append(Phase(action, None, scale, max_epochs))
        else:
            out.append(Phase(_phase_action(where, item)))
    return out


def _phase_action(where: str, value: Any) -> Action:
    if value in ("none", 0) or (isinstance(value, Sequence) and not isinstance(value, str) and not list(value)):
        return []
    return parse_action(where, value)


def resolve_action(names: Sequence[str], unfrozen: Sequence[str], action: Action, where: str) -> list[str]:
    """The group names ``action`` unfreezes, given the groups (input -> output) and those trainable."""
    still = [n for n in names if n not in unfrozen]
    if action == "all":
        return still
    if isinstance(action, int):
        return still[max(0, len(still) - action) :]
    assert isinstance(action, list)  # [] (a phase that unfreezes nothing more) resolves to []
    return [resolve_item(names, item, where) for item in action]


def resolve_item(names: Sequence[str], item: str | int, where: str) -> str:
    """A group name or index (``-1`` = top group) as a group name, or an error listing the groups."""
    if isinstance(item, int):
        if not -len(names) <= item < len(names):
            raise ConfigurationError(
                f"{where}: group index {item} is out of range for {len(names)} layer groups "
                f"(valid: {-len(names)}..{len(names) - 1}, -1 = top group); groups: {list(names)}"
            )
        return names[item]
    if item not in names:
        raise UnknownNameError(f"{where}: unknown layer group {item!r}{did_you_mean(item, names)}; valid names: {list(names)}")
    return item


class UnfreezePlan:
    """Which phase starts when, with plateau detection on a monitored metric.

    Args:
        phases: The phases, in order.
        on_plateau: Phases without a fixed ``start`` begin when the monitored metric has not
            improved for ``patience`` evaluations (or the previous phase's ``max_epochs`` ran out).
        mode: ``"min"`` or ``"max"``: which direction of the metric is better.
        patience: Evaluations without improvement that make a plateau.
        min_delta: Smallest change that counts as an improvement.
    """

    def __init__(
        self,
        phases: Sequence[Phase],
        on_plateau: bool = False,
        mode: Literal["min", "max"] = "min",
        patience: int = 1,
        min_delta: float = 0.0,
    ) -> None:
        self.phases = list(phases)
        self.on_plateau = on_plateau
        self.mode = mode
        self.patience = patience
        self.min_delta = min_delta
        # progress
        self.current = -1  # index of the last started phase (-1: the initial state)
        self.current_start = 0  # epoch / step the current phase started at
        self.best: float | None = None
        self.wait = 0
        self.plateaued = False

    def due(self, now: int) -> list[int]:
        """Indices of the phases that start at ``now`` (in order); the caller then calls :meth:`started`."""
        out: list[int] = []
        k, start = self.current, self.current_start
        plateaued = self.plateaued
        while k + 1 < len(self.phases):
            nxt = self.phases[k + 1]
            current = self.phases[k] if k >= 0 else None
            deadline = current is not None and current.max_epochs is not None and now - start >= current.max_epochs
            if nxt.start is not None:
                go = now >= nxt.start
            else:
                go = (self.on_plateau and plateaued) or deadline
            if not go:
                break
            out.append(k + 1)
            k, start, plateaued = k + 1, now, False
        return out

    def started(self, index: int, now: int) -> None:
        """Record that phase ``index`` started at ``now`` (plateau tracking restarts)."""
        self.current = index
        self.current_start = now
        self.best = None
        self.wait = 0
        self.plateaued = False

    def observe(self, value: float) -> bool:
        """Feed one evaluation of the monitored metric; True when the current phase has plateaued."""
        if self.current + 1 >= len(self.phases):
            return False
        if not math.isfinite(value):
            improved = False
        elif self.best is None:
            improved = True
        elif self.mode == "min":
            improved = value < self.best - self.min_delta
        else:
            improved = value > self.best + self.min_delta
        if improved:
            self.best = value
            self.wait = 0
        else:
            self.wait += 1
        if self.wait >= self.patience:
            self.plateaued = True
        return improved

    @property
    def finished(self) -> bool:
        """Every phase has started."""
        return self.current + 1 >= len(self.phases)

    def state_dict(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "current_start": self.current_start,
            "best": self.best,
            "wait": self.wait,
            "plateaued": self.plateaued,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.current = int(state["current"])
        self.current_start = int(state["current_start"])
        self.best = None if state["best"] is None else float(state["best"])
        self.wait = int(state["wait"])
        self.plateaued = bool(state["plateaued"])
