"""tl-predict: a Hydra app over conf/predict.yaml, the data modules' predict stage and Trainer.predict."""

from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tl_lightning import TransferClassifier
from tl_lightning.callbacks.prediction_writer import write_csv_atomically
from tl_lightning.cli.predict import compose_predict_config, main, predict, skipped_path
from tl_lightning.errors import ConfigurationError, DataError

LONG = "the good movie the great actor the fun plot the boring film the awful movie the bad plot"
TEXTS = [LONG, "a good movie", "NA", "None", "null", "", LONG + " great fun"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # HF config / tokenizer unpacked from checkpoints go here, not into ~/.cache
    monkeypatch.setenv("TL_LIGHTNING_CACHE", str(tmp_path_factory.getbasetemp() / "tl_cache"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


def _trainer(**kwargs: Any) -> Any:
    import lightning as L

    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _probs(rows: list[dict[str, str]], labels: list[str]) -> torch.Tensor:
    return torch.tensor([[float(r[f"prob_{c}"]) for c in labels] for r in rows])


@pytest.fixture(scope="module")
def text_run(
    tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, TransferClassifier]:
    """A tiny BERT trained with max_length=8 on a 'review' column; its checkpoint moved out of the run folder."""
    from tl_lightning.data import TextClassificationDataModule

    root = tmp_path_factory.mktemp("text_run")
    train = _write_csv(
        root / "train.csv",
        ["review", "label"],
        [
            [t, lab]
            for t, lab in [
                ("a good movie", "pos"),
                ("an awful film", "neg"),
                ("great fun", "pos"),
                ("boring plot", "neg"),
            ]
            * 2
        ],
    )
    dm = TextClassificationDataModule(
        path=str(train), text_column="review", max_length=8, batch_size=4, val_fraction=0.0, test_fraction=0.0
    )
    model = TransferClassifier(f"hf:{tiny_bert_dir}", labels=dm.labels, backbone_kwargs={"pooling": "mean"})
    dm.set_preprocess(model.backbone.preprocess)
    trainer = _trainer(max_epochs=1)
    trainer.fit(model, datamodule=dm)
    run = root / "run"
    trainer.save_checkpoint(run / "checkpoints" / "last.ckpt")
    # what the old tl-predict read: a run folder config that disagrees with the checkpoint
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("data:\n  text_column: text\n  max_length: 64\n")
    moved = root / "elsewhere" / "model.ckpt"
    moved.parent.mkdir()
    shutil.copy(run / "checkpoints" / "last.ckpt", moved)
    return run / "checkpoints" / "last.ckpt", model.eval()


def _model_probs(model: TransferClassifier, texts: list[str], max_length: int) -> torch.Tensor:
    preprocess = model.backbone.preprocess.with_max_length(max_length)
    with torch.no_grad():
        return torch.cat([model(preprocess([t])).softmax(-1) for t in texts])


def test_text_predictions_use_the_checkpoint_settings_wherever_it_lies(
    text_run: tuple[Path, TransferClassifier], tmp_path: Path
) -> None:
    in_run, model = text_run
    moved = in_run.parent.parent.parent / "elsewhere" / "model.ckpt"
    assert model.preprocess.max_length == 8 and model.data_settings["text_column"] == "review"
    table = _write_csv(
        tmp_path / "new.csv", ["review_id", "review"], [[f"r{i}", t] for i, t in enumerate(TEXTS)]
    )

    s1 = predict(
        ckpt_path=str(moved),
        input=str(table),
        output=str(tmp_path / "a.csv"),
        id_column="review_id",
        batch_size=3,
    )
    s2 = predict(ckpt_path=str(in_run), input=str(table), output=str(tmp_path / "b.csv"), batch_size=3)
    a, b = _rows(tmp_path / "a.csv"), _rows(tmp_path / "b.csv")
    assert [r["id"] for r in a] == [f"r{i}" for i in range(len(TEXTS))]
    assert [r["id"] for r in b] == [str(i) for i in range(len(TEXTS))]  # no id_column: row numbers
    labels = model.labels
    expected = _model_probs(model, TEXTS, 8)
    torch.testing.assert_close(_probs(a, labels), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(_probs(b, labels), expected, atol=1e-5, rtol=0)
    # truncation matters: the backbone's default length gives other probabilities for long texts
    assert (_model_probs(model, [LONG], 128) - expected[0]).abs().max() > 1e-4
    # NA / None / null are texts (not the empty text); every row has a label
    assert (expected[2] - expected[5]).abs().max() > 1e-5 and len({r["label"] for r in a} - set(labels)) == 0
    assert s1.settings["max_length"] == (8, "checkpoint") and s1.settings["text_column"] == (
        "review",
        "checkpoint",
    )
    assert s2.rows == s2.inputs == len(TEXTS) and sum(s2.label_counts.values()) == len(TEXTS)

    # explicit options override the stored settings
    body = _write_csv(tmp_path / "body.csv", ["body"], [[t] for t in TEXTS])
    s3 = predict(
        ckpt_path=str(moved),
        input=str(body),
        output=str(tmp_path / "c.csv"),
        text_column="body",
        max_length=4,
    )
    torch.testing.assert_close(
        _probs(_rows(tmp_path / "c.csv"), labels), _model_probs(model, TEXTS, 4), atol=1e-5, rtol=0
    )
    assert s3.settings["max_length"] == (4, "option") and s3.settings["text_column"] == ("body", "option")


def test_text_errors_name_the_columns_and_the_kind_of_input(
    text_run: tuple[Path, TransferClassifier],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    ckpt = text_run[0]
    table = _write_csv(tmp_path / "in.csv", ["body", "id"], [["fine", "1"]])
    err = run_cli([f"ckpt_path={ckpt}", f"input={table}", "output=p.csv"], tmp_path, monkeypatch, capsys)
    assert "['review'] not in" in err and "['body', 'id']" in err
    err = run_cli([f"ckpt_path={ckpt}", f"input={tmp_path}", "output=p.csv"], tmp_path, monkeypatch, capsys)
    assert "is a text model but input" in err and "is a folder" in err
    err = run_cli(
        [f"ckpt_path={ckpt}", f"input={table}", "output=p.csv", "image_size=32"],
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert "['image_size'] apply to image models" in err
    err = run_cli(
        [f"ckpt_path={ckpt}", f"input={table}", "output=p.csv", "max_length=1000"],
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert "max_length=1000 is more than the 128 tokens the model supports" in err
    assert not (tmp_path / "p.csv").exists()


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TransferClassifier, Path]:
    """test_resnet trained at 32 px (a size only the checkpoint knows), and a folder of 7 new images."""
    from PIL import Image

    from tl_lightning.data import ImageFolderDataModule

    root = tmp_path_factory.mktemp("image_run")
    for label, colour in {"cat": (200, 30, 30), "dog": (30, 200, 30), "eel": (30, 30, 200)}.items():
        (root / "train" / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), colour).save(root / "train" / label / f"{i}.png")
    dm = ImageFolderDataModule(
        root=str(root / "train"),
        image_size=32,
        batch_size=6,
        val_fraction=0.0,
        test_fraction=0.0,
        augment=False,
    )
    model = TransferClassifier("timm:test_resnet", labels=dm.labels, pretrained=False)
    dm.set_preprocess(model.backbone.preprocess)
    trainer = _trainer(max_epochs=1)
    trainer.fit(model, datamodule=dm)
    ckpt = root / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    new = root / "new"
    (new / "sub").mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (40, 34), (40 * i, 90, 250 - 30 * i)).save(new / f"{i}.png")
    Image.new("RGB", (36, 36), (1, 2, 3)).save(new / "sub" / "x.jpg")
    (new / "notes.txt").write_text("not an image")
    return ckpt, model.eval(), new


def _image_probs(model: TransferClassifier, folder: Path, names: list[str]) -> torch.Tensor:
    from tl_lightning.data import decode_image, image_eval_transform

    transform = image_eval_transform(model.preprocess)
    with torch.no_grad():
        batch = torch.stack([transform(decode_image(folder / n)) for n in names])
        return model(batch).softmax(-1)


def test_image_predictions_in_input_order_with_the_trained_size(
    image_run: tuple[Path, TransferClassifier, Path], tmp_path: Path
) -> None:
    ckpt, model, new = image_run
    assert model.preprocess.image_size == (32, 32)
    summary = predict(ckpt_path=str(ckpt), input=str(new), output=str(tmp_path / "p.csv"), batch_size=4)
    rows = _rows(tmp_path / "p.csv")
    names = [f"{i}.png" for i in range(6)] + ["sub/x.jpg"]
    assert [r["id"] for r in rows] == names
    assert list(rows[0]) == ["id", "label", "prob_cat", "prob_dog", "prob_eel"]
    probs = _probs(rows, model.labels)
    torch.testing.assert_close(probs, _image_probs(model, new, names), atol=1e-5, rtol=0)
    assert [r["label"] for r in rows] == [model.labels[i] for i in probs.argmax(-1).tolist()]
    assert summary.settings["image_size"] == (32, "checkpoint") and summary.skipped == []
    assert not skipped_path(tmp_path / "p.csv").exists()


@pytest.mark.ddp
def test_ddp_sim_writes_the_single_process_rows_in_input_order(
    image_run: tuple[Path, TransferClassifier, Path], tmp_path: Path
) -> None:
    ckpt, model, new = image_run
    options = [f"ckpt_path={ckpt}", f"input={new}", "batch_size=2", "trainer.enable_progress_bar=false"]
    single = predict(compose_predict_config([*options, f"output={tmp_path / 'one.csv'}"]))
    multi = predict(compose_predict_config([*options, f"output={tmp_path / 'two.csv'}", "trainer=ddp_sim"]))
    assert multi.devices.startswith("2 x cpu") and single.devices.startswith("1 x cpu")
    one, two = _rows(tmp_path / "one.csv"), _rows(tmp_path / "two.csv")
    # 7 inputs on 2 ranks: interleaved, unequal shares; merged back in input order, none lost
    assert [r["id"] for r in two] == [r["id"] for r in one] and len(two) == 7
    assert [r["label"] for r in two] == [r["label"] for r in one]
    torch.testing.assert_close(_probs(two, model.labels), _probs(one, model.labels), atol=1e-6, rtol=0)


def test_unreadable_images_are_skipped_and_reported_or_named(
    image_run: tuple[Path, TransferClassifier, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    ckpt, _model, new = image_run
    folder = tmp_path / "imgs"
    shutil.copytree(new, folder)
    (folder / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "p.csv"
    out.write_text("old predictions\n")
    # default on_bad_image=error: the file is named, and the old output is left as it was
    err = run_cli(
        [f"ckpt_path={ckpt}", f"input={folder}", f"output={out}", "overwrite=true"],
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert "broken.png" in err and "on_bad_image='skip'" in err
    assert out.read_text() == "old predictions\n" and [p.name for p in tmp_path.glob(".p.csv*")] == []

    summary = predict(
        ckpt_path=str(ckpt), input=str(folder), output=str(out), overwrite=True, on_bad_image="skip"
    )
    captured = capsys.readouterr()
    rows = _rows(out)
    assert [r["id"] for r in rows] == [f"{i}.png" for i in range(6)] + ["sub/x.jpg"]
    assert summary.rows == 7 and summary.inputs == 8 and [s[0] for s in summary.skipped] == ["sub/broken.png"]
    assert "skipped unreadable image sub/broken.png" in captured.err
    assert "skipped 1 unreadable image(s), listed in" in captured.out
    listed = _rows(skipped_path(out))
    assert [r["id"] for r in listed] == ["sub/broken.png"] and "broken.png" in listed[0]["reason"]
    # the list is an output too: not replaced without overwrite=true, removed when a rerun skips nothing
    (folder / "sub" / "broken.png").unlink()
    shutil.copy(skipped_path(out), skipped_path(tmp_path / "q.csv"))
    with pytest.raises(ConfigurationError, match="q.skipped.csv' already exists"):
        predict(ckpt_path=str(ckpt), input=str(folder), output=str(tmp_path / "q.csv"), on_bad_image="skip")
    predict(ckpt_path=str(ckpt), input=str(folder), output=str(out), on_bad_image="skip", overwrite=True)
    assert not skipped_path(out).exists() and len(_rows(out)) == 7


def test_multilabel_labels_above_threshold_and_trainer_options(tmp_path: Path) -> None:
    from PIL import Image

    model = TransferClassifier(
        "timm:test_resnet", labels=["a", "b", "c"], task="multilabel", pretrained=False
    )
    model.set_preprocess(model.backbone.preprocess.with_size(32))
    trainer = _trainer()
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    (tmp_path / "in").mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (90 * i, 20, 20)).save(tmp_path / "in" / f"{i}.png")
    base = {"ckpt_path": str(tmp_path / "m.ckpt"), "input": str(tmp_path / "in")}
    predict(**base, output=str(tmp_path / "all.csv"), threshold=0.0)
    predict(**base, output=str(tmp_path / "none.csv"), threshold=1.0)
    rows = _rows(tmp_path / "all.csv")
    assert {r["label"] for r in rows} == {"a|b|c"} and {r["label"] for r in _rows(tmp_path / "none.csv")} == {
        ""
    }
    probs = _probs(rows, ["a", "b", "c"])
    middle = float(probs[0].median())
    predict(**base, output=str(tmp_path / "mid.csv"), threshold=middle)
    expected = "|".join(c for c, p in zip("abc", probs[0].tolist()) if p > middle)
    assert _rows(tmp_path / "mid.csv")[0]["label"] == expected and expected.count("|") == 0
    # the trainer group works as in tl-train: precision reaches Trainer.predict
    summary = predict(
        compose_predict_config(
            [
                f"ckpt_path={base['ckpt_path']}",
                f"input={base['input']}",
                f"output={tmp_path / 'bf16.csv'}",
                "trainer.precision=bf16-mixed",
            ]
        )
    )
    assert summary.devices.endswith("bf16-mixed")
    assert (_probs(_rows(tmp_path / "bf16.csv"), ["a", "b", "c"]) - probs).abs().max() < 0.05
    # a run that leaves inputs out writes nothing
    with pytest.raises(DataError, match="missing"):
        predict(**base, output=str(tmp_path / "part.csv"), batch_size=1, trainer={"limit_predict_batches": 2})
    assert not (tmp_path / "part.csv").exists()


def test_nonfinite_probabilities_are_written_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from PIL import Image

    model = TransferClassifier("timm:test_resnet", labels=["a", "b"], pretrained=False)
    with torch.no_grad():
        for param in model.head.parameters():
            param.fill_(float("nan"))
    trainer = _trainer()
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    (tmp_path / "in").mkdir()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "in" / "0.png")
    summary = predict(
        ckpt_path=str(tmp_path / "m.ckpt"),
        input=str(tmp_path / "in"),
        output=str(tmp_path / "p.csv"),
        image_size=32,
    )
    row = _rows(tmp_path / "p.csv")[0]
    assert (row["label"], row["prob_a"], row["prob_b"]) == ("", "nan", "nan")
    assert summary.nonfinite_rows == 1 and "1 row(s) have NaN / inf probabilities" in capsys.readouterr().out


def run_cli(
    args: list[str],
    cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    expect: int = 1,
) -> str:
    """Run ``tl-predict`` in-process (Hydra parses argv) in ``cwd``; return its stderr (stdout for --help)."""
    capsys.readouterr()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["tl-predict", *args])
    code: Any = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    assert code == expect, (out, err)
    if expect == 1:
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("tl-predict: error") and "\n" not in last
        return last
    return out + err


@pytest.fixture
def garbage_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"PK\x03\x04 half a checkpoint")
    return path


def test_output_is_checked_before_anything_is_loaded(
    tmp_path: Path, garbage_ckpt: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    table = _write_csv(tmp_path / "in.csv", ["text"], [["a"]])
    (tmp_path / "link.csv").symlink_to(table)
    (tmp_path / "old.csv").write_text("keep me\n")
    cases = {
        "in.csv": "is the input",
        "./sub/../in.csv": "is the input",
        "link.csv": "is the input",
        "old.csv": "already exists; pass overwrite=true",
        "missing/p.csv": "does not exist",
        "preds.txt": "must be a .csv file",
    }
    (tmp_path / "sub").mkdir()
    for output, message in cases.items():
        # a garbage checkpoint: the output error comes first, so nothing was loaded
        err = run_cli(
            [f"ckpt_path={garbage_ckpt}", "input=in.csv", f"output={output}"], tmp_path, monkeypatch, capsys
        )
        assert message in err, (output, err)
    assert (tmp_path / "old.csv").read_text() == "keep me\n" and table.read_text() == "text\na\n"
    # with a writable output, the checkpoint is what fails
    err = run_cli(
        [f"ckpt_path={garbage_ckpt}", "input=in.csv", "output=new.csv"], tmp_path, monkeypatch, capsys
    )
    assert "not a readable checkpoint" in err and "garbage.ckpt" in err


def _unwritable_folder(tmp_path: Path) -> Path:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if not os.access(locked, os.W_OK):
        return locked
    if Path("/sys").is_dir():  # root writes anywhere but in sysfs
        return Path("/sys")
    pytest.skip("no folder this user cannot write to")


def test_unwritable_output_folder(tmp_path: Path, garbage_ckpt: Path) -> None:
    folder = _unwritable_folder(tmp_path)
    with pytest.raises(ConfigurationError, match="is not writable"):
        predict(ckpt_path=str(garbage_ckpt), input=str(garbage_ckpt), output=str(folder / "p.csv"))


def test_atomic_write_leaves_nothing_half_written(tmp_path: Path) -> None:
    target = tmp_path / "p.csv"
    target.write_text("before\n")

    def rows() -> Any:
        yield ["1", "x"]
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_csv_atomically(target, ["id", "label"], rows(), overwrite=True)
    assert target.read_text() == "before\n" and sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]
    with pytest.raises(ConfigurationError, match="appeared while predicting"):
        write_csv_atomically(target, ["id"], [["1"]])
    write_csv_atomically(target, ["id"], [["1"]], overwrite=True)
    assert target.read_text() == "id\n1\n" and sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]


def test_one_line_errors(
    image_run: tuple[Path, TransferClassifier, Path],
    tmp_path: Path,
    garbage_ckpt: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    ckpt, _, new = image_run
    table = _write_csv(tmp_path / "in.csv", ["text"], [["a"]])
    cases: list[tuple[list[str], list[str]]] = [
        ([f"input={table}"], ["ckpt_path is required"]),
        ([f"ckpt_path={tmp_path / 'nope.ckpt'}", f"input={table}"], ["nope.ckpt", "does not exist"]),
        ([f"ckpt_path={garbage_ckpt}", f"input={table}"], ["garbage.ckpt", "not a readable checkpoint"]),
        ([f"ckpt_path={ckpt}", f"input={tmp_path / 'gone'}"], ["input", "gone", "does not exist"]),
        ([f"ckpt_path={ckpt}", f"input={table}"], ["is an image model but input", "is a file"]),
        ([f"ckpt_path={ckpt}", f"input={new}", "text_column=body"], ["['text_column'] apply to text models"]),
        (
            [f"ckpt_path={ckpt}", f"input={new}", "threshold=1.5"],
            ["threshold must be a finite number in [0, 1]", "1.5"],
        ),
        (
            [f"ckpt_path={ckpt}", f"input={new}", "batch_size=0"],
            ["batch_size must be an integer >= 1, got 0"],
        ),
        (
            [f"ckpt_path={ckpt}", f"input={new}", "on_bad_image=ignore"],
            ["on_bad_image must be one of", "'skip'"],
        ),
        (
            [f"ckpt_path={ckpt}", f"input={new}", "treshold=0.3"],
            ["unknown option 'treshold'", "did you mean 'threshold'"],
        ),
    ]
    if not torch.cuda.is_available():
        cases += [
            (
                [f"ckpt_path={ckpt}", f"input={new}", "trainer=gpu"],
                ["trainer.accelerator='gpu'", "no CUDA GPU"],
            )
        ]
    for args, fragments in cases:
        err = run_cli([*args, "output=p.csv"], tmp_path, monkeypatch, capsys)
        for fragment in fragments:
            assert fragment in err, (args, err)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigurationError, match="batch_size"):
        predict(ckpt_path=str(ckpt), input=str(new), output=str(tmp_path / "p.csv"), batch_size=0)
    with pytest.raises(ConfigurationError, match="did you mean 'threshold'"):
        predict(ckpt_path=str(ckpt), input=str(new), treshold=0.3)


def test_cli_help_and_a_run_leave_the_working_folder_clean(
    image_run: tuple[Path, TransferClassifier, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    ckpt, _, new = image_run
    text = run_cli(["--help"], tmp_path, monkeypatch, capsys, expect=0)
    for option in (
        "ckpt_path",
        "input",
        "output",
        "overwrite",
        "threshold",
        "batch_size",
        "text_column",
        "max_length",
        "image_size",
        "on_bad_image",
        "trainer=gpu",
        "ddp",
    ):
        assert option in text
    work = tmp_path / "work"
    work.mkdir()
    out = run_cli(
        [f"ckpt_path={ckpt}", f"input={new}", "output=preds.csv", "trainer.enable_progress_bar=false"],
        work,
        monkeypatch,
        capsys,
        expect=0,
    )
    assert "wrote preds.csv: 7 predictions" in out and "image_size=32 (checkpoint)" in out
    # Hydra wrote no run folder, .hydra/ or log file: only the predictions
    assert sorted(p.name for p in work.iterdir()) == ["preds.csv"]
    assert len(_rows(work / "preds.csv")) == 7
