"""LoRA adapters added with Hugging Face PEFT to the backbone of any LightningModule, and merged back.

PEFT's ``inject_adapter_in_model`` replaces the targeted layers *in place* (``blocks.0.attn.qkv``
becomes a ``lora.Linear`` holding the original layer as ``base_layer``), so the backbone keeps its
class, its ``forward`` and the tl_lightning contract; only its layer groups are rebuilt to take
the adapter parameters in. ``get_peft_model`` would wrap the trunk in a ``PeftModel`` and hide the
model family from the grouping engine.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tl_lightning.backbones._base import Backbone
from tl_lightning.errors import ConfigurationError

__all__ = ["LoraAdapter", "adapter_parameters", "base_digest", "get_adapter", "inject_lora", "lora_init_seed", "merge_lora"]

#: where the adapter's description lives on the module it was added to (not a submodule, not state)
_ATTR = "_tl_lora_adapter"


@dataclass
class LoraAdapter:
    """What was added to a module: enough to add the same adapter again and to check its base.

    Attributes:
        root: Attribute path (from the LightningModule) of the module PEFT injected into: the
            deepest module holding every backbone layer group (``"backbone.model"``).
        target_modules: Names of the adapted layers, relative to ``root``.
        r: LoRA rank.
        alpha: LoRA alpha (the update is scaled by ``alpha / r``).
        dropout: Dropout on the adapter's input.
        base_digest: sha256 over the frozen base weights (names, dtypes, shapes, values),
            computed once when the adapter was added.
        base_keys: State-dict keys of the frozen base weights (what adapter checkpoints leave out).
        keep_trainable: Names (relative to ``root``) of weights under ``root`` that are not base
            weights: a head that lives inside the trunk (a timm model's own classifier).
    """

    root: str
    target_modules: tuple[str, ...]
    r: int
    alpha: float
    dropout: float
    base_digest: str
    base_keys: tuple[str, ...] = field(default=(), repr=False)
    keep_trainable: tuple[str, ...] = ()

    def config(self) -> dict[str, Any]:
        """Plain description (stored in checkpoints)."""
        return {
            "root": self.root,
            "target_modules": list(self.target_modules),
            "r": int(self.r),
            "alpha": float(self.alpha),
            "dropout": float(self.dropout),
        }


def get_adapter(pl_module: nn.Module) -> LoraAdapter | None:
    """The LoRA adapter added to ``pl_module`` by tl_lightning, if any."""
    return pl_module.__dict__.get(_ATTR)


def _tuner_layers(root: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in root.named_modules() if isinstance(m, BaseTunerLayer)]


def adapter_parameters(root: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of the adapter weights inside ``root`` (not their base layers')."""
    out = []
    for name, layer in _tuner_layers(root):
        base = {id(p) for p in layer.get_base_layer().parameters()}  # type: ignore[operator]
        out.extend((f"{name}.{n}", p) for n, p in layer.named_parameters() if id(p) not in base)
    return out


def _canonical(name: str) -> str:
    """A base weight's name as it was before PEFT moved its layer into ``base_layer``."""
    return name.replace(".base_layer.", ".").removeprefix("base_layer.")


def base_digest(root: nn.Module, exclude: Iterable[nn.Parameter] = ()) -> str:
    """sha256 over the weights of ``root`` that are not adapter weights (nor ``exclude``d).

    Names are taken as before the injection, so the digest is the same before and after an
    adapter is added; values are hashed in their dtype and standard (contiguous) layout.
    """
    skip = {id(p) for p in exclude} | {id(p) for _, p in adapter_parameters(root)}
    h = hashlib.sha256()
    for name, p in root.named_parameters():
        if id(p) in skip:
            continue
        t = p.detach()
        h.update(f"{_canonical(name)}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _exact(names: Sequence[str]) -> str:
    # PEFT matches a list by suffix ("0" would match every "*.0"); one regex is matched in full
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def inject_lora(
    pl_module: nn.Module,
    root: str,
    target_modules: Sequence[str],
    *,
    r: int,
    alpha: float,
    dropout: float,
    keep_trainable: Iterable[nn.Parameter] | Iterable[str] = (),
    seed: int | None = None,
) -> LoraAdapter:
    """Add a LoRA adapter to the layers ``target_modules`` of ``pl_module.<root>`` with PEFT.

    Everything under ``root`` is frozen except the adapter (PEFT's own rule) and
    ``keep_trainable`` (the head, when it lives under ``root``). tl_lightning backbones forget
    their cached layer groups, so the next ``layer_groups()`` includes the adapter weights.

    The adapter's random initialisation (PEFT's Kaiming-uniform ``A``; ``B`` starts at zero)
    draws from its own generator seeded with ``seed`` (see :func:`lora_init_seed`), not from the
    global one: every process of a DDP / FSDP run builds the same adapter, the same seed gives
    the same adapter whatever ran before, and the global random stream (data order,
    augmentation) is left as it was.

    Raises:
        ConfigurationError: PEFT cannot adapt one of the layers (an unsupported layer type).
    """
    from peft import LoraConfig, inject_adapter_in_model

    module = pl_module.get_submodule(root) if root else pl_module
    own = dict(module.named_parameters())
    keep = [own[k] if isinstance(k, str) else k for k in keep_trainable]
    keep_names = tuple(n for n, p in own.items() if any(p is k for k in keep))
    digest = base_digest(module, exclude=keep)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=_exact(target_modules), bias="none")
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(lora_init_seed(seed))
            inject_adapter_in_model(config, module)
    except (ValueError, TypeError, RuntimeError) as err:
        raise ConfigurationError(
            f"PEFT could not add LoRA to the target modules {list(target_modules)[:6]}"
            f"{' ...' if len(target_modules) > 6 else ''}: {err}. Fix: pass target_modules= naming Linear / Conv / "
            "Embedding layers"
        ) from err
    adapted = {n for n, _ in _tuner_layers(module)}
    missing = [n for n in target_modules if n not in adapted]
    if missing:
        raise ConfigurationError(f"PEFT did not adapt the target modules {missing[:6]}; pass Linear / Conv / Embedding layers")
    for p in keep:
        p.requires_grad_(True)
    for _, p in adapter_parameters(module):
        p.requires_grad_(True)
    skip = {id(p) for p in keep} | {id(p) for _, p in adapter_parameters(module)}
    prefix = f"{root}." if root else ""
    base_keys = tuple(
        prefix + n for n, p in module.named_parameters(remove_duplicate=False) if id(p) not in skip
    )
    adapter = LoraAdapter(
        root, tuple(target_modules), int(r), float(alpha), float(dropout), digest, base_keys, keep_names
    )
    pl_module.__dict__[_ATTR] = adapter
    reset_layer_groups(pl_module)
    return adapter


def lora_init_seed(seed: int | None = None) -> int:
    """The seed of a LoRA adapter's initialisation: ``seed``, else the run's global seed, else 0.

    The run's global seed is what ``lightning.seed_everything`` (and ``tl-train``'s ``seed=``) set
    in ``PL_GLOBAL_SEED``, which Lightning passes on to every process it launches.

    Example:
        >>> lora_init_seed(7)
        7
    """
    if seed is not None:
        return int(seed)
    env = os.environ.get("PL_GLOBAL_SEED", "")
    return int(env) if env.lstrip("-").isdigit() else 0


def reset_layer_groups(pl_module: nn.Module) -> None:
    """Every tl_lightning backbone under ``pl_module`` rebuilds its layer groups on next use."""
    for mod in pl_module.modules():
        if isinstance(mod, Backbone):
            mod.reset_layer_groups()


def merge_lora(pl_module: nn.Module) -> nn.Module:
    """Merge the LoRA adapter into the base weights and remove it: plain layers again, for export.

    Each adapted layer's weight becomes ``W + (alpha / r) * B @ A`` (PEFT's ``merge``) and the
    layer replaces its LoRA wrapper, so the module has the architecture it had before the
    adapter was added (and the logits it computed with the adapter, up to float rounding). The
    merged weights stay frozen (``requires_grad=False``) as the base was. Returns ``pl_module``.

    Example:
        >>> model = TransferClassifier.load_from_checkpoint("lora.ckpt")  # doctest: +SKIP
        >>> merge_lora(model)  # doctest: +SKIP
        >>> export(model, "exported/onnx", format="onnx")  # doctest: +SKIP

    Raises:
        ConfigurationError: ``pl_module`` has no LoRA adapter.
    """
    adapter = get_adapter(pl_module)
    if adapter is None:
        raise ConfigurationError(
            f"{type(pl_module).__name__} has no LoRA adapter to merge; add one with LoRA(...) / add_lora(...) or load "
            "a LoRA checkpoint"
        )
    root = pl_module.get_submodule(adapter.root) if adapter.root else pl_module
    with torch.no_grad():
        for name, layer in _tuner_layers(root):
            layer.merge()  # type: ignore[operator]
            parent = root.get_submodule(name.rpartition(".")[0]) if "." in name else root
            setattr(parent, name.rpartition(".")[2], layer.get_base_layer())  # type: ignore[operator]
    root.__dict__.pop("peft_config", None)
    pl_module.__dict__.pop(_ATTR, None)
    reset_layer_groups(pl_module)
    return pl_module
