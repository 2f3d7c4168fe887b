"""The backbone adapter contract, checked on every registered family, plus names, offline
errors and the grouping of plain modules (``layer_groups_for_module``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from torch import nn

from tl_lightning.backbones import (
    Backbone,
    ImagePreprocess,
    TextPreprocess,
    check_layer_groups,
    create_backbone,
    layer_groups_for_module,
    layer_groups_from_patterns,
)
from tl_lightning.backbones._registry import _BUILTIN_FAMILY_MODULES
from tl_lightning.errors import LayerGroupError, UnknownNameError, WeightsUnavailableError


def _images(size: int) -> Callable[[Backbone], torch.Tensor]:
    return lambda bb: torch.randn(2, 3, size, size)


def _texts(bb: Backbone) -> dict[str, torch.Tensor]:
    return bb.preprocess(["a good movie", "the plot was boring and the actor awful"])


# (name, kwargs, input builder, expected preprocess type); "{tiny_bert}" / "{tiny_vit}" are
# filled with the local folders from conftest.
CASES: list[tuple[str, dict[str, Any], Callable[[Backbone], Any], type]] = [
    ("timm:test_resnet", {}, _images(32), ImagePreprocess),
    ("timm:test_vit", {}, _images(160), ImagePreprocess),
    ("timm:test_efficientnet", {}, _images(32), ImagePreprocess),
    ("timm:test_convnext", {}, _images(32), ImagePreprocess),
    ("tv:resnet18", {}, _images(32), ImagePreprocess),
    ("tv:mobilenet_v3_small", {}, _images(32), ImagePreprocess),
    ("tv:efficientnet_b0", {}, _images(32), ImagePreprocess),
    ("tv:convnext_tiny", {}, _images(32), ImagePreprocess),
    ("tv:vit_b_16", {"image_size": 32}, _images(32), ImagePreprocess),
    ("hf:{tiny_bert}", {}, _texts, TextPreprocess),
    ("hf:{tiny_bert}", {"pooling": "mean"}, _texts, TextPreprocess),
    ("hf:{tiny_vit}", {}, _images(32), ImagePreprocess),
]


def _case_id(case: tuple) -> str:
    name, kwargs = case[0], case[1]
    return name.replace("{", "").replace("}", "") + ("-" + "-".join(f"{k}={v}" for k, v in kwargs.items()) if kwargs else "")


def test_cases_cover_every_builtin_family() -> None:
    assert {c[0].split(":")[0] for c in CASES} >= set(_BUILTIN_FAMILY_MODULES)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_backbone_contract(case: tuple, tiny_bert_dir: Path, tiny_vit_dir: Path) -> None:
    name, kwargs, make_input, preprocess_type = case
    name = name.format(tiny_bert=tiny_bert_dir, tiny_vit=tiny_vit_dir)
    bb = create_backbone(name, pretrained=False, **kwargs)

    assert isinstance(bb, Backbone)
    assert bb.name == name
    assert isinstance(bb.preprocess, preprocess_type)
    groups = bb.layer_groups()
    check_layer_groups(bb, groups)
    assert len(groups) >= 2, "a backbone needs at least two groups to be unfrozen gradually"
    names = [g.name for g in groups]
    assert all(names) and len(set(names)) == len(names)
    grouped = [id(p) for g in groups for p in g.parameters()]
    assert len(grouped) == len(set(grouped)) == len(list(bb.parameters()))
    for g in groups:  # modules attached to a group hold only that group's parameters
        ids = {id(p) for p in g.parameters()}
        for _, mod in g.modules:
            assert {id(p) for p in mod.parameters()} <= ids

    bb.train()
    x = make_input(bb)
    feats = bb.forward_features(x)
    assert feats.ndim == 2 and feats.shape == (2, bb.feature_dim)
    assert torch.isfinite(feats).all()
    (feats * torch.randn_like(feats)).sum().backward()
    no_grad = [n for n, p in bb.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert any(p.grad.abs().sum() > 0 for p in groups[0].parameters()), "gradient does not reach the first group"


def test_hf_pooling_auto_is_cls_for_plain_folder_and_mean_differs(tiny_bert_dir: Path) -> None:
    cls = create_backbone(f"hf:{tiny_bert_dir}", pretrained=True)
    mean = create_backbone(f"hf:{tiny_bert_dir}", pretrained=True, pooling="mean")
    assert cls.pooling == "cls" and mean.pooling == "mean"
    batch = cls.preprocess(["a good movie", "bad"])
    with torch.no_grad():
        hidden = cls.model(**batch).last_hidden_state
        f_cls, f_mean = cls.forward_features(batch), mean.forward_features(batch)
    torch.testing.assert_close(f_cls, hidden[:, 0])
    # the padded second sentence must ignore its padding tokens
    n = int(batch["attention_mask"][1].sum())
    torch.testing.assert_close(f_mean[1], hidden[1, :n].mean(0))
    assert not hasattr(cls.model, "pooler") or cls.model.pooler is None


def test_hf_pretrained_folder_loads_its_weights(tiny_bert_dir: Path) -> None:
    from transformers import BertModel

    bb = create_backbone(f"hf:{tiny_bert_dir}")
    ref = BertModel.from_pretrained(tiny_bert_dir)
    torch.testing.assert_close(bb.model.embeddings.word_embeddings.weight, ref.embeddings.word_embeddings.weight)
    assert bb.pretrained_source is not None
    assert bb.preprocess.max_length == 128


def test_tv_preprocess_comes_from_weights_enum() -> None:
    bb = create_backbone("tv:efficientnet_b0", pretrained=False)
    t = torchvision.models.EfficientNet_B0_Weights.DEFAULT.transforms()
    assert bb.preprocess.image_size == (t.crop_size[0], t.crop_size[0])
    assert bb.preprocess.interpolation == "bicubic"
    assert bb.preprocess.crop_pct == pytest.approx(t.crop_size[0] / t.resize_size[0])
    assert bb.preprocess.mean == tuple(t.mean)


# -- names and offline errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("timm:resnt50", "resnet50"), ("tv:resnet5", "resnet50"), ("tvv:resnet18", "'tv'"), ("hfx:bert", "'hf'")],
)
def test_unknown_names_list_closest_matches(name: str, expected: str) -> None:
    with pytest.raises(UnknownNameError, match=expected):
        create_backbone(name, pretrained=False)


def test_unknown_tv_weights_name_lists_choices() -> None:
    with pytest.raises(UnknownNameError, match="IMAGENET1K_V1"):
        create_backbone("tv:resnet18", weights="IMAGENET1K_V9")


def test_timm_hub_weights_offline_raise() -> None:
    with pytest.raises(WeightsUnavailableError, match="pretrained=False"):
        create_backbone("timm:test_resnet", pretrained=True)


def test_tv_download_failure_raises_not_random_init(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import torchvision.models._api as tv_api

    def no_network(url: str, *args: Any, **kwargs: Any) -> Any:
        raise urllib.error.URLError(f"no network for {url}")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsUnavailableError, match="(?s)resnet18.IMAGENET1K_V1.*local checkpoint file"):
        create_backbone("tv:resnet18", pretrained=True)


def test_hf_hub_id_offline_raises() -> None:
    with pytest.raises(WeightsUnavailableError, match="(?s)bert-base-uncased.*local folder"):
        create_backbone("hf:bert-base-uncased")


def test_hf_missing_local_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        create_backbone(f"hf:{tmp_path / 'nope'}")


def test_hf_checkpoint_of_other_architecture_is_refused(tiny_bert_dir: Path, tmp_path: Path) -> None:
    # weights folder whose config says BERT but whose weights are a different (bigger) BERT
    from transformers import BertConfig, BertModel

    other = BertModel(BertConfig(vocab_size=90, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32))
    other.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((tiny_bert_dir / "config.json").read_text())
    with pytest.raises((WeightsUnavailableError, RuntimeError)):
        create_backbone(f"hf:{tiny_bert_dir}", weights=str(tmp_path))


# -- grouping plain modules --------------------------------------------------------------


def test_auto_groups_plain_torchvision_resnet_with_prefix() -> None:
    net = torchvision.models.resnet18()
    groups = layer_groups_for_module(net, prefix="model")
    assert [g.name for g in groups] == ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert groups[0].params[0][0] == "model.conv1.weight"
    assert [m for m, _ in groups[1].modules] == ["model.layer1"]
    assert sum(len(g.params) for g in groups) == len(list(net.parameters()))


def test_auto_groups_timm_model_like_the_adapter() -> None:
    net = timm.create_model("test_resnet", num_classes=0)
    bb = create_backbone("timm:test_resnet", pretrained=False)
    groups = layer_groups_for_module(net)
    assert [g.name for g in groups] == bb.layer_group_names()
    assert [n for n, _ in groups[0].params] == [n.removeprefix("model.") for n, _ in bb.layer_groups()[0].params]


def test_auto_groups_hf_model() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32)
    groups = layer_groups_for_module(BertForSequenceClassification(cfg))
    assert [g.name for g in groups] == [
        "embeddings",
        "bert.encoder.layer.0",
        "bert.encoder.layer.1",
        "bert.encoder.layer.2",
        "bert.pooler",
        "classifier",
    ]


def test_auto_groups_custom_modules() -> None:
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    seq(torch.randn(1, 3, 8, 8))
    assert [g.name for g in layer_groups_for_module(seq)] == ["0", "1", "4"]

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.temperature = nn.Parameter(torch.ones(1))
            self.backbone = create_backbone("tv:resnet18", pretrained=False)
            self.head = nn.Linear(512, 3)

    model = Classifier()
    groups = layer_groups_for_module(model)
    assert [g.name for g in groups] == ["temperature", "stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert groups[1].params[0][0] == "backbone.model.conv1.weight"
    check_layer_groups(model, groups)


def test_auto_groups_split_a_dominant_container() -> None:
    trunk = nn.Sequential(*(nn.Linear(16, 16) for _ in range(3)))
    model = nn.Module()
    model.trunk = trunk
    model.head = nn.Linear(16, 2)
    assert [g.name for g in layer_groups_for_module(model)] == ["trunk.0", "trunk.1", "trunk.2", "head"]


def test_auto_groups_reject_parameterless_module() -> None:
    with pytest.raises(LayerGroupError, match="no parameters"):
        layer_groups_for_module(nn.ReLU())


def test_layer_groups_from_patterns() -> None:
    net = torchvision.models.resnet18()
    groups = layer_groups_from_patterns(
        net, [("early", r"^(conv1|bn1|layer1)\."), ("mid", r"^layer[23]\."), ("late", r"^layer4\.")], rest="head",
        prefix="net",
    )
    assert [g.name for g in groups] == ["early", "mid", "late", "head"]
    assert [n for n, _ in groups[-1].params] == ["net.fc.weight", "net.fc.bias"]
    assert groups[0].params[0][0] == "net.conv1.weight"

    with pytest.raises(LayerGroupError, match=r"fc\.weight"):
        layer_groups_from_patterns(net, {"trunk": r"^(conv1|bn1|layer\d)\."})
    with pytest.raises(LayerGroupError, match="match no parameter"):
        layer_groups_from_patterns(net, {"trunk": r"^layer", "typo": r"^lyer9"}, rest="rest")
    # first match wins: layer1 parameters go to "a" even though "b" matches them too
    g = layer_groups_from_patterns(net, {"a": r"^layer1\.", "b": r"^layer"}, rest="rest")
    assert all(n.startswith("layer1.") for n, _ in g[0].params)
    assert not any(n.startswith("layer1.") for n, _ in g[1].params)
