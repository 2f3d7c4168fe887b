"""LayerMap (pictures, TensorBoard, run curves) and PerClassReport (per-class / per-group metrics, confusion matrix)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from diagnostics_models import image_loader, tiny_image_classifier, trainer
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tl_lightning.callbacks import GradualUnfreezing
from tl_lightning.diagnostics import STATE_COLORS, LayerMap, PerClassReport, draw_layer_map
from tl_lightning.diagnostics._metrics import confusion_matrix, multilabel_report, report_from_confusion
from tl_lightning.errors import DataError


def colour_count(path: Path, hex_colour: str) -> int:
    rgb = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    pixels = np.asarray(Image.open(path).convert("RGB"))
    return int((pixels == np.array(rgb, dtype=np.uint8)).all(-1).sum())


# ---------------------------------------------------------------------------------- layer map
def test_draw_layer_map_colours_each_state(tmp_path: Path) -> None:
    rows = [
        {"index": 0, "name": "stem", "params": 1000, "state": "frozen", "lr": "0.001"},
        {"index": 1, "name": "layer1", "params": 50000, "state": "partly frozen", "lr": "0.001"},
        {"index": 2, "name": "layer2", "params": 200000, "state": "trainable", "lr": "0.01"},
        {"index": None, "name": "head (fc)", "params": 500, "state": "trainable", "lr": "0.01"},
    ]
    path = draw_layer_map(rows, tmp_path / "map.png", "title", {"stem": 0.0, "layer2": 0.12})
    with Image.open(path) as img:
        assert img.size == (1000, int(100 * (1.4 + 0.42 * 5)))
    counts = {state: colour_count(path, colour) for state, colour in STATE_COLORS.items()}
    legend = min(counts.values())  # each colour is in the legend at least
    assert legend > 0
    # the big trainable box outweighs the small frozen one; the head box is tiny
    assert counts["trainable"] > 5 * counts["frozen"] > 0
    assert len(set(STATE_COLORS.values())) == 4


def test_layer_map_pictures_at_start_unfreeze_and_end(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path / "tb", name="", version="")
    layer_map = LayerMap(dirpath=tmp_path / "run")
    loader = image_loader(n=16)
    unfreeze = GradualUnfreezing(schedule={1: [-1]}, warmup_steps=2)
    trainer(tmp_path, [unfreeze, layer_map], logger=logger, log_every_n_steps=1).fit(
        tiny_image_classifier(lr=0.05), loader, loader
    )
    names = [p.name for p in layer_map.pictures]
    assert names == [
        "layer_map_0_0.png",
        "layer_map_1_2.png",
        "layer_map_2_4.png",
        "lr_curves.png",
        "curves.png",
    ]
    start, unfrozen, end = (tmp_path / "run" / n for n in names[:3])
    for path in (start, unfrozen, end):
        with Image.open(path) as img:
            assert img.size == (1000, int(100 * (1.4 + 0.42 * 7)))
    trainable, frozen = STATE_COLORS["trainable"], STATE_COLORS["frozen"]
    # at the start only the legend is trainable-coloured; after the unfreeze the top group's box is
    assert colour_count(unfrozen, trainable) > colour_count(start, trainable) + 5000
    assert colour_count(unfrozen, frozen) < colour_count(start, frozen) - 5000
    assert colour_count(end, trainable) == colour_count(unfrozen, trainable)
    # logged to TensorBoard, one image per picture
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert len(events.Images("diagnostics/layer_map")) == 3
    # the LR actually used: the unfrozen group warms up (1/2 of the LR at its first step), frozen ones keep theirs
    lrs = {int(s): lr for s, lr in layer_map.curves.lrs["layer4"]}
    assert lrs == {0: 0.05, 1: 0.05, 2: 0.025, 3: 0.05}
    assert [e for e, _ in layer_map.curves.metrics["train/loss"]] == [0, 1]
    assert [e for e, _ in layer_map.curves.metrics["val/loss"]] == [0, 1]
    with Image.open(tmp_path / "run" / "curves.png") as img:
        assert img.size[0] > 1000  # loss, acc, f1 panels side by side


def test_layer_map_on_a_plain_module_without_drift(tmp_path: Path) -> None:
    from diagnostics_models import ScriptedModule, vector_loader

    layer_map = LayerMap(dirpath=tmp_path, groups="model", track_drift=False, curves=False)
    trainer(tmp_path, [layer_map], max_epochs=1).fit(ScriptedModule(), vector_loader())
    assert [p.name for p in layer_map.pictures] == ["layer_map_0_0.png", "layer_map_1_4.png"]
    assert layer_map.state_dict()["w0"]["w0"] == {}  # no copy of the weights kept
    assert layer_map.curves.lrs == {}


def test_layer_map_state_is_plain(tmp_path: Path) -> None:
    layer_map = LayerMap(dirpath=tmp_path)
    layer_map._last = ["frozen", "trainable"]
    layer_map.curves.lrs = {"layer4": [[0, 0.1], [1, 0.05]]}
    layer_map._drift.w0 = {"model.weight": torch.ones(2)}
    torch.save(layer_map.state_dict(), tmp_path / "state.pt")
    restored = LayerMap(dirpath=tmp_path)
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert restored._last == ["frozen", "trainable"] and restored.curves.lrs == layer_map.curves.lrs
    assert torch.equal(restored._drift.w0["model.weight"], torch.ones(2))


# ---------------------------------------------------------------------------------- metrics by hand
TARGETS = torch.tensor([0, 0, 0, 1, 1, 2])
PREDS = torch.tensor([0, 0, 1, 1, 2, 2])


def test_per_class_numbers_match_hand_computed_values() -> None:
    cm = confusion_matrix(PREDS, TARGETS, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    rows = {r["label"]: r for r in report_from_confusion(cm, ["a", "b", "c"])}
    # a: 2 of 2 predicted a are right, 2 of 3 true a found; b: 1/2, 1/2; c: 1/2, 1/1
    assert (rows["a"]["precision"], rows["a"]["recall"], rows["a"]["f1"]) == pytest.approx((1.0, 2 / 3, 0.8))
    assert (rows["b"]["precision"], rows["b"]["recall"], rows["b"]["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (rows["c"]["precision"], rows["c"]["recall"], rows["c"]["f1"]) == pytest.approx((0.5, 1.0, 2 / 3))
    assert [rows[k]["support"] for k in "abc"] == [3, 2, 1]
    assert rows["accuracy"]["f1"] == pytest.approx(4 / 6) and rows["accuracy"]["support"] == 6
    assert rows["macro avg"]["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert rows["weighted avg"]["f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 2 / 3) / 6)
    assert rows["macro avg"]["precision"] == pytest.approx(2 / 3)


def test_a_class_never_predicted_nor_present_scores_zero() -> None:
    cm = confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 1]), 3)
    rows = {r["label"]: r for r in report_from_confusion(cm, ["a", "b", "c"])}
    assert (rows["b"]["precision"], rows["b"]["recall"], rows["b"]["f1"], rows["b"]["support"]) == (
        0.0,
        0.0,
        0.0,
        1,
    )
    assert (rows["c"]["precision"], rows["c"]["recall"], rows["c"]["f1"], rows["c"]["support"]) == (
        0.0,
        0.0,
        0.0,
        0,
    )
    assert rows["a"]["precision"] == pytest.approx(0.5) and rows["a"]["recall"] == 1.0


def test_multilabel_numbers_match_hand_computed_values() -> None:
    preds = torch.tensor([[1, 0], [1, 1], [0, 1]])
    targets = torch.tensor([[1, 0], [0, 1], [1, 1]])
    rows = {r["label"]: r for r in multilabel_report(preds, targets, ["x", "y"])}
    assert {k: rows["x"][k] for k in ("tp", "fp", "fn", "tn", "support")} == {
        "tp": 1,
        "fp": 1,
        "fn": 1,
        "tn": 0,
        "support": 2,
    }
    assert (rows["x"]["precision"], rows["x"]["recall"], rows["x"]["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert {k: rows["y"][k] for k in ("tp", "fp", "fn", "tn")} == {"tp": 2, "fp": 0, "fn": 0, "tn": 1}
    assert rows["y"]["f1"] == 1.0 and rows["macro avg"]["f1"] == pytest.approx(0.75)


# ---------------------------------------------------------------------------------- PerClassReport in a test run
class OneHotModel(pl.LightningModule):
    """Predicts the class its input one-hot encodes; test_step returns only the loss (the fallback forward path)."""

    labels = ("a", "b", "c")

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(5.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)


def one_hot_loader(preds: torch.Tensor, targets: torch.Tensor, batch_size: int = 4) -> DataLoader:
    return DataLoader(TensorDataset(nn.functional.one_hot(preds, 3).float(), targets), batch_size=batch_size)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_per_class_report_files_from_a_test_run(tmp_path: Path) -> None:
    report = PerClassReport(dirpath=tmp_path / "run")
    trainer(tmp_path, [report]).test(OneHotModel(), one_hot_loader(PREDS, TARGETS))
    rows = {r["label"]: r for r in read_rows(tmp_path / "run" / "per_class.csv")}
    assert list(rows) == ["a", "b", "c", "accuracy", "macro avg", "weighted avg"]
    assert float(rows["a"]["recall"]) == pytest.approx(2 / 3, abs=1e-6) and rows["a"]["support"] == "3"
    assert float(rows["c"]["precision"]) == pytest.approx(0.5) and rows["accuracy"]["precision"] == ""
    with (tmp_path / "run" / "confusion_matrix.csv").open() as f:
        matrix = list(csv.reader(f))
    assert matrix[0] == ["true \\ predicted", "a", "b", "c"]
    assert [row[1:] for row in matrix[1:]] == [["2", "1", "0"], ["0", "1", "1"], ["0", "0", "1"]]
    with Image.open(tmp_path / "run" / "confusion_matrix.png") as img:
        assert img.size[0] >= 400 and img.size[1] >= 300


class OutputKeys(pl.Callback):
    def on_test_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.keys = set(outputs)


def test_per_class_report_of_a_transfer_classifier_uses_its_test_step_outputs(tmp_path: Path) -> None:
    model = tiny_image_classifier(labels=["a", "b", "c"])
    loader = image_loader(n=20, classes=3)
    report = PerClassReport(dirpath=tmp_path, plot=False)
    seen = OutputKeys()
    results = trainer(tmp_path, [report, seen]).test(model, loader)
    assert seen.keys == {"loss", "logits", "targets"}  # no second forward needed
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(x).argmax(-1) for x, _ in loader])
    targets = torch.cat([y for _, y in loader])
    assert torch.equal(report.confusion, confusion_matrix(preds, targets, 3))
    assert [r["label"] for r in report.report[:3]] == ["a", "b", "c"]
    assert results[0]["test/acc"] == pytest.approx(report.report[3]["f1"], abs=1e-6)
    assert {p.name for p in report.files} == {"per_class.csv", "confusion_matrix.csv"}


class MultiHotModel(OneHotModel):
    labels = ("x", "y")
    task = "multilabel"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 2 - 1) * self.scale  # 1 -> positive logit, 0 -> negative

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"logits": self(x), "targets": y}


def test_per_class_report_multilabel(tmp_path: Path) -> None:
    preds = torch.tensor([[1, 0], [1, 1], [0, 1]]).float()
    targets = torch.tensor([[1, 0], [0, 1], [1, 1]]).float()
    report = PerClassReport(dirpath=tmp_path)
    trainer(tmp_path, [report]).test(MultiHotModel(), DataLoader(TensorDataset(preds, targets), batch_size=2))
    rows = {r["label"]: r for r in read_rows(tmp_path / "per_class.csv")}
    assert (rows["x"]["tp"], rows["x"]["fp"], rows["x"]["fn"], rows["x"]["tn"]) == ("1", "1", "1", "0")
    assert float(rows["y"]["f1"]) == 1.0
    assert (
        not (tmp_path / "confusion_matrix.csv").exists() and not (tmp_path / "confusion_matrix.png").exists()
    )


# ---------------------------------------------------------------------------------- subgroups
def _group_csv(tmp_path: Path) -> Path:
    words = ["good movie", "bad film", "great plot", "awful actor", "fun", "boring"]
    lines = ["text,label,region"]
    for i in range(24):
        label = "pos" if i % 2 == 0 else "neg"
        lines.append(f"{words[i % 6]} {i},{label},{['north', 'south', 'east'][i % 3]}")
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_text_data_module_gives_the_group_of_each_test_row(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from tl_lightning import TextClassificationDataModule, TransferClassifier

    model = TransferClassifier(f"hf:{tiny_bert_dir}", labels=["neg", "pos"], pretrained=False)
    dm = TextClassificationDataModule(
        path=str(_group_csv(tmp_path)), group_column="region", test_fraction=0.5, batch_size=4
    )
    dm.set_preprocess(model.preprocess)
    groups = dm.test_groups()
    texts = dm._dataset("test").texts
    region_of = {row["text"]: row["region"] for row in read_rows(_group_csv(tmp_path))}
    assert len(groups) == len(texts) == 12
    assert groups == [region_of[t] for t in texts]
    assert TextClassificationDataModule(path=str(_group_csv(tmp_path))).test_groups() is None
    missing = TextClassificationDataModule(path=str(_group_csv(tmp_path)), group_column="country")
    missing.set_preprocess(model.preprocess)
    with pytest.raises(DataError, match="group_column 'country'"):
        missing.test_groups()


def test_per_group_report(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from tl_lightning import TextClassificationDataModule, TransferClassifier

    model = TransferClassifier(f"hf:{tiny_bert_dir}", labels=["neg", "pos"], pretrained=False)
    dm = TextClassificationDataModule(
        path=str(_group_csv(tmp_path)), group_column="region", test_fraction=0.5, batch_size=5
    )
    dm.set_preprocess(model.preprocess)
    report = PerClassReport(dirpath=tmp_path / "run", plot=False)
    results = trainer(tmp_path, [report]).test(model, datamodule=dm)
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(x).argmax(-1) for x, _ in dm.test_dataloader()])
    targets = torch.cat([y for _, y in dm.test_dataloader()])
    groups = dm.test_groups()
    assert sorted(report.group_reports) == ["east", "north", "south"]
    for name, rows in report.group_reports.items():
        mask = torch.tensor([g == name for g in groups])
        expected = report_from_confusion(confusion_matrix(preds[mask], targets[mask], 2), ["neg", "pos"])
        assert rows == expected
        assert results[0][f"test_group/{name}/acc"] == pytest.approx(expected[2]["f1"], abs=1e-6)
    rows = read_rows(tmp_path / "run" / "per_group.csv")
    assert {r["group"] for r in rows} == {"east", "north", "south"}
    assert sum(int(r["support"]) for r in rows if r["label"] == "accuracy") == 12
