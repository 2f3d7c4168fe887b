"""Gradual unfreezing that stays correct under DDP, resume and any LR scheduler.

Unlike Lightning's ``BackboneFinetuning``, this callback never adds optimizer param groups: it
expects every parameter to be in the optimizer from the first step (``layerwise_param_groups``,
``TransferClassifier`` or :class:`~tl_lightning.callbacks.LayerwiseLRDecay` do that) and only
flips ``requires_grad``. Frozen parameters get no gradient, hence no optimizer state and no
weight decay; schedulers never see a new group. Under DDP, parameters unfrozen after the model
was wrapped are outside DDP's reducer, so their gradients are averaged here (Lightning issue
20340). What is unfrozen, and since which step, is in the checkpoint, so a resumed run
continues exactly (and never re-freezes, Lightning issue 21901).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.optim import Optimizer
from typing_extensions import override

from tl_lightning.callbacks._ddp import OutsideReducerSync, ddp_module
from tl_lightning.freezing import frozen_norm_modules, set_norm_eval, set_requires_grad
from tl_lightning.callbacks._targets import FineTuneTargets, GroupsSpec, HeadSpec, resolve_targets
from tl_lightning.errors import ConfigurationError, UnknownNameError, did_you_mean

__all__ = ["GradualUnfreezing"]

Strategy = Literal["all_frozen", "top_n_unfrozen", "gradual", "none"]
Interval = Literal["epoch", "step"]
# what one milestone unfreezes: "all", top-k more groups, or named / indexed groups
Action = str | int | list[str | int]


def _parse_action(at: int, value: Any) -> Action:
    if isinstance(value, bool):
        raise ConfigurationError(f"schedule[{at}] = {value!r}: expected group names, indices or a count")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigurationError(f"schedule[{at}] = {value}: the number of groups to unfreeze must be > 0")
        return value
    if isinstance(value, str):
        return "all" if value == "all" else [value]
    if isinstance(value, Sequence):
        items = list(value)
        if not items:
            raise ConfigurationError(f"schedule[{at}] is empty; list the groups to unfreeze or drop the entry")
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (str, int)):
                raise ConfigurationError(f"schedule[{at}] entry {v!r} is not a group name or index")
        return items
    raise ConfigurationError(
        f"schedule[{at}] = {value!r}: expected a list of group names / indices (-1 = top group), "
        "an int k (unfreeze the top k still-frozen groups) or 'all'"
    )


def _parse_schedule(schedule: Mapping[Any, Any]) -> dict[int, Action]:
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
        out[at] = _parse_action(at, value)
    return dict(sorted(out.items()))


class GradualUnfreezing(Callback):
    """Freeze layer groups and unfreeze them on a schedule, from the top (output side) down.

    The layer groups are found on any LightningModule (``groups=`` attribute path or regex
    patterns, the module's ``layer_groups()``, or its tl_lightning ``Backbone``); the head
    (every parameter in no layer group) always trains.

    Args:
        schedule: ``{epoch (or step): what to unfreeze}``; the value is a list of group names or
            indices (``-1`` = top group), an int ``k`` (the top ``k`` still-frozen groups) or
            ``"all"``. Keys may be strings (YAML).
        unfreeze_every: Instead of ``schedule``: every ``N`` epochs (steps) unfreeze
            ``groups_per_step`` more groups from the top, until all train.
        groups_per_step: Groups unfrozen at each ``unfreeze_every`` milestone.
        initially_trainable: Number of top groups trainable from the start.
        strategy: Preset: ``"all_frozen"`` (feature extraction: only the head trains),
            ``"top_n_unfrozen"`` (the top ``initially_trainable`` groups train throughout),
            ``"gradual"`` (``unfreeze_every``, default 1), ``"none"`` (everything trains).
            Inferred from the other arguments when omitted.
        interval: Whether schedule keys count epochs or optimizer steps.
        warmup_steps: Newly unfrozen groups ramp their LR linearly from ``1/warmup_steps`` to
            1 times what the scheduler sets, over this many optimizer steps. The factor is
            applied only inside ``optimizer.step`` and undone right after, so any scheduler
            (OneCycleLR, LambdaLR, ReduceLROnPlateau, recursive ones) keeps working. Needs one
            optimizer param group per layer group.
        train_bn: Keep the norm layers of frozen groups trainable and in train mode (as
            Lightning's ``train_bn=True``). By default they are frozen and in eval mode.
        groups: Where the layer groups are (see :func:`~tl_lightning.callbacks._targets.resolve_targets`).
        head: Layer-group names that belong to the always-trainable head (``"auto"``: a last
            group named ``fc`` / ``classifier`` / ``head`` when nothing else would train).
        state_key: Distinguishes two instances in one Trainer.
        log: Log ``finetune/trainable_groups`` and ``finetune/trainable_params``.

    Example:
        >>> cb = GradualUnfreezing(schedule={2: [-1], 4: 2, 6: "all"}, warmup_steps=100)
        >>> cb = GradualUnfreezing(unfreeze_every=1, groups_per_step=1, initially_trainable=1)
        >>> cb = GradualUnfreezing.feature_extraction()
        >>> # trainer = Trainer(callbacks=[cb]); trainer.fit(model)
    """

    def __init__(
        self,
        schedule: Mapping[Any, Any] | None = None,
        *,
        unfreeze_every: int | None = None,
        groups_per_step: int = 1,
        initially_trainable: int = 0,
        strategy: Strategy | None = None,
        interval: Interval = "epoch",
        warmup_steps: int = 0,
        train_bn: bool = False,
        groups: GroupsSpec = None,
        head: HeadSpec = "auto",
        state_key: str | None = None,
        log: bool = True,
    ) -> None:
        super().__init__()
        strategies = ("all_frozen", "top_n_unfrozen", "gradual", "none")
        if strategy is not None and strategy not in strategies:
            raise UnknownNameError(f"unknown strategy {strategy!r}{did_you_mean(strategy, strategies)}; valid: {strategies}")
        if interval not in ("epoch", "step"):
            raise ConfigurationError(f"interval must be 'epoch' or 'step', got {interval!r}")
        for name, value, low in (
            ("groups_per_step", groups_per_step, 1),
            ("initially_trainable", initially_trainable, 0),
            ("warmup_steps", warmup_steps, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigurationError(f"{name} must be an int >= {low}, got {value!r}")
        if unfreeze_every is not None and (
            isinstance(unfreeze_every, bool) or not isinstance(unfreeze_every, int) or unfreeze_every < 1
        ):
            raise ConfigurationError(f"unfreeze_every must be an int >= 1, got {unfreeze_every!r}")
        if schedule is not None and unfreeze_every is not None:
            raise ConfigurationError("give either schedule={...} or unfreeze_every=N, not both")
        if strategy is None:
            if schedule is not None or unfreeze_every is not None:
                strategy = "gradual"
            else:
                strategy = "top_n_unfrozen" if initially_trainable > 0 else "all_frozen"
        if strategy in ("all_frozen", "top_n_unfrozen", "none") and (schedule is not None or unfreeze_every):
            raise ConfigurationError(f"strategy={strategy!r} unfreezes nothing during training; drop schedule/unfreeze_every")
        if strategy == "all_frozen" and initially_trainable:
            raise ConfigurationError("strategy='all_frozen' trains only the head; use 'top_n_unfrozen' with initially_trainable")
        if strategy == "top_n_unfrozen" and initially_trainable < 1:
            raise ConfigurationError("strategy='top_n_unfrozen' needs initially_trainable >= 1")
        if strategy == "gradual" and schedule is None and unfreeze_every is None:
            unfreeze_every = 1
        self.strategy: Strategy = strategy
        self.schedule = _parse_schedule(schedule) if schedule is not None else None
        self.unfreeze_every = unfreeze_every
        self.groups_per_step = groups_per_step
        self.initially_trainable = initially_trainable
        self.interval: Interval = interval
        self.warmup_steps = warmup_steps
        self.train_bn = train_bn
        self.groups = groups
        self.head = head
        self._key = state_key
        self.log_stats = log
        # progress (checkpointed)
        self._unfrozen: list[str] | None = None
        self._applied: list[int] = []
        self._unfreeze_step: dict[str, int] = {}
        # runtime
        self._targets: FineTuneTargets | None = None
        self._milestones: dict[int, Action] = {}
        self._norms: list[torch.nn.Module] = []
        self._ddp_sync: OutsideReducerSync | None = None
        self._sync_enabled = True  # tests switch it off to show the drift it prevents
        self._trainer: pl.Trainer | None = None
        self._hook_handles: list[Any] = []
        self._saved_lrs: dict[tuple[int, int], Any] = {}
        self._warm_groups: list[tuple[Optimizer, int, str]] = []

    # ----------------------------------------------------------------- presets
    @classmethod
    def feature_extraction(cls, **kwargs: Any) -> GradualUnfreezing:
        """Only the head trains (strategy ``all_frozen``)."""
        return cls(strategy="all_frozen", **kwargs)

    @classmethod
    def top_n(cls, n: int, **kwargs: Any) -> GradualUnfreezing:
        """The top ``n`` layer groups and the head train throughout (``top_n_unfrozen``)."""
        return cls(strategy="top_n_unfrozen", initially_trainable=n, **kwargs)

    @classmethod
    def gradual(cls, every: int = 1, k: int = 1, **kwargs: Any) -> GradualUnfreezing:
        """Unfreeze ``k`` more groups from the top every ``every`` epochs (ULMFiT-style)."""
        return cls(strategy="gradual", unfreeze_every=every, groups_per_step=k, **kwargs)

    @classmethod
    def full(cls, **kwargs: Any) -> GradualUnfreezing:
        """Everything trains from the start (strategy ``none``); still logs and checks the optimizer."""
        return cls(strategy="none", **kwargs)

    # ----------------------------------------------------------------- state
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(key=self._key, groups=str(self.groups), interval=self.interval)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "unfrozen": list(self._unfrozen or []),
            "applied": list(self._applied),
            "unfreeze_step": dict(self._unfreeze_step),
            "names": self._targets.names if self._targets else None,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._unfrozen = list(state_dict["unfrozen"])
        self._applied = [int(a) for a in state_dict["applied"]]
        self._unfreeze_step = {str(k): int(v) for k, v in state_dict["unfreeze_step"].items()}
        saved = state_dict.get("names")
        if self._targets is not None:
            if saved is not None and list(saved) != self._targets.names:
                raise ConfigurationError(
                    f"checkpoint's layer groups {saved} differ from this model's {self._targets.names}; "
                    "resume with the same model and GradualUnfreezing(groups=...)"
                )
            # restored before DDP wraps the model (for DDP-like strategies): unfrozen groups
            # then join the reducer, and nothing is ever re-frozen
            self._apply_state()

    # ----------------------------------------------------------------- helpers
    def _resolve_index(self, item: str | int, at: int) -> str:
        assert self._targets is not None
        names = self._targets.names
        if isinstance(item, int):
            if not -len(names) <= item < len(names):
                raise ConfigurationError(
                    f"schedule[{at}]: group index {item} is out of range for {len(names)} layer groups "
                    f"(valid: {-len(names)}..{len(names) - 1}, -1 = top group); groups: {names}"
                )
            return names[item]
        if item not in names:
            raise UnknownNameError(
                f"schedule[{at}]: unknown layer group {item!r}{did_you_mean(item, names)}; valid names: {names}"
            )
        return item

    def _build_milestones(self) -> dict[int, Action]:
        assert self._targets is not None
        n = len(self._targets.groups)
        if self.initially_trainable > n:
            raise ConfigurationError(
                f"initially_trainable={self.initially_trainable} but the model has only {n} layer groups: "
                f"{self._targets.names}"
            )
        if self.schedule is not None:
            for at, action in self.schedule.items():
                if isinstance(action, list):
                    for item in action:
                        self._resolve_index(item, at)
            return dict(self.schedule)
        if self.strategy == "gradual":
            every = self.unfreeze_every or 1
            steps = math.ceil(max(0, n - self.initially_trainable) / self.groups_per_step)
            return {every * (i + 1): self.groups_per_step for i in range(steps)}
        return {}

    def _initial(self) -> list[str]:
        assert self._targets is not None
        names = self._targets.names
        if self.strategy == "none":
            return list(names)
        return names[len(names) - self.initially_trainable :] if self.initially_trainable else []

    def _apply_state(self) -> None:
        assert self._targets is not None and self._unfrozen is not None
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

    def _unfreeze(self, trainer: pl.Trainer, at: int, action: Action) -> None:
        assert self._targets is not None and self._unfrozen is not None
        names = self._targets.names
        still = [n for n in names if n not in self._unfrozen]
        if action == "all":
            chosen = still
        elif isinstance(action, int):
            chosen = still[max(0, len(still) - action) :]
        else:
            chosen = [self._resolve_index(item, at) for item in action]
        new = [n for n in chosen if n not in self._unfrozen]
        self._unfrozen = [n for n in names if n in self._unfrozen or n in new]
        for n in new:
            self._unfreeze_step[n] = trainer.global_step
        self._applied.append(at)
        self._apply_state()
        if new:
            rank_zero_info(
                f"[GradualUnfreezing] {self.interval} {at}: unfroze {new}; trainable groups "
                f"{len(self._unfrozen)}/{len(names)}, trainable params {self._trainable_params():,}"
            )

    def _trainable_params(self) -> int:
        return sum(p.numel() for p in self._pl_module.parameters() if p.requires_grad)

    def _advance(self, trainer: pl.Trainer, now: int) -> None:
        for at, action in self._milestones.items():
            if at <= now and at not in self._applied:
                self._unfreeze(trainer, at, action)

    def _log(self, pl_module: pl.LightningModule, on_step: bool) -> None:
        if self.log_stats and self._unfrozen is not None:
            pl_module.log("finetune/trainable_groups", float(len(self._unfrozen)), on_step=on_step, on_epoch=not on_step)
            pl_module.log("finetune/trainable_params", float(self._trainable_params()), on_step=on_step, on_epoch=not on_step)

    # ----------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        self._pl_module = pl_module
        self._targets = resolve_targets(pl_module, self.groups, self.head)
        self._milestones = self._build_milestones()
        if self._unfrozen is None:  # a second fit() on the same callback keeps its progress
            self._unfrozen = self._initial()
        # freeze before DDP wraps the model, so frozen parameters stay out of its reducer
        self._apply_state()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._targets is not None
        in_optim = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        missing = [n for g in self._targets.groups for n, p in g.params if id(p) not in in_optim]
        if missing and trainer.optimizers:
            raise ConfigurationError(
                f"GradualUnfreezing only flips requires_grad and never adds optimizer param groups, but "
                f"{len(missing)} layer-group parameter(s) are in no optimizer param group, e.g. {missing[:4]}. "
                "Fix: build the optimizer over all parameters (e.g. AdamW(self.parameters()), not "
                "filter(requires_grad)), use tl_lightning.optim.layerwise_param_groups, or add "
                "tl_lightning.callbacks.LayerwiseLRDecay (which includes them)."
            )
        wrapped = ddp_module(trainer.strategy.model)
        self._ddp_sync = None
        if wrapped is not None:
            self._ddp_sync = OutsideReducerSync([p for g in self._targets.groups for p in g.parameters()])
            self._ddp_sync.capture(wrapped)
        elif trainer.world_size > 1:
            rank_zero_warn(
                f"GradualUnfreezing: strategy {type(trainer.strategy).__name__} is not DDP; gradients of "
                "groups unfrozen during training are averaged across ranks only under DDP strategies."
            )
        self._install_warmup(trainer)

    def _install_warmup(self, trainer: pl.Trainer) -> None:
        for h in self._hook_handles:
            h.remove()
        self._hook_handles = []
        self._warm_groups = []
        if not self.warmup_steps:
            return
        assert self._targets is not None
        owner = {id(p): g.name for g in self._targets.groups for p in g.parameters()}
        for opt in trainer.optimizers:
            for i, pg in enumerate(opt.param_groups):
                names = {owner.get(id(p), "<head>") for p in pg["params"]}
                scheduled = names - {"<head>"}
                if not scheduled:
                    continue
                if len(names) > 1:
                    raise ConfigurationError(
                        f"warmup_steps needs one optimizer param group per layer group, but param group {i} "
                        f"mixes {sorted(names)}. Fix: add LayerwiseLRDecay (decay=1.0 keeps the LRs) or build "
                        "the optimizer with tl_lightning.optim.layerwise_param_groups."
                    )
                self._warm_groups.append((opt, i, scheduled.pop()))
            self._hook_handles.append(opt.register_step_pre_hook(self._warmup_pre))
            self._hook_handles.append(opt.register_step_post_hook(self._warmup_post))

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A second fit() with a new Trainer restarts global_step at 0 while this callback keeps its
        # progress: groups unfrozen in the earlier fit have finished their warm-up (runs resumed
        # from a checkpoint restore global_step first, so they are not affected).
        for name, start in self._unfreeze_step.items():
            if start > trainer.global_step:
                self._unfreeze_step[name] = trainer.global_step - self.warmup_steps

    def warmup_factor(self, name: str, step: int) -> float:
        """LR factor of group ``name`` at optimizer step ``step`` (global_step before the step)."""
        start = self._unfreeze_step.get(name)
        if start is None or not self.warmup_steps:
            return 1.0
        return min(1.0, (step - start + 1) / self.warmup_steps)

    def _warmup_pre(self, opt: Optimizer, args: Any, kwargs: Any) -> None:
        assert self._trainer is not None
        step = self._trainer.global_step
        for o, i, name in self._warm_groups:
            if o is opt:
                f = self.warmup_factor(name, step)
                if f < 1.0:
                    pg = opt.param_groups[i]
                    self._saved_lrs[(id(opt), i)] = pg["lr"]
                    pg["lr"] = pg["lr"] * f

    def _warmup_post(self, opt: Optimizer, args: Any, kwargs: Any) -> None:
        for (oid, i), lr in list(self._saved_lrs.items()):
            if oid == id(opt):
                opt.param_groups[i]["lr"] = lr  # the exact object back: schedulers see their own value
                del self._saved_lrs[(oid, i)]

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
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        if self._ddp_sync is not None and self._sync_enabled:
            self._ddp_sync.sync()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for h in self._hook_handles:
            h.remove()
        self._hook_handles = []

    @property
    def unfrozen_groups(self) -> list[str]:
        """Names of the layer groups trainable now, input -> output."""
        return list(self._unfrozen or [])

    @property
    def layer_group_names(self) -> list[str]:
        """Names of the scheduled layer groups (after ``setup``)."""
        return self._targets.names if self._targets else []

