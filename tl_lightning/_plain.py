"""OmegaConf containers -> plain Python.

Hydra passes nested config values as ``DictConfig`` / ``ListConfig``; hyperparameters saved in
checkpoints must be plain so they load with torch's ``weights_only=True`` and dump to YAML.
"""

from __future__ import annotations

from typing import Any

from omegaconf import Container, OmegaConf


def to_plain(value: Any) -> Any:
    """``OmegaConf.to_container(value, resolve=True)`` for containers; anything else unchanged."""
    if isinstance(value, Container):
        return OmegaConf.to_container(value, resolve=True)
    return value
