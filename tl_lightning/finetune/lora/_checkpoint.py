"""LoRA checkpoints: the adapter, the head and a digest of the base weights, not the base itself.

Saving (:func:`save_adapter`) drops the frozen base weights from ``checkpoint["state_dict"]`` and
records, under :data:`ADAPTER_KEY`, the adapter's configuration, the sha256 digest of the base
and where the base came from. Loading (:func:`restore_adapter`, called from the module's
``on_load_checkpoint``, which Lightning runs before it loads the state dict, both when a Trainer
resumes and in ``load_from_checkpoint``) adds the same adapter when the module has none yet,
checks that the module's base has the recorded digest and puts the module's own base weights
back into the state dict, so strict loading finds every key.

A base that cannot be had again (a tl_lightning backbone built with ``pretrained=False``: random
weights) stays in the checkpoint.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tl_lightning.backbones._base import Backbone
from tl_lightning.errors import CheckpointError
from tl_lightning.finetune.lora._adapter import LoraAdapter, get_adapter, inject_lora

__all__ = ["ADAPTER_KEY", "save_adapter", "restore_adapter", "adapter_base_kwargs"]

#: checkpoint key of the adapter record
ADAPTER_KEY = "tl_lightning_lora"


def _base_backbone(pl_module: nn.Module, root: str) -> Backbone | None:
    """The tl_lightning backbone the adapter's root belongs to (``backbone`` for ``backbone.model``)."""
    for name, mod in pl_module.named_modules():
        if isinstance(mod, Backbone) and (root == name or root.startswith(name + ".") or name == ""):
            return mod
    return None


def save_adapter(pl_module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Leave the frozen base weights out of ``checkpoint`` and record the adapter (no-op without one).

    Idempotent: the callback and :class:`~tl_lightning.TransferClassifier` may both call it.
    """
    adapter = get_adapter(pl_module)
    if adapter is None or ADAPTER_KEY in checkpoint:
        return
    backbone = _base_backbone(pl_module, adapter.root)
    source = backbone.pretrained_source if backbone is not None else None
    # random-init tl backbones cannot rebuild their base: keep it; users' own modules rebuild theirs
    stored = backbone is not None and source is None
    state = checkpoint.get("state_dict")
    if not stored and isinstance(state, dict):
        for key in adapter.base_keys:
            state.pop(key, None)
    hparams = getattr(pl_module, "hparams", None) or {}
    try:
        import peft

        version = str(peft.__version__)
    except ImportError:  # pragma: no cover - peft is a dependency
        version = "?"
    checkpoint[ADAPTER_KEY] = {
        "method": "lora",
        **adapter.config(),
        "keep_trainable": list(adapter.keep_trainable),
        "base_digest": adapter.base_digest,
        "base_stored": bool(stored),
        "base": {
            "pretrained_source": source,
            "pretrained": hparams.get("pretrained") if hasattr(hparams, "get") else None,
            "weights": hparams.get("weights") if hasattr(hparams, "get") else None,
        },
        "peft_version": version,
    }


def _same_config(adapter: LoraAdapter, record: dict[str, Any]) -> list[str]:
    mine = adapter.config()
    return [f"{k}: checkpoint {record.get(k)!r}, model {mine[k]!r}" for k in mine if record.get(k) != mine[k]]


def restore_adapter(pl_module: nn.Module, checkpoint: dict[str, Any]) -> LoraAdapter | None:
    """Prepare ``pl_module`` to load a LoRA ``checkpoint``: same adapter, same base, complete state dict.

    No-op for a checkpoint without an adapter record (a weights-only checkpoint of a module with
    an adapter holds every weight). Idempotent.

    Raises:
        CheckpointError: the module already has an adapter of another configuration, its base
            weights differ from the ones the adapter was trained on (both digests named), or it
            has an adapter and the checkpoint none at all.
    """
    record = checkpoint.get(ADAPTER_KEY)
    adapter = get_adapter(pl_module)
    if not record:
        state = checkpoint.get("state_dict")
        if adapter is not None and isinstance(state, dict) and state and not any(".lora_" in k for k in state):
            raise CheckpointError(
                "this checkpoint has no LoRA adapter (a checkpoint of full fine-tuning or another strategy?) but the "
                "model has one. Fix: resume it with the strategy it was trained with (not finetune=lora), or start "
                "a new LoRA run from the pretrained backbone without ckpt_path"
            )
        return None
    if adapter is None:
        root = str(record["root"])
        try:
            pl_module.get_submodule(root) if root else pl_module
        except AttributeError as err:
            raise CheckpointError(
                f"this LoRA checkpoint adapts {type(pl_module).__name__}.{root}, which this module does not have; load "
                "it into the architecture it was trained with"
            ) from err
        adapter = inject_lora(
            pl_module,
            root,
            [str(t) for t in record["target_modules"]],
            r=int(record["r"]),
            alpha=float(record["alpha"]),
            dropout=float(record["dropout"]),
            keep_trainable=[str(k) for k in record.get("keep_trainable") or ()],
        )
    else:
        differ = _same_config(adapter, record)
        if differ:
            raise CheckpointError(
                "the checkpoint's LoRA adapter differs from this model's (" + "; ".join(differ) + "). Fix: resume with "
                "the checkpoint's LoRA settings (finetune.r / alpha / dropout / target_modules), or start a new run"
            )
    state = checkpoint.get("state_dict")
    if record.get("base_stored") or not isinstance(state, dict):
        return adapter
    saved = str(record.get("base_digest"))
    if saved != adapter.base_digest:
        base = record.get("base") or {}
        source = base.get("pretrained_source") or base.get("weights")
        raise CheckpointError(
            f"this LoRA checkpoint was trained on base weights with digest {saved[:16]}... but the model's base weights "
            f"have digest {adapter.base_digest[:16]}...: a different base. The checkpoint holds only the adapter and the "
            f"head, so it needs the exact weights it was trained on"
            + (f" ({source})" if source else "")
            + ". Fix: build the model from that pretrained source (backbone / weights), not another one or a random init"
        )
    missing = [k for k in adapter.base_keys if k not in state]
    if missing:
        own = pl_module.state_dict()
        for key in missing:
            state[key] = own[key]
    return adapter


def adapter_base_kwargs(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments that rebuild a LoRA checkpoint's base from its pretrained source.

    A full checkpoint holds every weight, so its module is rebuilt with ``pretrained=False``; an
    adapter checkpoint does not hold the base, which must come from where it came from when the
    adapter was trained. Empty for other checkpoints.
    """
    record = checkpoint.get(ADAPTER_KEY)
    if not record or record.get("base_stored"):
        return {}
    base = record.get("base") or {}
    if base.get("pretrained") is None:
        return {}
    return {"pretrained": True, "weights": base.get("weights")}
