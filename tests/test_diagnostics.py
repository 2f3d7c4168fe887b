"""InputCheck and ForgettingMonitor (tl_lightning.diagnostics): fire on the mistakes, silent on correct runs."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from diagnostics_models import (
    ScriptedModule,
    image_batches,
    image_loader,
    tiny_image_classifier,
    trainer,
    vector_loader,
)
from lightning.pytorch.callbacks import ModelCheckpoint
from torchvision.transforms import v2

from tl_lightning.backbones import ImagePreprocess
from tl_lightning.callbacks import GradualUnfreezing
from tl_lightning.data._transforms import image_eval_transform, image_train_transform
from tl_lightning.diagnostics import (
    ForgettingMonitor,
    InputCheck,
    find_expected_preprocess,
    gram_cka,
    linear_cka,
)
from tl_lightning.errors import CheckpointError, ConfigurationError, DataError

IMAGENET = ImagePreprocess(input_size=(3, 32, 32))  # ImageNet mean / std: R > G > B


def run_check(cb: InputCheck, module: Any, batches: list) -> list[str]:
    """Feed batches to the hook as the Trainer does; return the checks that fired (warning asserted)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, batch in enumerate(batches):
            cb.on_train_batch_start(None, module, batch, i)  # type: ignore[arg-type]
    fired = [f.check for f in cb.findings]
    ours = [w for w in caught if "InputCheck" in str(w.message)]
    assert len(ours) == (1 if fired else 0), [str(w.message) for w in ours]
    return fired


# ---------------------------------------------------------------------------------- images
@pytest.fixture(scope="module")
def resnet() -> Any:
    return tiny_image_classifier()


@pytest.mark.parametrize("make", [image_train_transform, image_eval_transform], ids=["train", "eval"])
@pytest.mark.parametrize("preprocess", ["model", "imagenet"])
def test_images_from_the_library_transforms_pass(resnet: Any, make: Any, preprocess: str) -> None:
    p = resnet.preprocess.with_size(32) if preprocess == "model" else IMAGENET
    cb = InputCheck(preprocess=None if preprocess == "model" else IMAGENET)
    assert run_check(cb, resnet, image_batches(make(p))) == []


def _normalized(p: ImagePreprocess) -> list:
    return image_batches(image_eval_transform(p))


@pytest.mark.parametrize("preprocess", ["model", "imagenet"])
def test_normalized_twice_fires(resnet: Any, preprocess: str) -> None:
    p = resnet.preprocess.with_size(32) if preprocess == "model" else IMAGENET
    again = v2.Normalize(mean=list(p.mean), std=list(p.std))
    batches = [(again(x), y) for x, y in _normalized(p)]
    cb = InputCheck(preprocess=p)
    assert run_check(cb, resnet, batches) == ["normalization"]
    assert "normalized twice" in cb.findings[0].message


def test_hugging_face_style_image_batches_are_checked(resnet: Any) -> None:
    p = resnet.preprocess.with_size(32)
    again = v2.Normalize(mean=list(p.mean), std=list(p.std))
    batches = [{"pixel_values": again(x), "labels": y} for x, y in _normalized(p)]
    assert run_check(InputCheck(), resnet, batches) == ["normalization"]


@pytest.mark.parametrize("normalize", [True, False])
def test_0_255_pixels_fire(resnet: Any, normalize: bool) -> None:
    p = IMAGENET
    steps = [v2.ToImage(), v2.Resize(32), v2.CenterCrop(32), v2.ToDtype(torch.float32, scale=False)]
    if normalize:
        steps.append(v2.Normalize(mean=list(p.mean), std=list(p.std)))
    cb = InputCheck(preprocess=p)
    assert run_check(cb, resnet, image_batches(v2.Compose(steps))) == ["normalization"]
    assert "not scaled" in cb.findings[0].message or "without being scaled" in cb.findings[0].message
    assert "expected" in cb.findings[0].message and "observed" in cb.findings[0].message


def test_uint8_batches_fire_as_unscaled(resnet: Any) -> None:
    t = v2.Compose([v2.ToImage(), v2.Resize(32), v2.CenterCrop(32)])
    cb = InputCheck(preprocess=IMAGENET)
    assert run_check(cb, resnet, image_batches(t)) == ["normalization"]


