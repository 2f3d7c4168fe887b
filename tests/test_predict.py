"""tl-predict: a checkpoint + a CSV of texts or a folder of images -> a predictions CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tl_lightning import TransferClassifier
from tl_lightning.cli.predict import PredictConfig, main, parse_args, predict
from tl_lightning.errors import ConfigurationError, DataError


def _save_checkpoint(model: TransferClassifier, path: Path) -> Path:
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.strategy.connect(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture
def image_checkpoint(tmp_path: Path) -> tuple[Path, TransferClassifier]:
    model = TransferClassifier("timm:test_resnet", labels=["cat", "dog", "eel"], pretrained=False)
    return _save_checkpoint(model, tmp_path / "run" / "checkpoints" / "best.ckpt"), model


def test_image_folder_predictions(image_checkpoint: tuple[Path, TransferClassifier], tmp_path: Path) -> None:
    from PIL import Image

    ckpt, model = image_checkpoint
    images = tmp_path / "new"
    (images / "sub").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (48, 40), (40 * i, 90, 200)).save(images / f"{i}.png")
    Image.new("RGB", (40, 40), (1, 2, 3)).save(images / "sub" / "x.jpg")
    (images / "notes.txt").write_text("not an image")
    (images / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble sidecar")  # ignored, as by the data modules
    out = tmp_path / "preds.csv"
    main([f"ckpt_path={ckpt}", f"input={images}", f"output={out}", "batch_size=2", "image_size=32"])
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == ["0.png", "1.png", "2.png", "sub/x.jpg"]
    assert list(rows[0]) == ["id", "label", "prob_cat", "prob_dog", "prob_eel"]
    for row in rows:
        probs = [float(row[f"prob_{c}"]) for c in ("cat", "dog", "eel")]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert row["label"] == ["cat", "dog", "eel"][max(range(3), key=probs.__getitem__)]
    # the probabilities are the model's own
    from tl_lightning.data import image_eval_transform

    transform = image_eval_transform(model.backbone.preprocess.with_size(32))
    with Image.open(images / "0.png") as im, torch.no_grad():
        expected = model.eval()(transform(im.convert("RGB"))[None]).softmax(-1)[0]
    assert float(rows[0]["prob_dog"]) == pytest.approx(float(expected[1]), abs=1e-4)


def test_text_csv_predictions(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = TransferClassifier(f"hf:{tiny_bert_dir}", labels=["neg", "pos"], pretrained=True,
                               backbone_kwargs={"pooling": "mean"})
    ckpt = _save_checkpoint(model, tmp_path / "m.ckpt")
    table = tmp_path / "in.csv"
    table.write_text("review_id,review\nr1,a good movie\nr2,an awful boring film\n")
    out = predict(PredictConfig(ckpt_path=str(ckpt), input=str(table), output=str(tmp_path / "p.csv"),
                                text_column="review", id_column="review_id"))
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == ["r1", "r2"]
    assert {r["label"] for r in rows} <= {"neg", "pos"}
    with torch.no_grad():
        expected = model.eval()(model.backbone.preprocess(["a good movie"])).softmax(-1)[0]
    assert float(rows[0]["prob_pos"]) == pytest.approx(float(expected[1]), abs=1e-4)


def test_wrong_text_column_lists_columns(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = TransferClassifier(f"hf:{tiny_bert_dir}", labels=["neg", "pos"], backbone_kwargs={"pooling": "mean"})
    ckpt = _save_checkpoint(model, tmp_path / "m.ckpt")
    table = tmp_path / "in.csv"
    table.write_text("review\nfine\n")
    with pytest.raises(DataError, match=r"'text'.*review"):
        predict(PredictConfig(ckpt_path=str(ckpt), input=str(table)))


def test_bad_arguments_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'ckpt_path'"):
        parse_args(["ckpt_pth=x", "input=y"])
    with pytest.raises(ConfigurationError, match="missing required"):
        parse_args(["input=y"])
    with pytest.raises(ConfigurationError, match="batch_size must be >= 1, got 0"):
        parse_args(["ckpt_path=x", "input=y", "batch_size=0"])
    with pytest.raises(ConfigurationError, match="threshold must be a number in \\[0, 1\\], got 'high'"):
        parse_args(["ckpt_path=x", "input=y", "threshold=high"])
    with pytest.raises(ConfigurationError, match="threshold must be in \\[0, 1\\], got 1.5"):
        parse_args(["ckpt_path=x", "input=y", "threshold=1.5"])
    cfg = parse_args(["--ckpt_path", "a.ckpt", "input=b", "batch_size=4", "max_length=null"])
    assert (cfg.ckpt_path, cfg.input, cfg.batch_size, cfg.max_length) == ("a.ckpt", "b", 4, None)
    with pytest.raises(SystemExit) as info:
        main([f"ckpt_path={tmp_path / 'missing.ckpt'}", "input=x"])
    assert info.value.code == 1
    assert "missing.ckpt" in capsys.readouterr().err
