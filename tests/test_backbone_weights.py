"""Local checkpoint files with regex key maps: strict loading and clear reports of bad maps."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision

from tl_lightning.backbones import create_backbone, load_weights, rename_keys
from tl_lightning.backbones.key_maps import efficientnet_lite_to_timm
from tl_lightning.errors import ConfigurationError, WeightsUnavailableError


@pytest.fixture(scope="module")
def tv_resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision resnet18 checkpoint saved by 'other code' under a ``net.`` prefix, classifier included."""
    torch.manual_seed(1)
    sd = torchvision.models.resnet18().state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "resnet18_other.pth"
    torch.save({"state_dict": {f"net.{k}": v for k, v in sd.items()}}, path)
    return path, sd


def test_tv_local_file_with_key_map_loads_strictly(tv_resnet18_file: tuple[Path, dict]) -> None:
    path, sd = tv_resnet18_file
    bb = create_backbone("tv:resnet18", weights=str(path), key_map=[(r"^net\.", "")])
    assert bb.pretrained_source == str(path)
    torch.testing.assert_close(bb.model.conv1.weight, sd["conv1.weight"])
    torch.testing.assert_close(bb.model.layer4[1].bn2.running_var, sd["layer4.1.bn2.running_var"])


def test_tv_wrong_key_map_reports_missing_and_unexpected(tv_resnet18_file: tuple[Path, dict]) -> None:
    path, _ = tv_resnet18_file
    with pytest.raises(WeightsUnavailableError, match=r"(?s)missing.*conv1\.weight.*unexpected.*net\.conv1\.weight"):
        create_backbone("tv:resnet18", weights=str(path))
    with pytest.raises(WeightsUnavailableError, match=r"(?s)missing.*layer1.*key_map"):
        create_backbone("tv:resnet18", weights=str(path), key_map=[(r"^net\.", ""), (r"^layer1\.", None)])


def test_tv_missing_weights_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_backbone("tv:resnet18", weights=str(tmp_path / "nope.pth"))


def test_timm_local_file_with_key_map_and_shape_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(2)
    src = timm.create_model("test_resnet", num_classes=0)
    path = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({f"backbone.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(path))
    bb = create_backbone("timm:test_resnet", weights=str(path), key_map={r"^backbone\.": ""})
    torch.testing.assert_close(bb.model.conv1[0].weight, src.conv1[0].weight)
    # a tensor of the wrong shape is reported, not half-loaded
    bad = dict(src.state_dict())
    bad["conv1.0.weight"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsUnavailableError, match=r"1 shape mismatches.*conv1\.0\.weight"):
        create_backbone("timm:test_resnet", weights=str(tmp_path / "bad.pth"))


def test_hf_weights_file_with_key_map(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from transformers import BertModel

    ref = BertModel.from_pretrained(tiny_bert_dir, add_pooling_layer=False)
    torch.save({f"encoder_model.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "bert.pt")
    bb = create_backbone(f"hf:{tiny_bert_dir}", weights=str(tmp_path / "bert.pt"), key_map=[(r"^encoder_model\.", "")])
    torch.testing.assert_close(bb.model.encoder.layer[1].output.dense.weight, ref.encoder.layer[1].output.dense.weight)
    with pytest.raises(WeightsUnavailableError, match="missing"):
        create_backbone(f"hf:{tiny_bert_dir}", weights=str(tmp_path / "bert.pt"))


def test_efficientnet_lite_key_map_shape() -> None:
    rules = efficientnet_lite_to_timm()
    renamed = rename_keys(
        {
            "_blocks.0._depthwise_conv.weight": 0,
            "_blocks.1._expand_conv.weight": 1,
            "_blocks.2._bn0.running_mean": 2,
            "_blocks.3._bn1.weight": 3,
            "_blocks.15._project_conv.weight": 4,
            "_bn0.bias": 5,
            "_bn1.num_batches_tracked": 6,
            "_fc.weight": 7,
        },
        rules,
    )
    assert renamed == {
        "blocks.0.0.conv_dw.weight": 0,
        "blocks.1.0.conv_pw.weight": 1,
        "blocks.1.1.bn1.running_mean": 2,
        "blocks.2.0.bn2.weight": 3,
        "blocks.6.0.conv_pwl.weight": 4,
        "bn1.bias": 5,
        "bn2.num_batches_tracked": 6,
    }
    assert rename_keys({"_fc.bias": 1}, efficientnet_lite_to_timm(keep_classifier=True)) == {"classifier.bias": 1}
    with pytest.raises(ConfigurationError):
        efficientnet_lite_to_timm(stage_repeats=(1, 0))


def test_load_weights_into_raw_model(tv_resnet18_file: tuple[Path, dict]) -> None:
    path, sd = tv_resnet18_file
    net = torchvision.models.resnet18()
    assert load_weights(net, path, key_map=[(r"^net\.", "")]) == ([], [])
    torch.testing.assert_close(net.fc.weight, sd["fc.weight"])