def test_missing_normalization_and_scaled_twice_fire(resnet: Any) -> None:
    p = IMAGENET
    raw = image_batches(
        v2.Compose([v2.ToImage(), v2.Resize(32), v2.CenterCrop(32), v2.ToDtype(torch.float32, scale=True)])
    )
    cb = InputCheck(preprocess=p)
    assert run_check(cb, resnet, raw) == ["normalization"]
    assert "missing" in cb.findings[0].message
    norm = v2.Normalize(mean=list(p.mean), std=list(p.std))
    cb = InputCheck(preprocess=p)
    assert run_check(cb, resnet, [(norm(x / 255), y) for x, y in raw]) == ["normalization"]
    assert "twice" in cb.findings[0].message and "scaled" in cb.findings[0].message


def test_other_normalization_statistics_fire(resnet: Any) -> None:
    # normalized for a model with mean = std = 0.5, given to one that expects ImageNet statistics... and back
    half = ImagePreprocess(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    cb = InputCheck(preprocess=half)
    assert run_check(cb, resnet, _normalized(IMAGENET)) == ["normalization"]
    assert "other statistics" in cb.findings[0].message


@pytest.mark.parametrize("preprocess", ["model", "imagenet"])
def test_bgr_fires(resnet: Any, preprocess: str) -> None:
    p = resnet.preprocess.with_size(32) if preprocess == "model" else IMAGENET
    bgr = [(x.flip(1), y) for x, y in _normalized(p)]
    # flipping normalized channels of a uniform normalization is the same as flipping the pixels
    if preprocess == "imagenet":
        m, s = torch.tensor(p.mean).view(1, 3, 1, 1), torch.tensor(p.std).view(1, 3, 1, 1)
        bgr = [(((x * s + m).flip(1) - m) / s, y) for x, y in _normalized(p)]
    cb = InputCheck(preprocess=p)
    assert run_check(cb, resnet, bgr) == ["bgr"]
    assert "BGR" in cb.findings[0].message and "heuristic" in cb.findings[0].message
    assert run_check(InputCheck(preprocess=p, ignore=["bgr"]), resnet, bgr) == []


def test_grayscale_replicated_fires(resnet: Any) -> None:
    p = resnet.preprocess.with_size(32)
    gray = v2.Compose([v2.Grayscale(num_output_channels=3), image_eval_transform(p)])
    cb = InputCheck()
    assert run_check(cb, resnet, image_batches(gray)) == ["grayscale"]


def test_one_channel_batches_are_a_clear_error(resnet: Any) -> None:
    x = torch.zeros(4, 1, 32, 32)
    with pytest.raises(DataError, match=r"1 channel\(s\).*takes 3.*convert them to RGB"):
        InputCheck().on_train_batch_start(None, resnet, (x, torch.zeros(4)), 0)  # type: ignore[arg-type]


def test_size_against_the_pretrained_size(resnet: Any) -> None:
    batches = _normalized(resnet.preprocess.with_size(32))
    # random init: there is no pretrained size to compare with
    assert find_expected_preprocess(resnet)[1] is None
    cb = InputCheck(pretrained_size=160)
    assert run_check(cb, resnet, batches) == ["size"]
    assert "160x160" in cb.findings[0].message and "32x32" in cb.findings[0].message
    model = tiny_image_classifier()
    model.backbone.pretrained_source = "timm:test_resnet"  # as if the weights were loaded
    assert find_expected_preprocess(model)[1] == (160, 160)
    assert run_check(InputCheck(), model, batches) == ["size"]
    assert run_check(InputCheck(size_ratio=6.0), model, batches) == []


def test_expected_preprocess_is_found_on_a_plain_module_with_a_timm_model() -> None:
    import timm
    from torch import nn

    class Mine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = timm.create_model("test_resnet", pretrained=False)

    p, size, source = find_expected_preprocess(Mine())
    assert isinstance(p, ImagePreprocess) and size == p.image_size and "timm" in source
    assert p.mean == tuple(timm.create_model("test_resnet").pretrained_cfg["mean"])


def test_input_check_fires_once_in_a_fit(resnet: Any, tmp_path: Path) -> None:
    p = resnet.preprocess.with_size(32)
    twice = v2.Normalize(mean=list(p.mean), std=list(p.std))
    x = torch.cat([twice(b[0]) for b in _normalized(p)])
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.arange(len(x)) % 2), batch_size=8
    )
    cb = InputCheck()
    with pytest.warns(UserWarning, match="normalized twice") as record:
        trainer(tmp_path, [cb], max_epochs=2).fit(tiny_image_classifier(), loader)
    assert sum("InputCheck" in str(w.message) for w in record) == 1


