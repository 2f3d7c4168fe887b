"""The one grouping engine: family declarations (groups, head, no weight decay) through the registry,
readable names for wrapped trunks, the layer-group table, and an import graph without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

from tl_lightning import TransferClassifier, describe_layer_groups
from tl_lightning.backbones import (
    LayerSpec,
    build_layer_groups,
    create_backbone,
    layer_groups_for_module,
    register_layer_spec,
)
from tl_lightning.backbones import _registry
from tl_lightning.errors import ConfigurationError, UnknownNameError
from tl_lightning.optim import layerwise_param_groups

PACKAGE = Path(__file__).resolve().parent.parent / "tl_lightning"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """tl_lightning modules imported anywhere in the file (module level and inside functions)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    # imports under `if TYPE_CHECKING:` never run: annotations only
    type_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("tl_lightning"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("tl_lightning"):
                out.add(mod)
                # `from pkg import submodule` imports the submodule
                out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def test_package_import_graph_has_no_cycles() -> None:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in _imports(path, name) if m in files and m != name} for name, path in files.items()}
    # package __init__ files only re-export; an edge into a package is an edge to what it re-exports
    # (its own edges), so cycles through __init__ re-exports are real cycles too.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


# -- family declarations ---------------------------------------------------------------------


def test_timm_vit_weight_decay_follows_the_models_declaration() -> None:
    """The patch-embedding conv kernel decays; pos_embed / cls_token (timm's no_weight_decay()) and 1-d do not."""
    bb = create_backbone("timm:test_vit", pretrained=False)
    stem = bb.layer_groups()[0]
    assert "model.patch_embed.proj.weight" not in stem.no_weight_decay
    assert {"model.pos_embed", "model.cls_token", "model.patch_embed.proj.bias"} <= stem.no_weight_decay
    groups = layerwise_param_groups(bb.layer_groups(), base_lr=1e-3, weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    kernel = dict(bb.named_parameters())["model.patch_embed.proj.weight"]
    assert any(p is kernel for p in by_name["stem"]["params"]) and by_name["stem"]["weight_decay"] == 0.05
    assert all(p.ndim <= 1 or p is bb.model.pos_embed or p is bb.model.cls_token for p in by_name["stem/no_decay"]["params"])


def test_hf_weight_decay_is_the_transformers_trainer_rule(tiny_bert_dir: Path) -> None:
    """Biases and LayerNorm take no decay; the word embeddings do (as in transformers' Trainer)."""
    bb = create_backbone(f"hf:{tiny_bert_dir}", pretrained=False)
    emb = bb.layer_groups()[0]
    assert "model.embeddings.word_embeddings.weight" not in emb.no_weight_decay
    assert "model.embeddings.LayerNorm.weight" in emb.no_weight_decay


def test_head_comes_from_the_family_declaration() -> None:
    vit = layer_groups_for_module(timm.create_model("test_vit", num_classes=4))
    assert [g.name for g in vit if g.is_head] == ["head"]
    mobilenet = layer_groups_for_module(torchvision.models.mobilenet_v3_small())
    assert [(g.name, g.is_head) for g in mobilenet][-2:] == [("classifier", False), ("classifier.3", True)]
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    bert = layer_groups_for_module(BertForSequenceClassification(cfg))
    assert [g.name for g in bert if g.is_head] == ["classifier"]
    assert not layer_groups_for_module(timm.create_model("test_vit", num_classes=0))[-1].is_head


def test_a_users_family_takes_part_in_grouping_any_module() -> None:
    class XrayNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.out = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def spec(module: nn.Module) -> LayerSpec | None:
        if not isinstance(module, XrayNet):
            return None
        return LayerSpec([("early", ["a.weight", "a.bias"]), ("late", ["b.weight", "b.bias"])], head=["out"])

    register_layer_spec("xray-test", spec)
    try:
        holder = nn.Module()
        holder.net = XrayNet()
        holder.extra = nn.Linear(2, 2)
        groups = layer_groups_for_module(holder)
        # the declared head is the last group, named by its path
        assert [(g.name, g.is_head) for g in groups] == [("early", False), ("late", False), ("extra", False), ("net.out", True)]
        assert groups[0].params[0][0] == "net.a.weight"
    finally:
        _registry._FAMILIES.pop("xray-test")


def test_engine_makes_names_unique_and_derives_missing_ones() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    groups = build_layer_groups(net, LayerSpec([("x", ["0.weight", "0.bias"]), ("x", ["1.weight"]), (None, ["1.bias"])]))
    assert [g.name for g in groups] == ["x", "x_2", "1"]


# -- readable names and announced splits -------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: torchvision.models.resnet18(), lambda: timm.create_model("resnet18")])
def test_resnet_unpacked_into_sequential_gets_resnet_names(make) -> None:
    trunk = nn.Sequential(*list(make().children())[:-1])  # Lightning's official fine-tuning example does this
    groups = layer_groups_for_module(trunk)
    assert [g.name for g in groups] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert [m for m, _ in groups[1].modules] == ["4"]
    whole = layer_groups_for_module(nn.Sequential(*list(make().children())))
    assert [(g.name, g.is_head) for g in whole][-1] == ("fc", True)


def test_describe_table_shows_state_lr_norms_and_announces_splits() -> None:
    model = TransferClassifier("timm:test_resnet", num_classes=3, pretrained=False, lr=0.01, layer_decay=0.5)
    for p in model.backbone.layer_groups()[0].parameters():
        p.requires_grad_(False)
    table = describe_layer_groups(model)
    rows = table.rows
    assert [r["name"] for r in rows][:5] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert rows[0]["state"] == "frozen" and rows[1]["state"] == "trainable"
    assert rows[4]["lr"] == "0.01" and rows[3]["lr"] == "0.005"
    assert "BatchNorm2d" in rows[0]["norms"]
    assert rows[-1]["index"] is None and "head" in rows[-1]["name"]
    text = str(table)
    assert "stem" in text and "frozen" in text and "-1 = top" in text

    split = nn.Module()
    split.trunk = nn.Sequential(*(nn.Linear(16, 16) for _ in range(3)))
    split.out = nn.Linear(16, 2)
    table = describe_layer_groups(split, groups=None)
    assert table.names()[:3] == ["trunk.0", "trunk.1", "trunk.2"]
    assert any("split into its 3 blocks" in n for n in table.notes)
    assert "note: 'trunk' holds" in str(table)


# -- one-line errors of the adapters ---------------------------------------------------------


def test_unknown_backbone_kwargs_name_the_valid_ones(tiny_bert_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"does not take pooling='mean' \(pooling is an option of hf"):
        create_backbone("timm:test_resnet", pretrained=False, pooling="mean")
    with pytest.raises(ConfigurationError, match="torchvision model 'resnet18' does not take"):
        create_backbone("tv:resnet18", pretrained=False, pooling="mean")


def test_unknown_timm_tag_lists_the_valid_tags() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown pretrained tag 'nope'.*a1_in1k"):
        create_backbone("timm:resnet50", weights="nope")


def test_preprocess_is_plain_data() -> None:
    """Transforms are built in tl_lightning.data; the backbone contract carries only data."""
    from dataclasses import asdict

    pre = create_backbone("timm:test_resnet", pretrained=False).preprocess
    assert not hasattr(pre, "eval_transform")
    assert asdict(pre)["input_size"] == pre.input_size


def test_lr_arguments_share_one_check() -> None:
    from tl_lightning.callbacks import LayerwiseLRDecay
    from tl_lightning.optim import apply_layerwise_lr_decay

    net = nn.Linear(2, 2)
    groups = layer_groups_for_module(nn.Sequential(net))
    for call in (
        lambda: layerwise_param_groups(groups, base_lr=float("nan")),
        lambda: apply_layerwise_lr_decay(torch.optim.SGD(net.parameters(), lr=0.1), groups, decay=float("nan")),
        lambda: LayerwiseLRDecay(decay=float("inf")),
        lambda: TransferClassifier("timm:test_resnet", num_classes=2, pretrained=False, lr=float("nan")),
    ):
        with pytest.raises(ConfigurationError, match="must be a finite number"):
            call()
