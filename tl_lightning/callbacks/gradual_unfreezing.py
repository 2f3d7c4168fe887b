"""Gradual unfreezing that stays correct under DDP, resume and any LR scheduler.

Unlike Lightning's ``BackboneFinetuning``, this callback never adds optimizer param groups: every
parameter is in the optimizer from the first step, one named group per layer group, and
unfreezing only flips ``requires_grad``. A user's optimizer built the Lightning way (trainable
parameters only, or one group for the whole backbone) is re-partitioned once, right after
``configure_optimizers``, into that layout (frozen parameters included, with the hyperparameters
of the group they belong with), so warm-up and every scheduler just work. Frozen parameters get
no gradient, hence no optimizer state and no weight decay. Under DDP, parameters unfrozen after
the model was wrapped are outside DDP's reducer, so their gradients are averaged here
(Lightning issue 20340). What is unfrozen, the phase, the plateau counters and (with
``restore_best``) the phase's best weights are in the checkpoint, so a resumed run continues
exactly (and never re-freezes, Lightning issue 21901).

When to unfreeze is a plan of phases (:mod:`tl_lightning.callbacks._schedule`): fixed epochs or
steps (``schedule``, ``unfreeze_every``), or the plateau of a monitored metric (``on_plateau``),
each phase with its own LR scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.optim import Optimizer
from typing_extensions import override

from tl_lightning._checks import check_choice, check_int, check_number
from tl_lightning.callbacks._ddp import OutsideReducerSync, ddp_module
from tl_lightning.callbacks._lr_factors import StepLRFactors
from tl_lightning.callbacks._optimizer_hook import ConfigureOptimizersHook, collect_optimizers
from tl_lightning.callbacks._schedule import (
    Phase,
    UnfreezePlan,
    parse_phases,
    parse_schedule,
    resolve_action,
    resolve_item,
)
from tl_lightning._targets import FineTuneTargets, GroupsSpec, HeadSpec, resolve_targets, shared_groups
from tl_lightning.describe import log_layer_groups_once
from tl_lightning.errors import CheckpointError, ConfigurationError
from tl_lightning.freezing import frozen_norm_modules, set_norm_eval, set_requires_grad
from tl_lightning.sharding import check_sharded_unfreezing

__all__ = ["GradualUnfreezing", "Preset"]

Preset = Literal["all_frozen", "top_n_unfrozen", "gradual", "none"]
_PRESETS = ("all_frozen", "top_n_unfrozen", "gradual", "none")
Interval = Literal["epoch", "step"]


class GradualUnfreezing(Callback):
    """Freeze layer groups and unfreeze them in phases, from the top (output side) down.

    The layer groups are found on any LightningModule (``groups=`` attribute path or regex
    patterns, given here or to another tl_lightning callback of the same Trainer; the module's
    ``layer_groups()``; or its tl_lightning ``Backbone``); the head (the model's declared
    classifier, and every parameter in no layer group) always trains.

    Args:
        schedule: ``{epoch (or step): what to unfreeze}``; the value is a list of group names or
            indices (``-1`` = top group), an int ``k`` (the top ``k`` still-frozen groups) or
            ``"all"``. Keys may be strings (YAML).
        unfreeze_every: Instead of ``schedule``: every ``N`` epochs (steps) unfreeze
            ``groups_per_step`` more groups from the top, until all train.
        groups_per_step: Groups unfrozen at each ``unfreeze_every`` milestone or plateau.
        initially_trainable: Number of top groups trainable from the start.
        phases: Instead of ``schedule`` / ``unfreeze_every``: the phases in order, each an action
            (as in ``schedule``, or ``"none"`` for a head-only phase) or ``{"unfreeze": action,
            "lr_scale": s, "max_epochs": n}`` (finetuning-scheduler style). The first phase is
            active from the start; each next one starts when the previous one plateaus
            (``on_plateau``) or has run ``max_epochs`` epochs (steps).
        on_plateau: Start the next phase when ``monitor`` has not improved for ``patience``
            validations (the ranks agree on the metric's mean, hence on the decision). Without ``phases`` or ``schedule``,
            each plateau unfreezes ``groups_per_step`` more groups; with ``schedule``, its
            actions are taken in key order, one per plateau (keys are only the order).
        monitor: Metric watched for plateaus (``"val/loss"``).
        mode: ``"min"`` or ``"max"``: which direction of ``monitor`` is better.
        patience: Validations without improvement that end a phase.
        min_delta: Smallest change of ``monitor`` that counts as an improvement.
        restore_best: When a phase plateaus, load the phase's best weights (by ``monitor``)
            before unfreezing the next groups. The optimizer state is kept.
        phase_lr_scale: LR multiplier of the groups each phase unfreezes (one number, or one
            per phase), applied inside ``optimizer.step`` like the warm-up.
        preset: ``"all_frozen"`` (feature extraction: only the head trains),
            ``"top_n_unfrozen"`` (the top ``initially_trainable`` groups train throughout),
            ``"gradual"`` (``unfreeze_every``, default 1), ``"none"`` (everything trains).
            Inferred from the other arguments when omitted.
        interval: Whether schedule keys, ``unfreeze_every`` and ``max_epochs`` count epochs or
            optimizer steps.
        warmup_steps: Newly unfrozen groups ramp their LR linearly from ``1/warmup_steps`` to
            1 times what the scheduler sets, over this many optimizer steps. The factor is
            applied only inside ``optimizer.step`` and undone right after, so any scheduler
            (OneCycleLR, LambdaLR, ReduceLROnPlateau, recursive ones) keeps working.
        train_bn: Keep the norm layers of frozen groups trainable and in train mode (as
            Lightning's ``train_bn=True``). By default they are frozen and in eval mode.
        groups: Where the layer groups are (see :func:`~tl_lightning._targets.resolve_targets`).
        head: Layer-group names that belong to the always-trainable head (``"auto"``: the
            groups the model family declares as its head).
        repartition: When the module's optimizer lacks frozen layer-group parameters (built from
            trainable parameters only) or mixes layer groups in one param group while warm-up or
            phase LR scales need them apart, re-partition it into one named group per layer
            group (reported once). ``False``: an error with the fix instead.
        state_key: Distinguishes two instances in one Trainer.
        log: Log ``finetune/trainable_groups`` and ``finetune/trainable_params``.

    Example:
        >>> cb = GradualUnfreezing(schedule={2: [-1], 4: 2, 6: "all"}, warmup_steps=100)
        >>> cb = GradualUnfreezing(unfreeze_every=1, groups_per_step=1, initially_trainable=1)
        >>> cb = GradualUnfreezing(on_plateau=True, monitor="val/loss", patience=2, restore_best=True)
        >>> cb = GradualUnfreezing(phases=[["layer4"], {"unfreeze": "all", "lr_scale": 0.1, "max_epochs": 3}],
        ...                        on_plateau=True)
        >>> cb = GradualUnfreezing.feature_extraction()
    """

    #: other tl_lightning callbacks of the Trainer see this callback's ``groups=``
    shares_layer_groups = True

    def __init__(
        self,
        schedule: Mapping[Any, Any] | None = None,
        *,
        unfreeze_every: int | None = None,
        groups_per_step: int = 1,
        initially_trainable: int = 0,
        phases: Sequence[Any] | None = None,
        on_plateau: bool = False,
        monitor: str = "val/loss",
        mode: Literal["min", "max"] = "min",
        patience: int = 1,
        min_delta: float = 0.0,
        restore_best: bool = False,
        phase_lr_scale: float | Sequence[float] = 1.0,
        preset: Preset | None = None,
        interval: Interval = "epoch",
        warmup_steps: int = 0,
        train_bn: bool = False,
        groups: GroupsSpec = None,
        head: HeadSpec = "auto",
        repartition: bool = True,
        state_key: str | None = None,
        log: bool = True,
    ) -> None:
        super().__init__()
        if preset is not None:
            check_choice("preset", preset, _PRESETS)
        check_choice("interval", interval, ("epoch", "step"))
        check_choice("mode", mode, ("min", "max"))
        check_int("groups_per_step", groups_per_step, low=1)
        check_int("initially_trainable", initially_trainable, low=0)
        check_int("warmup_steps", warmup_steps, low=0)
        check_int("patience", patience, low=1)
        check_number("min_delta", min_delta, low=0.0)
        if unfreeze_every is not None:
            check_int("unfreeze_every", unfreeze_every, low=1)
        given = [n for n, v in (("schedule", schedule), ("unfreeze_every", unfreeze_every), ("phases", phases)) if v is not None]
        if len(given) > 1:
            raise ConfigurationError(f"give only one of schedule, unfreeze_every or phases (got {' and '.join(given)})")
        if on_plateau and unfreeze_every is not None:
            raise ConfigurationError("on_plateau=True starts phases on plateaus; drop unfreeze_every (or on_plateau)")
        if restore_best and not on_plateau:
            raise ConfigurationError("restore_best=True needs on_plateau=True (the best weights of a phase are kept by monitor)")
        if preset is None:
            if given or on_plateau:
                preset = "gradual"
            else:
                preset = "top_n_unfrozen" if initially_trainable > 0 else "all_frozen"
        if preset in ("all_frozen", "top_n_unfrozen", "none") and (given or on_plateau):
            raise ConfigurationError(f"preset={preset!r} unfreezes nothing during training; drop {given or ['on_plateau']}")
        if preset == "all_frozen" and initially_trainable:
            raise ConfigurationError("preset='all_frozen' trains only the head; use 'top_n_unfrozen' with initially_trainable")
        if preset == "top_n_unfrozen" and initially_trainable < 1:
            raise ConfigurationError("preset='top_n_unfrozen' needs initially_trainable >= 1")
        if preset == "gradual" and not given and not on_plateau:
            unfreeze_every = 1
        scales = list(phase_lr_scale) if isinstance(phase_lr_scale, Sequence) else [phase_lr_scale]
        for i, s in enumerate(scales):
            check_number(f"phase_lr_scale[{i}]", s, low=0.0, low_open=True)
        self.preset: Preset = preset
        self.schedule = parse_schedule(schedule) if schedule is not None else None
        self.phases = parse_phases(phases) if phases is not None else None
        self.unfreeze_every = unfreeze_every
        self.groups_per_step = groups_per_step
        self.initially_trainable = initially_trainable
        self.on_plateau = bool(on_plateau)
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = float(min_delta)
        self.restore_best = bool(restore_best)
        self.phase_lr_scale = scales
        self.interval: Interval = interval
        self.warmup_steps = warmup_steps
        self.train_bn = train_bn
        self.groups = groups
        self.head = head
        self.repartition = repartition
        self._key = state_key
        self.log_stats = log
        # progress (checkpointed)
        self._unfrozen: list[str] | None = None
        self._plan: UnfreezePlan | None = None
        self._factors = StepLRFactors(warmup_steps)
        self._best_state: dict[str, torch.Tensor] | None = None
        self._plan_state: dict[str, Any] | None = None  # loaded before setup built the plan
        # runtime
        self._targets: FineTuneTargets | None = None
        self._norms: list[torch.nn.Module] = []
        self._ddp_sync: OutsideReducerSync | None = None
        self._sync_enabled = True  # tests switch it off to show the drift it prevents
        self._trainer: pl.Trainer | None = None
        self._pl_module: pl.LightningModule | None = None
        self._hook = ConfigureOptimizersHook(self._repartition)
        self._restore_pending = False

    # ----------------------------------------------------------------- presets
    @classmethod
    def feature_extraction(cls, **kwargs: Any) -> GradualUnfreezing:
        """Only the head trains (preset ``all_frozen``)."""
        return cls(preset="all_frozen", **kwargs)

    @classmethod
    def top_n(cls, n: int, **kwargs: Any) -> GradualUnfreezing:
        """The top ``n`` layer groups and the head train throughout (``top_n_unfrozen``)."""
        return cls(preset="top_n_unfrozen", initially_trainable=n, **kwargs)

    @classmethod
    def gradual(cls, every: int = 1, k: int = 1, **kwargs: Any) -> GradualUnfreezing:
        """Unfreeze ``k`` more groups from the top every ``every`` epochs (ULMFiT-style)."""
        return cls(preset="gradual", unfreeze_every=every, groups_per_step=k, **kwargs)

    @classmethod
    def full(cls, **kwargs: Any) -> GradualUnfreezing:
        """Everything trains from the start (preset ``none``); still logs and checks the optimizer."""
        return cls(preset="none", **kwargs)

    # ----------------------------------------------------------------- state
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(key=self._key, groups=str(self.groups), interval=self.interval)

    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "unfrozen": list(self._unfrozen or []),
            "factors": self._factors.state_dict(),
            "plan": self._plan.state_dict() if self._plan is not None else self._plan_state,
            "names": self._targets.names if self._targets else None,
        }
        if self._best_state is not None:
            state["best_state"] = self._best_state
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "plan" not in state_dict:
            raise CheckpointError(
                "this checkpoint's GradualUnfreezing state comes from an older tl_lightning (no phase plan); "
                "resume it with that version or start a new run"
            )
        self._unfrozen = list(state_dict["unfrozen"])
        self._factors.load_state_dict(state_dict["factors"])
        self._plan_state = state_dict["plan"]
        if self._plan is not None and self._plan_state is not None:
            self._plan.load_state_dict(self._plan_state)
        self._best_state = state_dict.get("best_state")
        saved = state_dict.get("names")
        if self._targets is not None:
            if saved is not None and list(saved) != self._targets.names:
                raise CheckpointError(
                    f"checkpoint's layer groups {saved} differ from this model's {self._targets.names}; "
                    "resume with the same model and GradualUnfreezing(groups=...)"
                )
            # restored before DDP wraps the model (for DDP-like strategies): unfrozen groups
            # then join the reducer, and nothing is ever re-frozen
            self._apply_state()

    # ----------------------------------------------------------------- plan
    def _build_plan(self) -> UnfreezePlan:
        assert self._targets is not None
        names = self._targets.names
        n = len(names)
        if self.initially_trainable > n:
            raise ConfigurationError(
                f"initially_trainable={self.initially_trainable} but the model has only {n} layer groups: {names}"
            )
        phases: list[Phase]
        if self.phases is not None:
            # the first phase is active from the start (finetuning-scheduler's phase 0)
            phases = [Phase(p.unfreeze, 0 if i == 0 else p.start, p.lr_scale, p.max_epochs) for i, p in enumerate(self.phases)]
            endless = [i for i, p in enumerate(self.phases[:-1]) if p.max_epochs is None]
            if endless and not self.on_plateau:
                raise ConfigurationError(
                    f"phase(s) {endless} have no end: without on_plateau=True every phase but the last needs "
                    "max_epochs (or set on_plateau=True to end phases on a plateau of monitor)"
                )
        elif self.schedule is not None:
            starts = list(self.schedule) if not self.on_plateau else [None] * len(self.schedule)
            phases = [Phase(action, start) for start, action in zip(starts, self.schedule.values())]
        elif self.preset == "gradual":
            count = math.ceil(max(0, n - self.initially_trainable) / self.groups_per_step)
            every = self.unfreeze_every
            phases = [
                Phase(self.groups_per_step, every * (i + 1) if every is not None and not self.on_plateau else None)
                for i in range(count)
            ]
        else:
            phases = []
        scales = self.phase_lr_scale
        if len(scales) > 1 and len(scales) != len(phases):
            raise ConfigurationError(f"phase_lr_scale has {len(scales)} values for {len(phases)} phases; give one or one per phase")
        phases = [
            Phase(p.unfreeze, p.start, p.lr_scale * (scales[i] if len(scales) > 1 else scales[0]), p.max_epochs)
            for i, p in enumerate(phases)
        ]
        for i, p in enumerate(phases):
            if isinstance(p.unfreeze, list):
                for item in p.unfreeze:
                    resolve_item(names, item, f"phase {i} ({'schedule[' + str(p.start) + ']' if p.start is not None else 'unfreeze'})")
        plan = UnfreezePlan(phases, on_plateau=self.on_plateau, mode=self.mode, patience=self.patience, min_delta=self.min_delta)
        if self._plan_state is not None:
            plan.load_state_dict(self._plan_state)
        return plan

    def plan_summary(self) -> list[str]:
        """What each phase will unfreeze, in words, with integer / index actions resolved to names.

        Available after ``setup`` (or :meth:`resolve`). Example line:
        ``"epoch 1: layer1, layer2, layer3, layer4 (4 groups)"``.
        """
        if self._targets is None or self._plan is None:
            return []
        names = self._targets.names
        unfrozen = list(self._unfrozen if self._unfrozen is not None else self._initial())
        label = "start" if self._plan.current < 0 else f"now (phase {self._plan.current})"
        lines = [f"{label}: {', '.join(unfrozen) or 'head only'} trainable"]
        for i, phase in enumerate(self._plan.phases):
            if i <= self._plan.current:
                continue
            chosen = [n for n in resolve_action(names, unfrozen, phase.unfreeze, f"phase {i}") if n not in unfrozen]
            unfrozen = [n for n in names if n in unfrozen or n in chosen]
            if phase.start is not None:
                when = f"{self.interval} {phase.start}"
            else:
                prev = self._plan.phases[i - 1] if i > 0 else None
                ends = [f"plateau of {self.monitor} (patience {self.patience})"] if self.on_plateau else []
                if prev is not None and prev.max_epochs is not None:
                    ends.append(f"{prev.max_epochs} {self.interval}s into phase {i - 1}")
                when = " or ".join(ends)
            scale = f" at LR x{phase.lr_scale:g}" if phase.lr_scale != 1.0 else ""
            lines.append(f"{when}: {', '.join(chosen) or 'nothing new'} ({len(chosen)} group(s)){scale}")
        return lines

    def resolve(self, pl_module: pl.LightningModule) -> GradualUnfreezing:
        """Resolve the layer groups and the plan on ``pl_module`` without a Trainer (for inspection).

        Applies the initial freezing (as ``setup`` does), so ``describe_layer_groups(pl_module)``
        shows what will train at the start; returns ``self``.
        """
        self._pl_module = pl_module
        self._targets = resolve_targets(pl_module, self.groups, self.head)
        self._plan = self._build_plan()
        if self._unfrozen is None:
            self._unfrozen = self._initial()
        self._apply_state()
        return self

    def _initial(self) -> list[str]:
        assert self._targets is not None
        names = self._targets.names
        if self.preset == "none":
            return list(names)
        return names[len(names) - self.initially_trainable :] if self.initially_trainable else []

    # ----------------------------------------------------------------- freezing
    def _apply_state(self) -> None:
        assert self._targets is not None and self._unfrozen is not None and self._pl_module is not None
        unfrozen = set(self._unfrozen)
        for g in self._targets.groups:
            trainable = g.name in unfrozen
            if trainable or not self.train_bn:
                set_requires_grad(g.parameters(), trainable)
            else:
                norm_ids = {id(p) for m in frozen_norm_modules(self._pl_module, [g]) for p in m.parameters()}
                set_requires_grad((p for p in g.parameters() if id(p) not in norm_ids), False)
                set_requires_grad((p for p in g.parameters() if id(p) in norm_ids), True)
        frozen = [g for g in self._targets.groups if g.name not in unfrozen]
        new_norms = [] if self.train_bn else frozen_norm_modules(self._pl_module, frozen)
        keep = {id(m) for m in new_norms}
        for m in self._norms:
            if id(m) not in keep:
                m.training = self._pl_module.training
        self._norms = new_norms
        # eval mode is set by on_train_epoch_start / on_train_batch_start (right after any
        # unfreeze too); doing it here, before fit starts, makes Lightning warn about eval modules

    def _start_phase(self, trainer: pl.Trainer, index: int, now: int) -> None:
        assert self._targets is not None and self._unfrozen is not None and self._plan is not None
        phase = self._plan.phases[index]
        names = self._targets.names
        where = f"phase {index}" + (f" ({self.interval} {phase.start})" if phase.start is not None else "")
        chosen = resolve_action(names, self._unfrozen, phase.unfreeze, where)
        new = [n for n in chosen if n not in self._unfrozen]
        self._unfrozen = [n for n in names if n in self._unfrozen or n in new]
        for n in new:
            self._factors.unfreeze_step[n] = trainer.global_step
            if phase.lr_scale != 1.0:
                self._factors.scale[n] = phase.lr_scale
        self._plan.started(index, now)
        self._best_state = None
        self._apply_state()
        why = "plateau of " + self.monitor if phase.start is None and self.on_plateau else f"{self.interval} {now}"
        rank_zero_info(
            f"[GradualUnfreezing] {where}, at {self.interval} {now} ({why}): unfroze {new or 'nothing new'}"
            f"{f' at LR x{phase.lr_scale:g}' if phase.lr_scale != 1.0 and new else ''}; trainable groups "
            f"{len(self._unfrozen)}/{len(names)} ({', '.join(self._unfrozen) or 'head only'}), trainable params "
            f"{self._trainable_params():,}"
        )

    def _trainable_params(self) -> int:
        assert self._pl_module is not None
        return sum(p.numel() for p in self._pl_module.parameters() if p.requires_grad)

    def _advance(self, trainer: pl.Trainer, now: int) -> None:
        assert self._plan is not None
        if self._restore_pending:
            self._restore_best_weights()
        for index in self._plan.due(now):
            self._start_phase(trainer, index, now)

    def _log(self, pl_module: pl.LightningModule, on_step: bool) -> None:
        if self.log_stats and self._unfrozen is not None:
            pl_module.log("finetune/trainable_groups", float(len(self._unfrozen)), on_step=on_step, on_epoch=not on_step)
            pl_module.log("finetune/trainable_params", float(self._trainable_params()), on_step=on_step, on_epoch=not on_step)

    # ----------------------------------------------------------------- optimizer
    def _repartition(self, pl_module: pl.LightningModule, out: Any) -> None:
        """One named param group per layer group, frozen parameters included, when needed."""
        assert self._targets is not None and self._trainer is not None
        self._follow_replaced_parameters(pl_module)
        from tl_lightning.callbacks.layer_decay import LayerwiseLRDecay
        from tl_lightning.optim import apply_layerwise_lr_decay

        if not self.repartition or any(isinstance(cb, LayerwiseLRDecay) for cb in self._trainer.callbacks):
            return  # LayerwiseLRDecay re-partitions (with its decay) itself
        opts, scheds = collect_optimizers(out)
        ids = {id(p) for g in self._targets.groups for p in g.parameters()}
        owner = {id(p): g.name for g in self._targets.groups for p in g.parameters()}
        head_ids = {id(p) for _, p in self._targets.head}
        # the optimizer(s) of this module's parameters (with a frozen trunk: the head's)
        mine = [o for o in opts if any(id(p) in ids or id(p) in head_ids for pg in o.param_groups for p in pg["params"])]
        present = {id(p) for o in opts for pg in o.param_groups for p in pg["params"]}
        needs_split = self.warmup_steps > 0 or any(s != 1.0 for s in self.phase_lr_scale) or (
            self.phases is not None and any(p.lr_scale != 1.0 for p in self.phases)
        )
        for opt in mine:
            missing = ids - present
            mixed = any(len({owner[id(p)] for p in pg["params"] if id(p) in owner}) > 1 for pg in opt.param_groups)
            mixed = mixed or any(
                any(id(p) in owner for p in pg["params"]) and any(id(p) not in owner for p in pg["params"])
                for pg in opt.param_groups
            )
            if not missing and not (needs_split and mixed):
                continue
            if all("layer_group" in pg for pg in opt.param_groups):
                continue
            before = len(opt.param_groups)
            apply_layerwise_lr_decay(
                opt,
                self._targets.groups,
                decay=1.0,
                head=self._targets.head,
                schedulers=[s for s in scheds if getattr(s, "optimizer", None) is opt],
                no_decay=_keep_weight_decay,
                include_frozen=len(mine) == 1,
            )
            reason = f"{len(missing)} frozen parameter(s) were not in it" if missing else "warm-up needs groups apart"
            rank_zero_info(
                f"[GradualUnfreezing] re-partitioned {type(opt).__name__} ({before} -> {len(opt.param_groups)} param "
                f"groups; {reason}): "
                + ", ".join(f"{g['name']}: lr {float(g['lr']):.3g}" for g in opt.param_groups)
            )

    # ----------------------------------------------------------------- plateau
    def _on_validation(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._plan is not None
        if trainer.sanity_checking or not self.on_plateau or self._plan.finished:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ConfigurationError(
                f"GradualUnfreezing(on_plateau=True) monitors {self.monitor!r}, which was not logged; logged: "
                f"{sorted(trainer.callback_metrics)}. Fix: set monitor= to one of them"
            )
        # ranks must agree: a phase change on one rank only would desynchronise the replicas. They
        # agree on the value itself (its mean), so every rank's plan state is identical and the
        # checkpoint (written by rank 0) resumes every rank exactly.
        if trainer.world_size > 1:
            value = trainer.strategy.reduce(torch.as_tensor(value, dtype=torch.float64, device=pl_module.device), reduce_op="mean")
        improved = self._plan.observe(float(value))
        if improved and self.restore_best:
            self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
        if self._plan.plateaued and self.restore_best and self._best_state is not None:
            self._restore_pending = True

    def _restore_best_weights(self) -> None:
        assert self._pl_module is not None
        self._restore_pending = False
        if self._best_state is None:
            return
        self._pl_module.load_state_dict(self._best_state)
        rank_zero_info(f"[GradualUnfreezing] restored the phase's best weights ({self.monitor}={self._plan.best if self._plan else '?'})")

    def _follow_replaced_parameters(self, pl_module: pl.LightningModule) -> None:
        # configure_model may replace every parameter (FSDP2's fully_shard): find the groups again
        current = {id(p) for p in pl_module.parameters()}
        if self._targets is not None and any(id(p) not in current for g in self._targets.groups for p in g.parameters()):
            self._targets = resolve_targets(pl_module, shared_groups(self._trainer, self, self.groups), self.head)
            self._apply_state()

    # ----------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        self._pl_module = pl_module
        self._targets = resolve_targets(pl_module, shared_groups(trainer, self, self.groups), self.head)
        self._plan = self._build_plan()
        if self._unfrozen is None:  # a second fit() on the same callback keeps its progress
            self._unfrozen = self._initial()
        # freeze before DDP wraps the model, so frozen parameters stay out of its reducer
        self._apply_state()
        self._hook.attach(pl_module)
        rank_zero_info("[GradualUnfreezing] plan: " + "; ".join(self.plan_summary()))

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._targets is not None
        self._follow_replaced_parameters(pl_module)
        in_optim = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        missing = [n for g in self._targets.groups for n, p in g.params if id(p) not in in_optim]
        if missing and trainer.optimizers:
            raise ConfigurationError(
                f"GradualUnfreezing only flips requires_grad and never adds optimizer param groups, but "
                f"{len(missing)} layer-group parameter(s) are in no optimizer param group, e.g. {missing[:4]}. "
                "Fix: keep repartition=True (the default), build the optimizer over all parameters (e.g. "
                "AdamW(self.parameters())), or use tl_lightning.optim.layerwise_param_groups."
            )
        wrapped = ddp_module(trainer.strategy.model)
        self._ddp_sync = None
        if wrapped is not None:
            self._ddp_sync = OutsideReducerSync([p for g in self._targets.groups for p in g.parameters()])
            self._ddp_sync.capture(wrapped)
        elif trainer.world_size > 1:
            check_sharded_unfreezing(trainer, pl_module, unfreezes=bool(self._plan and self._plan.phases),
                                     restore_best=self.restore_best)
        log_layer_groups_once(trainer, pl_module, self._targets)
        self._factors.install(
            trainer.optimizers,
            self._targets.groups,
            lambda: trainer.global_step,
            force=self._plan is not None and any(p.lr_scale != 1.0 for p in self._plan.phases),
        )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A second fit() with a new Trainer restarts global_step at 0 while this callback keeps its
        # progress: groups unfrozen in the earlier fit have finished their warm-up (runs resumed
        # from a checkpoint restore global_step first, so they are not affected).
        for name, start in self._factors.unfreeze_step.items():
            if start > trainer.global_step:
                self._factors.unfreeze_step[name] = trainer.global_step - self.warmup_steps

    def warmup_factor(self, name: str, step: int) -> float:
        """LR factor of group ``name`` at optimizer step ``step`` (warm-up times phase scale)."""
        return self._factors.factor(name, step)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval == "epoch":
            self._advance(trainer, trainer.current_epoch)
        set_norm_eval(self._norms)
        if self.interval == "epoch":
            self._log(pl_module, on_step=False)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.interval == "step":
            self._advance(trainer, trainer.global_step)
            self._log(pl_module, on_step=True)
        # a module's own train() (or a validation hook override) may have reset them
        set_norm_eval(self._norms)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._on_validation(trainer, pl_module)

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        if self._ddp_sync is not None and self._sync_enabled:
            self._ddp_sync.sync()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._factors.remove()
        if stage == "fit":
            self._hook.detach()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._hook.detach()

    @property
    def unfrozen_groups(self) -> list[str]:
        """Names of the layer groups trainable now, input -> output."""
        return list(self._unfrozen or [])

    @property
    def layer_group_names(self) -> list[str]:
        """Names of the scheduled layer groups (after ``setup``)."""
        return self._targets.names if self._targets else []

    @property
    def targets(self) -> FineTuneTargets | None:
        """The resolved layer groups and head (after ``setup``)."""
        return self._targets


def _keep_weight_decay(name: str, param: Any) -> bool:
    """Re-partitioning for unfreezing keeps every parameter's weight decay as the user set it."""
    return False