def test_input_check_arguments_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="ignore"):
        InputCheck(ignore=["bgrr"])
    with pytest.raises(ConfigurationError, match="num_batches"):
        InputCheck(num_batches=0)


# ---------------------------------------------------------------------------------- texts
@pytest.fixture(scope="module")
def bert(tiny_bert_dir: Path) -> Any:
    from tl_lightning import TransferClassifier

    return TransferClassifier(f"hf:{tiny_bert_dir}", labels=["neg", "pos"], pretrained=False)


TEXTS = [
    "a good movie",
    "the plot was bad",
    "great actor, fun film",
    "boring",
    "an awful plot",
    "good fun",
] * 2


def _text_batches(tokenize: Any, texts: list[str] = TEXTS) -> list:
    return [(tokenize(texts[i : i + 4]), torch.zeros(4, dtype=torch.long)) for i in range(0, len(texts), 4)]


def test_texts_from_the_model_tokenizer_pass(bert: Any) -> None:
    assert run_check(InputCheck(), bert, _text_batches(bert.preprocess)) == []


def test_texts_from_a_foreign_tokenizer_fire(bert: Any, tiny_bert_dir: Path, tmp_path: Path) -> None:
    from transformers import BertTokenizerFast

    # another model's vocabulary: the same pieces in another order, special tokens last
    vocab = (tiny_bert_dir / "vocab.txt").read_text().split()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    other = [v for v in vocab if v not in specials][::-1] + specials
    (tmp_path / "vocab.txt").write_text("\n".join(other) + "\n")
    foreign = BertTokenizerFast(vocab=str(tmp_path / "vocab.txt"), do_lower_case=True)

    def tokenize(texts: list[str]) -> dict:
        return dict(foreign(texts, padding=True, truncation=True, max_length=32, return_tensors="pt"))

    cb = InputCheck()
    assert run_check(cb, bert, _text_batches(tokenize))[0] == "tokenizer"
    assert "do not start with [CLS]" in cb.findings[0].message and "padding" in cb.findings[0].message


def test_ids_beyond_the_embedding_are_a_clear_error(bert: Any) -> None:
    rows = bert.backbone.model.get_input_embeddings().num_embeddings
    ids = torch.full((2, 5), rows + 3)
    with pytest.raises(
        DataError, match=f"beyond the model's {rows} embedding rows.*another model's tokenizer"
    ):
        InputCheck().on_train_batch_start(None, bert, ({"input_ids": ids}, torch.zeros(2)), 0)  # type: ignore[arg-type]


def test_unknown_tokens_fire(bert: Any) -> None:
    foreign_script = ["这部电影很好看", "很无聊的情节", "演员很棒", "糟糕"] * 3
    cb = InputCheck()
    assert run_check(cb, bert, _text_batches(bert.preprocess, foreign_script)) == ["unknown_tokens"]
    assert "[UNK]" in cb.findings[0].message


def test_truncated_sequences_fire_and_suggest_a_max_length(bert: Any) -> None:
    from tl_lightning import TransferClassifier

    model = TransferClassifier(bert.hparams.backbone, labels=["neg", "pos"], pretrained=False)
    model.set_preprocess(model.preprocess.with_max_length(8))
    long = [" ".join([t] * 6) for t in TEXTS]
    cb = InputCheck()
    assert run_check(cb, model, _text_batches(model.preprocess, long)) == ["truncation"]
    assert "max_length=8" in cb.findings[0].message and "data.max_length=16" in cb.findings[0].message
    short = ["a good movie", "boring", "good fun", "an awful plot"] * 3
    assert run_check(InputCheck(), model, _text_batches(model.preprocess, short)) == []


