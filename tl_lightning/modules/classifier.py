"""TransferClassifier: a pretrained backbone plus a new head, trained with layer-wise LRs."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
import torchmetrics
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau
from typing_extensions import override

from tl_lightning._checks import check_choice, check_number
from tl_lightning._plain import to_plain
from tl_lightning.backbones import Backbone, ImagePreprocess, LayerGroup, PreprocessConfig, create_backbone
from tl_lightning.errors import CheckpointError, ConfigurationError, NonFiniteError
from tl_lightning.freezing import no_grad_if_frozen
from tl_lightning.heads import create_head
from tl_lightning.modules._checkpoint import (
    materialize_files,
    preprocess_from_dict,
    preprocess_to_dict,
    read_checkpoint,
)
from tl_lightning.modules._partials import partial_to_spec, spec_to_partial
from tl_lightning.optim import layerwise_param_groups
from tl_lightning.optim.schedulers import build_scheduler

__all__ = ["TransferClassifier"]

_TASKS = ("multiclass", "multilabel")
_INTERVALS = ("step", "epoch")
_NONFINITE = ("error", "skip")
# Keys this module writes into Lightning checkpoints next to the state dict.
CHECKPOINT_KEY = "tl_lightning"
#: batch input key of precomputed backbone features (tl_lightning.features): the head alone runs
CACHED_FEATURES_KEY = "cached_features"


def _resolve_labels(num_classes: int | None, labels: Sequence[str] | None) -> list[str]:
    if labels is not None:
        if isinstance(labels, str):
            raise ConfigurationError(f"labels must be a list of class names, got the string {labels!r}")
        names = [str(label) for label in labels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigurationError(f"labels must be unique, got duplicates {dupes} in {names}")
        if num_classes is not None and num_classes != len(names):
            raise ConfigurationError(
                f"num_classes={num_classes} does not match the {len(names)} labels {names}; "
                "pass only labels (num_classes is inferred from them) or make them agree"
            )
        if not names:
            raise ConfigurationError("labels is empty; a classifier needs at least one class")
        return names
    if num_classes is None:
        raise ConfigurationError(
            "give num_classes or labels (class names; e.g. labels=datamodule.labels) to TransferClassifier"
        )
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes <= 0:
        raise ConfigurationError(f"num_classes must be a positive int, got {num_classes!r}")
    return [str(i) for i in range(num_classes)]


class TransferClassifier(LightningModule):
    """A pretrained backbone with a new classification head, ready for any fine-tuning recipe.

    The optimizer holds one named param group per backbone layer group (plus ``head``) from the
    first step, frozen groups included, so unfreezing callbacks never add groups and every
    scheduler keeps working. Group ``i`` of ``L`` trains at ``lr * layer_decay ** (L - 1 - i)``.

    Args:
        backbone: Registry name (``"timm:resnet50"``, ``"tv:resnet50"``, ``"hf:<folder>"``).
        num_classes: Number of classes; inferred from ``labels`` when omitted.
        labels: Class names in class-index order (kept with the model and its checkpoints).
        task: ``"multiclass"`` (softmax, cross-entropy) or ``"multilabel"`` (sigmoid, BCE;
            targets are ``(batch, num_classes)`` 0/1 tensors).
        pretrained: Load pretrained backbone weights (an error if they cannot be had).
        weights: Where the weights come from (hub tag, enum name or local file/folder).
        backbone_kwargs: Extra arguments for :func:`~tl_lightning.backbones.create_backbone`
            (``key_map``, ``pooling``, ``granularity``, model kwargs).
        head: ``"linear"`` or ``"mlp"``.
        head_hidden: Hidden sizes of the MLP head.
        head_dropout: Dropout in the head.
        lr: LR of the top backbone layer group.
        head_lr: LR of the head (default ``lr``).
        layer_decay: Layer-wise LR decay in (0, 1]; 1.0 gives every group ``lr``.
        weight_decay: Weight decay, not applied to biases, norms, embeddings and tokens.
        label_smoothing: Label smoothing of the loss.
        optimizer: A partial called with the param groups (``functools.partial(torch.optim.SGD,
            momentum=0.9)``, Hydra ``_partial_: true``, or a ``{"_target_": "torch.optim.SGD",
            "momentum": 0.9}`` mapping); default AdamW. Stored in the checkpoint as such a
            mapping, so ``load_from_checkpoint`` rebuilds it.
        scheduler: A partial (or ``_target_`` mapping) called with the optimizer, through
            :func:`~tl_lightning.optim.build_scheduler` (``total_steps`` filled in).
        scheduler_interval: Step the scheduler every ``"step"`` or ``"epoch"``.
        scheduler_monitor: Metric monitored by ``ReduceLROnPlateau``.
        channels_last: Run image backbones in ``channels_last`` memory format (4-d weights and
            inputs), which oneDNN / cuDNN convolutions prefer: measured here 1.6x faster for a frozen
            ResNet-50 forward and 1.25x for a full fine-tuning step on a 2-core CPU (BENCHMARKS.md).
            Ignored for text backbones. Set ``False`` for a strategy that needs contiguous
            parameters.
        nonfinite: What a NaN / inf training loss does: ``"error"`` (default) stops the run with a
            :class:`~tl_lightning.errors.NonFiniteError` naming the step and batch, before the
            weights are touched; ``"skip"`` skips that optimizer step with a warning (counted in
            :attr:`skipped_steps`). Under DDP the ranks agree: a bad loss on any rank skips the
            step everywhere.

    The model's input preprocessing (:attr:`preprocess`) starts as the backbone's and follows
    the data module it is trained with (``data.max_length=32``, ``data.image_size=64``); it is
    stored in every checkpoint, together with the data settings that shape inputs and, for
    Hugging Face backbones, the config and tokenizer, so ``load_from_checkpoint`` rebuilds the
    same model on a machine without network or the original folder. A loaded model is in eval
    mode: it predicts deterministically.

    Example:
        >>> import torch
        >>> model = TransferClassifier("timm:test_resnet", labels=["cat", "dog"], pretrained=False)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 2])
        >>> [g["name"] for g in model.configure_optimizers()["optimizer"].param_groups][-2:]
        ['head', 'head/no_decay']
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int | None = None,
        labels: Sequence[str] | None = None,
        task: Literal["multiclass", "multilabel"] = "multiclass",
        pretrained: bool = True,
        weights: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        head: Literal["linear", "mlp"] = "linear",
        head_hidden: Sequence[int] = (),
        head_dropout: float = 0.0,
        lr: float = 1e-3,
        head_lr: float | None = None,
        layer_decay: float = 1.0,
        weight_decay: float = 0.01,
        label_smoothing: float = 0.0,
        optimizer: Callable[..., Optimizer] | Mapping[str, Any] | None = None,
        scheduler: Callable[..., Any] | Mapping[str, Any] | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        scheduler_monitor: str = "val/loss",
        channels_last: bool = True,
        nonfinite: Literal["error", "skip"] = "error",
    ) -> None:
        super().__init__()
        labels = to_plain(labels)
        backbone_kwargs = dict(to_plain(backbone_kwargs) or {})
        head_hidden = tuple(to_plain(head_hidden) or ())
        check_choice("task", task, _TASKS)
        check_choice("scheduler_interval", scheduler_interval, _INTERVALS)
        check_choice("nonfinite", nonfinite, _NONFINITE)
        check_number("lr", lr, low=0.0, low_open=True)
        if head_lr is not None:
            check_number("head_lr", head_lr, low=0.0, low_open=True)
        check_number("layer_decay", layer_decay, low=0.0, high=1.0, low_open=True, hint="1.0 disables it")
        check_number("weight_decay", weight_decay, low=0.0)
        check_number("label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True)
        check_number("head_dropout", head_dropout, low=0.0, high=1.0, high_open=True)
        optimizer, scheduler = to_plain(optimizer), to_plain(scheduler)
        for name, fn in (("optimizer", optimizer), ("scheduler", scheduler)):
            if fn is not None and not callable(fn) and not (isinstance(fn, Mapping) and "_target_" in fn):
                raise ConfigurationError(
                    f"{name} must be a callable (functools.partial or Hydra `_partial_: true`) or a "
                    f"{{'_target_': ...}} mapping, got {fn!r}"
                )
        optimizer, scheduler = spec_to_partial(optimizer), spec_to_partial(scheduler)
        resolved = _resolve_labels(num_classes, labels)
        if task == "multiclass" and len(resolved) < 2:
            raise ConfigurationError(
                f"a multiclass classifier needs at least 2 classes, got {resolved}; "
                "for one yes/no label use task='multilabel'"
            )
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        # Stored resolved and plain: the label names travel with every checkpoint, and the
        # optimizer / scheduler as {"_target_": ..., **kwargs} specs (None when a partial cannot
        # be described that way, e.g. a lambda), so load_from_checkpoint rebuilds them.
        self.hparams.update(
            labels=resolved,
            num_classes=len(resolved),
            backbone_kwargs=backbone_kwargs,
            head_hidden=list(head_hidden),
            optimizer=partial_to_spec(optimizer),
            scheduler=partial_to_spec(scheduler),
        )
        self.labels: list[str] = resolved
        self.num_classes = len(resolved)
        self.task = task
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        #: optimizer steps skipped for a non-finite loss (``nonfinite="skip"``)
        self.skipped_steps = 0
        self._preprocess: PreprocessConfig | None = None
        #: data settings that shape the inputs (``text_column``, ``max_length``, ...), recorded
        #: from the data module at fit time and kept in checkpoints for ``tl-predict``
        self.data_settings: dict[str, Any] = {}

        self.backbone: Backbone = create_backbone(backbone, pretrained=pretrained, weights=weights, **backbone_kwargs)
        self._channels_last = bool(channels_last) and isinstance(self.backbone.preprocess, ImagePreprocess)
        if self._channels_last:
            # Module.to(device) later keeps the memory format (preserve_format)
            self.backbone.to(memory_format=torch.channels_last)
        self.head = create_head(head, self.backbone.feature_dim, self.num_classes, hidden=head_hidden, dropout=head_dropout)
        if task == "multiclass":
            self.loss_fn: nn.Module = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        else:
            self.loss_fn = nn.BCEWithLogitsLoss()
        self.metrics = nn.ModuleDict(
            {f"{split}_{name}": self._metric(name) for split in ("train", "val", "test") for name in ("acc", "f1")}
        )
        # Some loaders (transformers' from_pretrained) return modules in eval mode, and Lightning
        # keeps submodule modes: start in train mode so dropout is active while training.
        self.train()

    def _metric(self, name: str) -> torchmetrics.Metric:
        if self.task == "multiclass":
            if name == "acc":
                return torchmetrics.classification.MulticlassAccuracy(num_classes=self.num_classes, average="micro")
            return torchmetrics.classification.MulticlassF1Score(num_classes=self.num_classes, average="macro")
        if name == "acc":
            return torchmetrics.classification.MultilabelAccuracy(num_labels=self.num_classes)
        return torchmetrics.classification.MultilabelF1Score(num_labels=self.num_classes, average="macro")

    def layer_groups(self) -> list[LayerGroup]:
        """The backbone's layer groups, input -> output (what unfreezing / LR callbacks act on)."""
        return self.backbone.layer_groups()

    @property
    def preprocess(self) -> PreprocessConfig:
        """The input preprocessing this model is trained / predicts with (the backbone's by default)."""
        return self._preprocess if self._preprocess is not None else self.backbone.preprocess

    def set_preprocess(self, preprocess: PreprocessConfig, data_settings: Mapping[str, Any] | None = None) -> None:
        """Record the preprocessing (and data settings) the model is trained with; kept in checkpoints.

        Args:
            preprocess: An :class:`~tl_lightning.backbones.ImagePreprocess` or
                :class:`~tl_lightning.backbones.TextPreprocess` of the backbone's modality.
            data_settings: Plain settings that shape inputs (``{"text_column": "review"}``).
        """
        if preprocess.modality != self.backbone.preprocess.modality:
            raise ConfigurationError(
                f"{self.hparams.backbone!r} takes {self.backbone.preprocess.modality} inputs, got a "
                f"{preprocess.modality} preprocess; use data for this backbone's modality"
            )
        self._preprocess = preprocess
        if data_settings is not None:
            self.data_settings = dict(to_plain(dict(data_settings)))

    @override
    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` (``trainer=fsdp``): one FSDP2 unit per layer group plus the head.

        A no-op under every other strategy (see :func:`tl_lightning.sharding.shard_classifier`).
        """
        from tl_lightning.sharding import shard_classifier

        shard_classifier(self)

    @override
    def on_fit_start(self) -> None:
        from tl_lightning._targets import resolve_targets
        from tl_lightning.describe import log_layer_groups_once

        log_layer_groups_once(self.trainer, self, resolve_targets(self))

    @override
    def setup(self, stage: str) -> None:
        # follow the data module's effective preprocessing (its max_length / image_size overrides)
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        effective = getattr(datamodule, "effective_preprocess", None)
        if stage == "fit" and callable(effective) and getattr(datamodule, "preprocess", None) is not None:
            settings = getattr(datamodule, "input_settings", None)
            self.set_preprocess(effective(), settings() if callable(settings) else None)

    def features(self, x: Tensor | Mapping[str, Tensor]) -> Tensor:
        """Pooled backbone features ``(batch, feature_dim)`` of an input batch: what the head sees."""
        if self._channels_last and isinstance(x, Tensor) and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        # A fully frozen trunk (feature extraction) runs under no_grad: no graph, no saved
        # activations, whatever the inputs are.
        with no_grad_if_frozen(self.backbone):
            return self.backbone(x)

    @override
    def forward(self, x: Tensor | Mapping[str, Tensor]) -> Tensor:
        """Logits ``(batch, num_classes)`` for an image tensor or a dict of tokenized tensors.

        A dict ``{"cached_features": (batch, feature_dim) tensor}`` (batches of
        :class:`~tl_lightning.features.CachedFeatureDataModule`) holds precomputed backbone
        features: only the head runs.
        """
        if isinstance(x, Mapping) and CACHED_FEATURES_KEY in x:
            return self.head(self._cached_features(x[CACHED_FEATURES_KEY]))
        return self.head(self.features(x))

    def _cached_features(self, features: Tensor) -> Tensor:
        if features.ndim != 2 or features.shape[1] != self.backbone.feature_dim:
            raise ConfigurationError(
                f"cached features of shape {tuple(features.shape)} do not fit {self.hparams.backbone!r}, whose "
                f"features are (batch, {self.backbone.feature_dim}); compute them with this model's backbone"
            )
        weight = next(self.head.parameters(), None)
        return features if weight is None else features.to(weight.dtype)

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.task == "multiclass":
            return self.loss_fn(logits, y)
        target = y.float()
        smoothing = self.hparams.label_smoothing
        if smoothing:
            target = target * (1.0 - smoothing) + 0.5 * smoothing
        return self.loss_fn(logits, target)

    def _shared_step(self, batch: Any, split: str, outputs: dict[str, Tensor] | None = None) -> Tensor:
        x, y = _unpack(batch, split)
        logits = self(x)
        if outputs is not None:
            outputs.update(logits=logits.detach(), targets=y)
        loss = self._loss(logits, y)
        preds = logits.softmax(-1) if self.task == "multiclass" else logits.sigmoid()
        target = y if self.task == "multiclass" else y.long()
        acc, f1 = self.metrics[f"{split}_acc"], self.metrics[f"{split}_f1"]
        acc(preds, target)
        f1(preds, target)
        batch_size = y.shape[0]
        # epoch-level only, so sync_dist costs one reduction per epoch and ranks agree (EarlyStopping, plateau)
        self.log(
            f"{split}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size, sync_dist=True
        )
        self.log(f"{split}/acc", acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size)
        self.log(f"{split}/f1", f1, on_step=False, on_epoch=True, batch_size=batch_size)
        return loss

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        loss = self._shared_step(batch, "train")
        bad = not bool(torch.isfinite(loss.detach()).all())
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return loss
        step = trainer.global_step if trainer is not None else None
        epoch = trainer.current_epoch if trainer is not None else None
        where = f"optimizer step {step} (epoch {epoch}, batch {batch_idx})"
        if self.hparams.nonfinite == "skip":
            self.skipped_steps += 1
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"non-finite training loss ({loss.detach().float().item()}) at {where}: step skipped "
                f"({self.skipped_steps} so far; model.nonfinite=skip)"
            )
            return None
        raise NonFiniteError(
            f"the training loss is {loss.detach().float().item()} at {where}; the weights were not updated. "
            "Fix: lower the learning rate (model.lr), check that batch for NaN / inf inputs, or set "
            "model.nonfinite=skip to skip such steps"
        )

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """The batch's ``{"loss", "logits", "targets"}`` (what ``diagnostics.PerClassReport`` reads)."""
        outputs: dict[str, Tensor] = {}
        outputs["loss"] = self._shared_step(batch, "test", outputs)
        return outputs

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Class probabilities ``(batch, num_classes)`` (softmax, or sigmoid for multilabel)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        with torch.no_grad():
            logits = self(x)
        return logits.softmax(-1) if self.task == "multiclass" else logits.sigmoid()

    def param_groups(self) -> list[dict]:
        """Optimizer param groups: one named group per layer group (split by weight decay) plus the head."""
        hp = self.hparams
        return layerwise_param_groups(
            self.backbone.layer_groups(),
            base_lr=hp.lr,
            decay=hp.layer_decay,
            head=self.head,
            head_lr=hp.head_lr,
            weight_decay=hp.weight_decay,
        )

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        factory = self.optimizer_factory or functools.partial(torch.optim.AdamW)
        optimizer = factory(self.param_groups())
        if not isinstance(optimizer, Optimizer):
            raise ConfigurationError(
                f"the optimizer partial returned {type(optimizer).__name__}, not a torch.optim.Optimizer: {factory!r}"
            )
        config: dict[str, Any] = {"optimizer": optimizer}
        if self.scheduler_factory is None:
            return config
        interval = self.hparams.scheduler_interval
        scheduler = build_scheduler(self.scheduler_factory, optimizer, self._total_scheduler_steps(interval))
        sched_cfg: dict[str, Any] = {"scheduler": scheduler, "interval": interval, "frequency": 1}
        if isinstance(scheduler, ReduceLROnPlateau):
            sched_cfg["monitor"] = self.hparams.scheduler_monitor
        config["lr_scheduler"] = sched_cfg
        return config

    def _total_scheduler_steps(self, interval: str) -> int | None:
        trainer = self._trainer
        if trainer is None:
            return None
        if interval == "epoch":
            epochs = trainer.max_epochs
            return int(epochs) if epochs is not None and epochs > 0 else None
        steps = trainer.estimated_stepping_batches
        return int(steps) if math.isfinite(steps) else None

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The state dict below already holds the trained weights: loading must not fetch
        # pretrained ones again (no network, moved or deleted weight files).
        hparams = checkpoint.get(self.CHECKPOINT_HYPER_PARAMS_KEY)
        if isinstance(hparams, dict):
            hparams = dict(hparams)
            hparams["pretrained"] = False
            hparams["weights"] = None
            checkpoint[self.CHECKPOINT_HYPER_PARAMS_KEY] = hparams
        checkpoint[CHECKPOINT_KEY] = {
            "labels": list(self.labels),
            "task": self.task,
            "backbone": self.hparams.backbone,
            "modality": self.backbone.preprocess.modality,
            "pretrained_source": self.backbone.pretrained_source,
            "preprocess": preprocess_to_dict(self.preprocess),
            "data": dict(self.data_settings),
            "backbone_rebuild": self.backbone.rebuild_spec(),
            "optimizer": repr(self.optimizer_factory) if self.optimizer_factory is not None else None,
            "scheduler": repr(self.scheduler_factory) if self.scheduler_factory is not None else None,
        }
        from tl_lightning.finetune.lora._checkpoint import save_adapter

        save_adapter(self, checkpoint)  # with a LoRA adapter: adapter + head + base digest, not the base

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from tl_lightning.finetune.lora._checkpoint import restore_adapter

        restore_adapter(self, checkpoint)  # a LoRA checkpoint: add the adapter, check the base, fill it in
        saved = checkpoint.get(CHECKPOINT_KEY, {})
        modality = saved.get("modality")
        mine = self.backbone.preprocess.modality
        if modality is not None and modality != mine:
            raise CheckpointError(
                f"the checkpoint holds a {modality} model ({saved.get('backbone')!r}) but this run builds a "
                f"{mine} model ({self.hparams.backbone!r}); resume with the checkpoint's backbone and data, or "
                "start a new run without ckpt_path"
            )
        self._check_shapes(checkpoint, saved)
        labels = saved.get("labels")
        if labels is not None and list(labels) != self.labels:
            raise CheckpointError(
                f"checkpoint was trained with labels {list(labels)} but this model has {self.labels}; "
                "build the model with the checkpoint's labels (TransferClassifier.load_from_checkpoint does)"
            )
        if saved.get("preprocess"):
            self._preprocess = preprocess_from_dict(saved["preprocess"], self.backbone.preprocess)
        self.data_settings = dict(saved.get("data") or {})

    def _check_shapes(self, checkpoint: dict[str, Any], saved: dict[str, Any]) -> None:
        """A checkpoint of another architecture is named as such, not as a list of key errors."""
        state = checkpoint.get("state_dict") or {}
        own = self.state_dict()
        missing = [k for k in own if k.startswith("backbone.") and k not in state]
        wrong = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
        if (missing or wrong) and state:
            example = (missing or wrong)[0]
            raise CheckpointError(
                f"the checkpoint's weights are for backbone {saved.get('backbone', '?')!r}, which does not fit this "
                f"model's {self.hparams.backbone!r} ({len(missing)} missing and {len(wrong)} differently shaped "
                f"tensors, e.g. {example!r}); resume with the checkpoint's backbone (backbone=...), or start a new "
                "run without ckpt_path"
            )

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Any,
        map_location: Any = None,
        hparams_file: str | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> TransferClassifier:
        """Rebuild a trained classifier from its checkpoint alone, in eval mode.

        Hugging Face backbones are rebuilt from the config and tokenizer stored in the checkpoint
        (unpacked once into ``$TL_LIGHTNING_CACHE``), so neither network nor the original folder is
        needed; the stored preprocessing (``max_length``, image size) is restored. Keyword
        arguments override saved hyperparameters, as in Lightning.

        Example:
            >>> model = TransferClassifier.load_from_checkpoint("run/checkpoints/last.ckpt")  # doctest: +SKIP
            >>> probs = model.predict_step(batch, 0)  # doctest: +SKIP
        """
        from tl_lightning.finetune.lora._checkpoint import adapter_base_kwargs

        checkpoint = read_checkpoint(checkpoint_path)
        saved = checkpoint.get(CHECKPOINT_KEY, {})
        rebuild = saved.get("backbone_rebuild")
        original_name = None
        # a LoRA checkpoint holds no base weights: they come from the pretrained source again
        base_kwargs = adapter_base_kwargs(checkpoint)
        for key, value in base_kwargs.items():
            kwargs.setdefault(key, value)
        if rebuild and "backbone" not in kwargs and not base_kwargs:
            folder = materialize_files(dict(rebuild["files"]))
            hparams = checkpoint.get(cls.CHECKPOINT_HYPER_PARAMS_KEY, {})
            original_name = hparams.get("backbone")
            kwargs["backbone"] = str(rebuild["name"]).format(folder=folder)
            kwargs["backbone_kwargs"] = {**dict(hparams.get("backbone_kwargs") or {}), **dict(rebuild.get("kwargs") or {})}
        del checkpoint
        kwargs.setdefault("weights_only", True)
        model = super().load_from_checkpoint(
            checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict, **kwargs
        )
        if original_name is not None:
            model.hparams.backbone = original_name
            model.backbone.name = original_name
        model.eval()
        return model


def _unpack(batch: Any, split: str) -> tuple[Any, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ConfigurationError(
        f"{split} batches must be (inputs, targets) pairs, got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )
