"""ForgettingMonitor: how far fine-tuning moves each layer group away from the pretrained model.

Catastrophic forgetting shows as training accuracy near 100% while validation falls and the top
layer groups move fast away from what they were pretrained to compute. The monitor measures,
every epoch and per layer group:

* ``forgetting/cka/<group>``: linear CKA (debiased, :mod:`tl_lightning.diagnostics.cka`) between
  the group's output on a fixed probe batch now and with the pretrained weights (1: the same
  representation, near 0: unrelated);
* ``forgetting/cos/<group>``: mean cosine similarity of each probe example's pooled group output
  now and then;
* ``forgetting/drift/<group>``: relative weight change ``||w - w0|| / ||w0||``;

and warns once when the symptoms come together.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from tl_lightning._checks import check_choice, check_int, check_number
from tl_lightning._targets import FineTuneTargets, GroupsSpec, HeadSpec, resolve_targets, shared_groups
from tl_lightning.diagnostics._activations import GroupOutputs, pooled
from tl_lightning.diagnostics._drift import WeightDrift
from tl_lightning.diagnostics._inputs import (
    InputFn,
    Inputs,
    batch_inputs,
    num_rows,
    take_rows,
    to_cpu_copy,
    to_device,
)
from tl_lightning.diagnostics.cka import gram, gram_cka
from tl_lightning.errors import ConfigurationError
from tl_lightning.freezing import eval_mode

__all__ = ["ForgettingMonitor", "check_supported_strategy"]

ForwardFn = Callable[[nn.Module, Any], Any]


def check_supported_strategy(trainer: pl.Trainer, who: str) -> None:
    """Refuse strategies that shard the model: a forward on rank 0 alone would wait forever for the others."""
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    strategy = trainer.strategy
    if not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
        raise ConfigurationError(
            f"{who} runs a probe forward and reads the weights on rank 0 alone, which {type(strategy).__name__} "
            "(a sharded model) cannot do without the other ranks. Fix: remove it for this run "
            "(e.g. `~callbacks.forgetting`), or train with a single device or DDP"
        )


class ForgettingMonitor(Callback):
    """Track, per layer group, how far the representation and the weights move from the pretrained ones.

    The probe batch is ``probe_batch`` when given, else the first validation batch of the sanity
    check, else the first training batch (at most ``probe_size`` examples, kept on the CPU); the
    reference representation is computed on it before the first optimizer step, in eval mode.
    The starting weights ``w0`` are copied when fitting starts (kept on the CPU by default). The
    probe, the reference (as Gram matrices and pooled features) and ``w0`` are in the callback's
    checkpoint state, so a resumed run measures against the same pretrained model; note that
    ``w0`` makes a checkpoint about one model copy larger.

    Under DDP everything runs on rank 0 only (the inner module's forward and reading its weights
    need no collective); the metrics are logged from rank 0. Sharded strategies (FSDP) are
    refused in ``setup``.

    The forgetting warning (once per run) fires when, at an epoch end, all of:

    * ``train_metric`` is at least ``train_threshold`` (at most, with ``mode="min"``);
    * ``val_metric`` is at least ``val_drop`` worse than its best so far;
    * one of the ``top_groups`` top layer groups drifts by at least ``drift_rate`` per epoch
      (relative weight change since the previous measurement).

    Args:
        probe_batch: A batch (or the inputs) to probe with; default: taken from the data.
        probe_size: Most examples of the probe batch used.
        groups: Where the layer groups are (see :func:`~tl_lightning._targets.resolve_targets`);
            shared with the other tl_lightning callbacks of the Trainer.
        head: Layer groups that belong to the head (not monitored).
        debiased: Debiased CKA (unbiased HSIC), which does not score unrelated wide
            representations high; needs at least 4 probe examples.
        every_n_epochs: Measure every ``n`` epochs.
        train_metric: Logged training metric of the warning (``train/acc``).
        val_metric: Logged validation metric of the warning (``val/acc``).
        mode: ``"max"``: higher metrics are better (accuracy); ``"min"``: lower (loss).
        train_threshold: Training metric counted as "near perfect".
        val_drop: How much worse than its best the validation metric must be.
        drift_rate: Relative weight change per epoch of a top group counted as "fast".
        top_groups: How many of the top (output-side) layer groups the drift condition looks at.
        w0_device: ``"cpu"`` or ``"param"`` (keep ``w0`` next to the weights).
        input_fn: Extracts the inputs from a batch (default: the first element of a tuple, a
            tokenized mapping, or the tensor).
        forward_fn: ``forward_fn(module, inputs)`` runs the model on the probe (default
            ``module(inputs)``).
        state_key: Distinguishes two instances in one Trainer.

    Example:
        >>> from tl_lightning.diagnostics import ForgettingMonitor
        >>> cb = ForgettingMonitor(probe_size=64, drift_rate=0.02)
    """

    #: other tl_lightning callbacks of the Trainer see this callback's ``groups=``
    shares_layer_groups = True

    def __init__(
        self,
        probe_batch: Any = None,
        probe_size: int = 64,
        groups: GroupsSpec = None,
        head: HeadSpec = "auto",
        debiased: bool = True,
        every_n_epochs: int = 1,
        train_metric: str = "train/acc",
        val_metric: str = "val/acc",
        mode: Literal["min", "max"] = "max",
        train_threshold: float = 0.99,
        val_drop: float = 0.01,
        drift_rate: float = 0.01,
        top_groups: int = 2,
        w0_device: Literal["cpu", "param"] = "cpu",
        input_fn: InputFn | None = None,
        forward_fn: ForwardFn | None = None,
        state_key: str | None = None,
    ) -> None:
        super().__init__()
        self.probe_size = check_int("probe_size", probe_size, low=1)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, low=1)
        self.mode = check_choice("mode", mode, ("min", "max"))
        self.train_threshold = check_number("train_threshold", train_threshold)
        self.val_drop = check_number("val_drop", val_drop, low=0.0)
        self.drift_rate = check_number("drift_rate", drift_rate, low=0.0)
        self.top_groups = check_int("top_groups", top_groups, low=1)
        self.w0_device = check_choice("w0_device", w0_device, ("cpu", "param"))
        self.groups = groups
        self.head = head
        self.debiased = bool(debiased)
        self.train_metric = train_metric
        self.val_metric = val_metric
        self.input_fn = input_fn
        self.forward_fn = forward_fn
        self._key = state_key
        self._probe: Inputs | None = None
        if probe_batch is not None:
            inputs = batch_inputs(probe_batch, input_fn)
            if inputs is None:
                raise ConfigurationError(
                    f"probe_batch of type {type(probe_batch).__name__} holds no model inputs; pass the inputs (a "
                    "tensor or a mapping of tensors), an (inputs, targets) pair, or input_fn="
                )
            self._probe = to_cpu_copy(take_rows(inputs, self.probe_size))
        # progress (checkpointed)
        self._drift = WeightDrift(w0_device)
        self._reference: dict[str, dict[str, Tensor]] | None = None
        self.history: dict[str, Any] = self._empty_history()
        self._warned = False
        # runtime
        self._targets: FineTuneTargets | None = None
        self._trainer: pl.Trainer | None = None
        self._rank_zero = True
        self._val_now: tuple[int, float] | None = None
        self._missing_warned = False

    @staticmethod
    def _empty_history() -> dict[str, Any]:
        return {"epoch": [], "drift": {}, "cka": {}, "cos": {}, "train": [], "val": []}

    # ----------------------------------------------------------------- state
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(key=self._key, groups=str(self.groups))

    @override
    def state_dict(self) -> dict[str, Any]:
        if not self._rank_zero:
            return {}
        return {
            "w0": self._drift.state_dict(),
            "probe": self._probe,
            "reference": self._reference,
            "history": self.history,
            "warned": self._warned,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._rank_zero or not state_dict:
            return  # ranks other than 0 measure nothing, so they keep no copy of the weights
        module = self._trainer.lightning_module if self._trainer is not None else None
        self._drift.load_state_dict(state_dict.get("w0") or {}, module)
        # the saved reference belongs to the saved probe, so both come back together (a probe_batch given
        # to the resumed run is not used: it has no reference)
        if state_dict.get("reference") is not None and state_dict.get("probe") is not None:
            self._probe = state_dict["probe"]
            self._reference = state_dict["reference"]
        self.history = state_dict.get("history") or self._empty_history()
        self._warned = bool(state_dict.get("warned", False))

    # ----------------------------------------------------------------- measuring
    def _forward_context(self) -> Any:
        trainer = self._trainer
        return trainer.precision_plugin.forward_context() if trainer is not None else contextlib.nullcontext()

    def _representations(self, pl_module: nn.Module) -> dict[str, dict[str, Tensor]]:
        assert self._targets is not None and self._probe is not None
        device = next((p.device for p in pl_module.parameters()), torch.device("cpu"))
        probe = to_device(self._probe, device)
        if self._trainer is not None:
            probe = self._trainer.precision_plugin.convert_input(probe)
        capture = GroupOutputs(self._targets.groups).attach(batch=num_rows(probe))
        try:
            # every module's mode restored after it: frozen BatchNorm stays in eval mode
            with eval_mode(pl_module), torch.no_grad(), self._forward_context():
                if self.forward_fn is not None:
                    self.forward_fn(pl_module, probe)
                else:
                    pl_module(probe)
        finally:
            capture.detach()
        return {
            name: {"gram": gram(a).cpu(), "pooled": pooled(a).cpu()} for name, a in capture.outputs.items()
        }

    def _take_reference(self, pl_module: nn.Module, trainer: pl.Trainer) -> None:
        self._reference = self._representations(pl_module)
        n = num_rows(self._probe) if self._probe is not None else 0
        if self.debiased and n < 4:
            rank_zero_warn(
                f"ForgettingMonitor: the probe batch has {n} example(s); debiased CKA needs 4, so plain CKA is used"
            )
        if trainer.global_step > 0 or trainer.ckpt_path is not None:
            rank_zero_info(
                "[ForgettingMonitor] started on a resumed run without its saved state: drift and CKA are measured "
                f"from the weights at step {trainer.global_step}, not from the pretrained ones"
            )

    def measure(self, pl_module: nn.Module) -> dict[str, float]:
        """Measure now: ``{"drift/<group>", "cka/<group>", "cos/<group>": value}`` (rank 0, after fit started).

        CKA and cosine need the reference representation (taken before the first optimizer step);
        before that only the drift is measured.
        """
        if self._targets is None or not self._drift:
            return {}
        out = {f"drift/{k}": v for k, v in self._drift.measure(pl_module, self._targets.groups).items()}
        if self._reference is None or self._probe is None:
            return out
        debiased = self.debiased and num_rows(self._probe) >= 4
        for name, now in self._representations(pl_module).items():
            ref = self._reference.get(name)
            if ref is None or ref["gram"].shape != now["gram"].shape:
                continue
            out[f"cka/{name}"] = gram_cka(ref["gram"], now["gram"], debiased=debiased)
            out[f"cos/{name}"] = float(
                torch.nn.functional.cosine_similarity(ref["pooled"], now["pooled"], dim=1).mean()
            )
        return out

    def weight_drift(self, pl_module: nn.Module) -> dict[str, float]:
        """Relative weight change of each layer group now (empty on ranks other than 0)."""
        if self._targets is None or not self._drift:
            return {}
        return self._drift.measure(pl_module, self._targets.groups)

    @property
    def targets(self) -> FineTuneTargets | None:
        """The monitored layer groups (after ``setup``)."""
        return self._targets

    # ----------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_supported_strategy(trainer, "ForgettingMonitor")
        self._trainer = trainer
        self._rank_zero = trainer.is_global_zero
        self._targets = resolve_targets(pl_module, shared_groups(trainer, self, self.groups), self.head)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the module's own setup / configure_model and after a checkpoint restored this state
        if self._rank_zero and not self._drift:
            self._drift.snapshot(pl_module.named_parameters())

    @override
    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._rank_zero and trainer.sanity_checking and self._probe is None and self._reference is None:
            self._capture_probe(batch)

    def _capture_probe(self, batch: Any) -> None:
        inputs = batch_inputs(batch, self.input_fn)
        if inputs is None:
            raise ConfigurationError(
                f"ForgettingMonitor cannot find the model inputs in batches of type {type(batch).__name__}. Fix: "
                "ForgettingMonitor(input_fn=lambda batch: <inputs>) or probe_batch=..."
            )
        self._probe = to_cpu_copy(take_rows(inputs, self.probe_size))

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._rank_zero or self._reference is not None:
            return
        if self._probe is None:
            self._capture_probe(batch)
        self._take_reference(pl_module, trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._rank_zero and not trainer.sanity_checking:
            value = trainer.callback_metrics.get(self.val_metric)
            if value is not None:
                self._val_now = (trainer.current_epoch, float(value))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if not self._rank_zero or (epoch + 1) % self.every_n_epochs or self._targets is None:
            return
        values = self.measure(pl_module)
        for key, value in values.items():
            if math.isfinite(value):
                pl_module.log(f"forgetting/{key}", value, rank_zero_only=True)
        self._record(epoch, values, trainer)
        message = self.symptoms()
        if message is not None and not self._warned:
            self._warned = True
            rank_zero_warn(message)

    # ----------------------------------------------------------------- decision
    def _record(self, epoch: int, values: dict[str, float], trainer: pl.Trainer) -> None:
        h = self.history
        h["epoch"].append(int(epoch))
        for kind in ("drift", "cka", "cos"):
            for g in self._targets.names if self._targets else []:
                h[kind].setdefault(g, []).append(float(values.get(f"{kind}/{g}", float("nan"))))
        train = trainer.callback_metrics.get(self.train_metric)
        val = self._val_now[1] if self._val_now is not None and self._val_now[0] == epoch else None
        h["train"].append(None if train is None else float(train))
        h["val"].append(val)
        if (train is None or val is None) and not self._missing_warned and not trainer.sanity_checking:
            self._missing_warned = True
            missing = [m for m, v in ((self.train_metric, train), (self.val_metric, val)) if v is None]
            rank_zero_warn(
                f"ForgettingMonitor: {missing} not logged at the end of epoch {epoch}, so the catastrophic-forgetting "
                f"warning cannot be checked (logged: {sorted(trainer.callback_metrics)}). Fix: train_metric= / "
                "val_metric= naming logged metrics"
            )

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def symptoms(self) -> str | None:
        """The catastrophic-forgetting message for the latest measurement, or ``None`` (see the class docstring)."""
        h = self.history
        if len(h["epoch"]) < 2 or self._targets is None:
            return None
        train, val = h["train"][-1], h["val"][-1]
        earlier = [v for v in h["val"][:-1] if v is not None]
        if train is None or val is None or not earlier:
            return None
        near = train >= self.train_threshold if self.mode == "max" else train <= self.train_threshold
        best = max(earlier) if self.mode == "max" else min(earlier)
        falls = val <= best - self.val_drop if self.mode == "max" else val >= best + self.val_drop
        if not (near and falls):
            return None
        epochs = h["epoch"][-1] - h["epoch"][-2]
        fast: list[str] = []
        for g in self._targets.names[-self.top_groups :]:
            series = h["drift"].get(g, [])
            if len(series) >= 2 and math.isfinite(series[-1]) and math.isfinite(series[-2]):
                rate = (series[-1] - series[-2]) / max(epochs, 1)
                if rate >= self.drift_rate:
                    cka = h["cka"].get(g, [float("nan")])[-1]
                    fast.append(
                        f"{g}: relative weight change {series[-2]:.3g} -> {series[-1]:.3g}"
                        + (f", CKA with the pretrained features {cka:.2f}" if math.isfinite(cka) else "")
                    )
        if not fast:
            return None
        return (
            f"ForgettingMonitor: symptoms of catastrophic forgetting at epoch {h['epoch'][-1]}: {self.train_metric} "
            f"{train:.3f} (threshold {self.train_threshold:g}) while {self.val_metric} fell to {val:.3f} from its best "
            f"{best:.3f}, and the top layer groups move fast away from the pretrained weights ({'; '.join(fast)}; "
            f"threshold {self.drift_rate:g} per epoch). The model memorises the training set while losing what it was "
            "pretrained on. Try: a lower LR for the top groups (model.lr, model.layer_decay), fewer trainable groups "
            "(finetune=top_n or gradual), a regularizer toward the pretrained weights (L2-SP), stronger augmentation "
            "or more data, and early stopping on the validation metric"
        )