# ---------------------------------------------------------------------------------- CKA
def test_cka_of_identical_activations_is_one_and_of_independent_ones_small() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=g)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, x, debiased=True) == pytest.approx(1.0, abs=1e-9)
    rotation = torch.linalg.qr(torch.randn(192, 192, generator=g))[0]
    assert linear_cka(x, 2.5 * x.flatten(1) @ rotation) == pytest.approx(1.0, abs=1e-6)
    narrow_a, narrow_b = torch.randn(500, 10, generator=g), torch.randn(500, 10, generator=g)
    assert linear_cka(narrow_a, narrow_b) < 0.1
    # more features than examples: the plain estimator scores unrelated activations high, the debiased one does not
    wide_a, wide_b = torch.randn(32, 4000, generator=g), torch.randn(32, 4000, generator=g)
    assert linear_cka(wide_a, wide_b) > 0.5
    assert abs(linear_cka(wide_a, wide_b, debiased=True)) < 0.1
    with pytest.raises(ValueError, match="at least 4"):
        gram_cka(torch.eye(3), torch.eye(3))


# ---------------------------------------------------------------------------------- forgetting
@pytest.mark.parametrize("device", ["cpu", "param"])
def test_weight_drift_is_the_relative_change_per_group(device: str) -> None:
    from torch import nn

    from tl_lightning.backbones import LayerGroup
    from tl_lightning.diagnostics._drift import WeightDrift

    net = nn.Sequential(nn.Linear(2, 1, bias=False), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[3.0, 4.0]]))
        net[1].weight.fill_(2.0)
    groups = [
        LayerGroup("a", (("0.weight", net[0].weight),)),
        LayerGroup("b", (("1.weight", net[1].weight),)),
    ]
    drift = WeightDrift(device)
    drift.snapshot(net.named_parameters())
    assert drift.measure(net, groups) == {"a": 0.0, "b": 0.0}
    with torch.no_grad():
        net[0].weight.add_(torch.tensor([[0.3, 0.4]]))  # moves by 0.5 on a norm of 5
    assert drift.measure(net, groups) == pytest.approx({"a": 0.1, "b": 0.0})
    restored = WeightDrift(device)
    restored.load_state_dict(drift.state_dict(), net)
    assert restored.measure(net, groups) == pytest.approx({"a": 0.1, "b": 0.0})
    with pytest.raises(CheckpointError, match="do not fit this model"):
        restored.load_state_dict({"w0": {"0.weight": torch.zeros(3)}}, net)


