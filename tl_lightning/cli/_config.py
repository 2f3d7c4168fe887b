"""Locating the Hydra config tree and preparing OmegaConf before composition."""

from __future__ import annotations

from pathlib import Path

from tl_lightning.errors import ConfigurationError

__all__ = ["config_dir", "prepare_omegaconf"]

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def config_dir() -> Path:
    """The folder holding ``train.yaml`` and the config groups.

    A regular (wheel) install carries the configs inside the package as ``tl_lightning/conf``;
    an editable install (``pip install -e .``) uses the repository's top-level ``conf/``.

    Example:
        >>> (config_dir() / "train.yaml").is_file()
        True
    """
    candidates = [_PACKAGE_DIR / "conf", _PACKAGE_DIR.parent / "conf"]
    for candidate in candidates:
        if (candidate / "train.yaml").is_file():
            return candidate
    raise ConfigurationError(
        "tl_lightning's config folder was not found; looked in "
        + ", ".join(str(c) for c in candidates)
        + ". Reinstall the package (pip install tl-lightning, or pip install -e . in a checkout)."
    )


def prepare_omegaconf() -> None:
    """Register the resolvers the configs use (``${tl_asset:minilm}``, ...). Idempotent."""
    from tl_lightning.assets import register_resolvers

    register_resolvers()
