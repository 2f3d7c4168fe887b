"""Optimizer / scheduler partials <-> plain, YAML-able specs.

A ``functools.partial`` cannot be stored in a checkpoint that loads with torch's default
``weights_only=True``; its plain description can: ``{"_target_": "torch.optim.adamw.AdamW",
"betas": [0.9, 0.999]}`` (Hydra's own ``_target_`` convention). Modules store the spec in their
hyperparameters so ``load_from_checkpoint`` rebuilds the same optimizer and schedule.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from tl_lightning.errors import ConfigurationError

__all__ = ["partial_to_spec", "spec_to_partial"]

_PLAIN = (str, int, float, bool, type(None))


def _is_plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _qualified_name(fn: Callable[..., Any]) -> str | None:
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname:  # lambdas and local functions
        return None
    return f"{module}.{qualname}"


def partial_to_spec(fn: Callable[..., Any] | None) -> dict[str, Any] | None:
    """``partial(AdamW, betas=(0.9, 0.99))`` -> ``{"_target_": "torch.optim.adamw.AdamW", "betas": [0.9, 0.99]}``.

    Returns ``None`` for ``None`` and for callables that cannot be described by an importable
    name and plain keyword arguments (lambdas, positional arguments, tensors as arguments).

    Example:
        >>> import torch
        >>> partial_to_spec(functools.partial(torch.optim.SGD, momentum=0.9))
        {'_target_': 'torch.optim.sgd.SGD', 'momentum': 0.9}
    """
    if fn is None:
        return None
    func, keywords = fn, {}
    if isinstance(fn, functools.partial):
        if fn.args:
            return None
        func, keywords = fn.func, dict(fn.keywords)
    target = _qualified_name(func)
    if target is None or "_target_" in keywords or not _is_plain(keywords):
        return None
    try:
        if _import(target) is not func:
            return None
    except ConfigurationError:
        return None
    return {"_target_": target, **_plain(keywords)}


def _import(target: str) -> Any:
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module_name, attr_path = ".".join(parts[:i]), parts[i:]
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        try:
            for attr in attr_path:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise ConfigurationError(f"cannot import {target!r}; give an importable dotted name such as 'torch.optim.AdamW'")


def spec_to_partial(spec: Mapping[str, Any] | Callable[..., Any] | None) -> Callable[..., Any] | None:
    """Inverse of :func:`partial_to_spec`; callables pass through unchanged.

    Also accepts Hydra-style specs written by hand (``{"_target_": "torch.optim.SGD",
    "_partial_": true, "momentum": 0.9}``).
    """
    if spec is None or callable(spec):
        return spec
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise ConfigurationError(
            f"expected a callable (functools.partial, Hydra `_partial_: true`) or a mapping with "
            f"'_target_', got {spec!r}"
        )
    kwargs = {k: v for k, v in spec.items() if k not in ("_target_", "_partial_")}
    target = _import(str(spec["_target_"]))
    if not callable(target):
        raise ConfigurationError(f"{spec['_target_']!r} is not callable")
    return functools.partial(target, **kwargs)