class MeasureAtStart(ForgettingMonitor):
    """Records what the monitor measures right before the first optimizer step."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.at_start = self.weight_drift(pl_module)


def test_forgetting_monitor_drift_zero_at_start_then_only_trained_groups_move(tmp_path: Path) -> None:
    model = tiny_image_classifier(lr=0.05)
    monitor = MeasureAtStart()
    loader = image_loader()
    trainer(tmp_path, [GradualUnfreezing.top_n(1), monitor], max_epochs=2).fit(model, loader, loader)
    assert monitor.at_start == {g: 0.0 for g in ["stem", "layer1", "layer2", "layer3", "layer4"]}
    h = monitor.history
    assert h["epoch"] == [0, 1]
    for frozen in ["stem", "layer1", "layer2", "layer3"]:
        assert h["drift"][frozen] == [0.0, 0.0]
        assert h["cka"][frozen][-1] == pytest.approx(1.0, abs=1e-6)
        assert h["cos"][frozen][-1] == pytest.approx(1.0, abs=1e-5)
    assert 0 < h["drift"]["layer4"][0] < h["drift"]["layer4"][1]
    assert h["cka"]["layer4"][-1] < 1.0 - 1e-6
    assert h["train"][-1] is not None and h["val"][-1] is not None
    # the probe came from the first validation batch seen (no sanity check here: the first training batch)
    assert monitor._probe is not None and monitor._probe.shape == (8, 3, 32, 32)


def _overfitting(tmp_path: Path, val: list[float], **kw: Any) -> tuple[ForgettingMonitor, list[str]]:
    monitor = ForgettingMonitor(groups="model", top_groups=1, drift_rate=kw.pop("drift_rate", 0.005))
    module = ScriptedModule(train_acc=[0.8, 0.97, 1.0, 1.0], val_acc=val, lr=kw.pop("lr", 0.5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [monitor], max_epochs=4).fit(module, vector_loader(), vector_loader(n=16))
    return monitor, [str(w.message) for w in caught if "catastrophic" in str(w.message)]


def test_forgetting_warning_fires_on_an_overfitting_curve(tmp_path: Path) -> None:
    monitor, messages = _overfitting(tmp_path, val=[0.70, 0.78, 0.74, 0.69])
    assert len(messages) == 1 and monitor.state_dict()["warned"] is True
    assert "epoch 2" in messages[0] and "val/acc fell to 0.740 from its best 0.780" in messages[0]
    assert "block3" in messages[0]


@pytest.mark.parametrize(
    ("val", "kw"),
    [([0.70, 0.78, 0.80, 0.82], {}), ([0.70, 0.78, 0.74, 0.69], {"lr": 0.0})],
    ids=["val-rising", "weights-still"],
)
def test_forgetting_warning_needs_every_symptom(tmp_path: Path, val: list[float], kw: dict) -> None:
    _, messages = _overfitting(tmp_path, val=val, **kw)
    assert messages == []


def test_forgetting_state_survives_resume(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    first = ForgettingMonitor(groups="model")
    trainer(tmp_path, [first, ckpt], max_epochs=1, enable_checkpointing=True).fit(
        ScriptedModule(seed=0), vector_loader(), vector_loader(n=16)
    )
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)  # only tensors and plain types
    assert any("ForgettingMonitor" in k for k in state["callbacks"])
    second = ForgettingMonitor(groups="model")
    other_init = ScriptedModule(seed=1)
    trainer(tmp_path, [second], max_epochs=2).fit(
        other_init, vector_loader(), vector_loader(n=16), ckpt_path=tmp_path / "last.ckpt"
    )
    assert second._drift.w0.keys() == first._drift.w0.keys()
    for name, w0 in first._drift.w0.items():
        assert torch.equal(second._drift.w0[name], w0), name
    assert torch.equal(second._probe, first._probe)
    assert second._reference is not None and first._reference is not None
    assert torch.equal(second._reference["block3"]["gram"], first._reference["block3"]["gram"])
    assert second.history["epoch"] == [0, 1]


def test_forgetting_monitor_refuses_sharded_strategies() -> None:
    from unittest.mock import MagicMock

    from tl_lightning.diagnostics.forgetting import check_supported_strategy

    fake = MagicMock()
    fake.strategy = object()
    with pytest.raises(ConfigurationError, match="sharded model"):
        check_supported_strategy(fake, "ForgettingMonitor")


def test_forgetting_probe_batch_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="probe_batch"):
        ForgettingMonitor(probe_batch="not a batch")
    monitor = ForgettingMonitor(probe_batch=(torch.randn(100, 8), torch.zeros(100)), probe_size=16)
    assert monitor._probe is not None and monitor._probe.shape == (16, 8)


def test_forgetting_on_a_text_model(bert: Any, tmp_path: Path) -> None:
    from tl_lightning import TransferClassifier

    model = TransferClassifier(bert.hparams.backbone, labels=["neg", "pos"], pretrained=False, lr=1e-2)
    batches = torch.utils.data.DataLoader(_text_batches(model.preprocess), batch_size=None)
    monitor = ForgettingMonitor()
    trainer(tmp_path, [monitor], max_epochs=1).fit(model, batches)
    names = monitor.targets.names if monitor.targets else []
    assert names[0] == "embeddings" and len(names) >= 3
    # transformer layers return tuples: their first tensor is captured
    assert set(monitor.history["cka"]) == set(names)
    assert all(math.isfinite(monitor.history["cka"][n][-1]) for n in names)
