"""TextClassificationDataModule: file formats, columns, labels, splits, tokenization, predict."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch

from tl_lightning import TransferClassifier
from tl_lightning.backbones import ImagePreprocess, TextPreprocess
from tl_lightning.data import TextClassificationDataModule
from tl_lightning.errors import ConfigurationError, DataError

ROWS = [
    ("a good fun movie", "pos"),
    ("great film", "pos"),
    ("an awful boring plot", "neg"),
    ("bad actor", "neg"),
    ("the plot of the film", "plot"),
]


@pytest.fixture(scope="module")
def tokenizer_pre(tiny_bert_dir: Path) -> TextPreprocess:
    from transformers import AutoTokenizer

    return TextPreprocess(tokenizer=AutoTokenizer.from_pretrained(str(tiny_bert_dir)), max_length=64)


def _csv(path: Path, rows=ROWS, repeat: int = 4, **kwargs) -> Path:
    df = pd.DataFrame(rows * repeat, columns=["text", "label"])
    df.to_csv(path, index=False, **kwargs)
    return path


def _dm(pre: TextPreprocess, **kwargs) -> TextClassificationDataModule:
    dm = TextClassificationDataModule(**{"batch_size": 4, **kwargs})
    dm.set_preprocess(pre)
    return dm


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "csv.bz2", "csv.gz"])
def test_reads_formats(tmp_path: Path, fmt: str) -> None:
    df = pd.DataFrame(ROWS, columns=["text", "label"])
    path = tmp_path / f"data.{fmt}"
    if fmt.startswith("csv"):
        df.to_csv(path, index=False)
    elif fmt == "tsv":
        df.to_csv(path, sep="\t", index=False)
    else:
        path.write_text("\n".join(json.dumps(r) for r in df.to_dict("records")))
    assert TextClassificationDataModule(path=str(path)).labels == ["neg", "plot", "pos"]


def test_batches_are_tokenized_with_dynamic_padding(tmp_path: Path, tokenizer_pre: TextPreprocess) -> None:
    dm = _dm(tokenizer_pre, path=str(_csv(tmp_path / "d.csv")), keep_labels=["pos", "neg"], val_fraction=0.25,
             test_fraction=0.25)
    assert dm.labels == ["neg", "pos"]
    tokens, y = next(iter(dm.val_dataloader()))
    assert set(tokens) >= {"input_ids", "attention_mask"}
    longest = int(tokens["attention_mask"].sum(-1).max())
    assert tokens["input_ids"].shape[1] == longest < 64  # padded to the batch, not to max_length
    assert y.dtype == torch.long and set(y.tolist()) <= {0, 1}
    short = _dm(tokenizer_pre, path=str(_csv(tmp_path / "d.csv")), max_length=4)
    tokens, _ = next(iter(short.train_dataloader()))
    assert tokens["input_ids"].shape[1] <= 4


def test_keep_labels_and_seeded_splits(tmp_path: Path, tokenizer_pre: TextPreprocess) -> None:
    path = str(_csv(tmp_path / "d.csv", repeat=10))  # 10 rows per label
    dm = _dm(tokenizer_pre, path=path, keep_labels=["pos", "neg"], val_fraction=0.2, test_fraction=0.1, seed=3)
    dm.setup("fit")
    dm.setup("test")
    assert dm.split_sizes() == {"train": 28, "val": 8, "test": 4}
    val = dm._datasets["val"]
    assert sorted(val.targets) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert all("plot of the" not in t for t in dm._datasets["train"].texts)
    again = _dm(tokenizer_pre, path=path, keep_labels=["pos", "neg"], val_fraction=0.2, test_fraction=0.1, seed=3)
    again.setup("fit")
    assert again._datasets["val"].texts == val.texts and again._datasets["val"].targets == val.targets


def test_max_train_samples(tmp_path: Path, tokenizer_pre: TextPreprocess) -> None:
    path = str(_csv(tmp_path / "d.csv", repeat=10))
    dm = _dm(tokenizer_pre, path=path, max_train_samples=7, seed=0)
    dm.setup("fit")
    assert len(dm._datasets["train"]) == 7
    dm2 = _dm(tokenizer_pre, path=path, max_train_samples=7, seed=0)
    dm2.setup("fit")
    assert dm2._datasets["train"].texts == dm._datasets["train"].texts


def test_explicit_files_and_custom_columns(tmp_path: Path, tokenizer_pre: TextPreprocess) -> None:
    df = pd.DataFrame({"review": ["good", "bad", "fun", "awful"], "stars": [1, 0, 1, 0]})
    df.to_csv(tmp_path / "train.csv", index=False)
    df.iloc[:2].to_json(tmp_path / "val.jsonl", orient="records", lines=True)
    dm = _dm(tokenizer_pre, train_path=str(tmp_path / "train.csv"), val_path=str(tmp_path / "val.jsonl"),
             text_column="review", label_column="stars", test_fraction=0.0)
    assert dm.labels == ["0", "1"]
    dm.setup("fit")
    assert dm.split_sizes() == {"train": 4, "val": 2, "test": 0}
    assert dm._datasets["val"].targets == [1, 0]


def test_missing_column_lists_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path / "d.csv")
    with pytest.raises(DataError, match=r"\['sentiment'\].*columns present: \['text', 'label'\]"):
        TextClassificationDataModule(path=str(path), label_column="sentiment").labels


def test_label_unknown_to_model(tmp_path: Path, tokenizer_pre: TextPreprocess) -> None:
    dm = _dm(tokenizer_pre, path=str(_csv(tmp_path / "d.csv")), model_labels=["neg", "pos"])
    with pytest.raises(DataError, match=r"\['plot'\].*not trained on"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("content", "kwargs", "error", "fragment"),
    [
        (None, {}, DataError, "does not exist"),
        ("text,label\nhi,pos\n", {"keep_labels": ["neg"]}, DataError, r"keep_labels \['neg'\]"),
        ("text,label\nhi,\n", {}, DataError, "empty labels"),
    ],
)
def test_bad_files(tmp_path: Path, content, kwargs, error, fragment) -> None:
    path = tmp_path / "d.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match=fragment):
        TextClassificationDataModule(path=str(path), **kwargs).labels


def test_unsupported_extension(tmp_path: Path) -> None:
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match="'.xlsx'.*supported"):
        TextClassificationDataModule(path=str(tmp_path / "d.xlsx")).labels


def test_preprocess_required_and_checked(tmp_path: Path) -> None:
    dm = TextClassificationDataModule(path=str(_csv(tmp_path / "d.csv")))
    with pytest.raises(DataError, match="set_preprocess"):
        dm.setup("fit")
    with pytest.raises(ConfigurationError, match="TextPreprocess"):
        dm.set_preprocess(ImagePreprocess())
    with pytest.raises(ConfigurationError, match="not both"):
        TextClassificationDataModule(path="a.csv", train_path="b.csv")


def test_predict_file_without_labels(tmp_path: Path, tokenizer_pre: TextPreprocess) -> None:
    pd.DataFrame({"uid": ["r1", "r2", "r3"], "text": ["good", "bad film", "fun"]}).to_csv(tmp_path / "p.csv", index=False)
    dm = _dm(tokenizer_pre, predict_path=str(tmp_path / "p.csv"), model_labels=["neg", "pos"], id_column="uid")
    batches = list(dm.predict_dataloader())
    assert dm.predict_ids == ["r1", "r2", "r3"] and dm.labels == ["neg", "pos"]
    assert isinstance(batches[0], dict) and batches[0]["input_ids"].shape[0] == 3
    dm2 = _dm(tokenizer_pre, predict_path=str(tmp_path / "p.csv"), model_labels=["neg", "pos"])
    dm2.setup("predict")
    assert dm2.predict_ids == ["0", "1", "2"]


def test_fit_and_predict_with_tiny_bert(tmp_path: Path, tiny_bert_dir: Path) -> None:
    dm = TextClassificationDataModule(path=str(_csv(tmp_path / "d.csv", repeat=4)), keep_labels=["pos", "neg"],
                                      batch_size=4, val_fraction=0.25, test_fraction=0.25,
                                      predict_path=str(tmp_path / "d.csv"))
    model = TransferClassifier(f"hf:{tiny_bert_dir}", labels=dm.labels, lr=1e-3)
    dm.set_preprocess(model.backbone.preprocess)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    assert {"train/loss", "val/loss", "val/acc", "val/f1"} <= set(trainer.callback_metrics)
    # the model records how its inputs were read (kept in checkpoints for prediction)
    assert model.data_settings == {"text_column": "text", "max_length": 128, "encoding": "utf-8", "separator": None}
    assert 0.0 <= trainer.test(model, dm, verbose=False)[0]["test/acc"] <= 1.0
    probs = torch.cat(trainer.predict(model, dm))
    assert probs.shape == (len(dm.predict_ids), 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)))
    # the checkpoint rebuilds the text model (config + tokenizer from the folder, weights from the state dict)
    trainer.save_checkpoint(tmp_path / "text.ckpt")
    loaded = TransferClassifier.load_from_checkpoint(tmp_path / "text.ckpt")
    assert loaded.labels == ["neg", "pos"] and loaded.hparams.pretrained is False
    tokens = next(iter(dm.predict_dataloader()))
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model(tokens))


@pytest.mark.assets
def test_rotten_tomatoes_labels_and_size() -> None:
    from tl_lightning.assets import AssetUnavailableError, rotten_tomatoes_path

    try:
        path = rotten_tomatoes_path()
    except AssetUnavailableError as err:
        pytest.skip(str(err))
    dm = TextClassificationDataModule(path=str(path), label_column="category", keep_labels=["fresh", "rotten"])
    assert dm.labels == ["fresh", "rotten"]
    table = dm._labelled_tables()["all"]
    texts, labels = table.texts, [names[0] for names in table.names]
    assert len(texts) == 4866 and abs(labels.count("fresh") - labels.count("rotten")) < 100


def test_checkpoint_with_hydra_lists_loads_weights_only(tmp_path: Path, tokenizer_pre: TextPreprocess) -> None:
    from omegaconf import OmegaConf

    keep = OmegaConf.create({"keep": ["pos", "neg"]}).keep  # what Hydra passes: a ListConfig
    dm = TextClassificationDataModule(path=str(_csv(tmp_path / "d.csv")), keep_labels=keep, batch_size=8)
    assert type(dm.hparams.keep_labels) is list
    model = TransferClassifier("timm:test_resnet", labels=dm.labels, pretrained=False)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    images = torch.utils.data.TensorDataset(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))
    trainer.fit(model, torch.utils.data.DataLoader(images, batch_size=4))
    trainer.datamodule = dm  # as if fitted with it: its hparams go into the checkpoint
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    raw = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert raw["datamodule_hyper_parameters"]["keep_labels"] == ["pos", "neg"]


ML_ROWS = [
    ("a good fun movie", "comedy|family"),
    ("great film", "drama"),
    ("an awful boring plot", "drama|horror"),
    ("bad actor", "horror"),
    ("the plot of the film", "comedy"),
]


def test_multilabel_rows_give_multi_hot_targets(tmp_path: Path, tokenizer_pre: TextPreprocess) -> None:
    dm = _dm(tokenizer_pre, path=str(_csv(tmp_path / "m.csv", rows=ML_ROWS, repeat=4)), label_separator="|",
             val_fraction=0.2, test_fraction=0.2)
    assert dm.multilabel
    assert dm.labels == ["comedy", "drama", "family", "horror"]
    dm.setup("fit")
    _, y = next(iter(dm.train_dataloader()))
    assert y.dtype == torch.float and y.shape[1] == 4
    assert set(y.sum(1).tolist()) <= {1.0, 2.0}
    texts = dm._datasets["train"].texts
    targets = dm._datasets["train"].targets
    row = texts.index("a good fun movie")
    assert targets[row] == [1.0, 0.0, 1.0, 0.0]  # comedy + family


def test_multilabel_keep_labels_drops_other_labels_and_empty_rows(tmp_path: Path, tokenizer_pre: TextPreprocess) -> None:
    dm = _dm(tokenizer_pre, path=str(_csv(tmp_path / "m.csv", rows=ML_ROWS, repeat=4)), label_separator="|",
             keep_labels=["drama", "horror"], val_fraction=0.25, test_fraction=0.25)
    assert dm.labels == ["drama", "horror"]
    dm.setup("fit")
    dm.setup("test")
    used = [t for split in ("train", "val", "test") for t in dm._datasets[split].texts]
    assert "the plot of the film" not in used  # its only label (comedy) was dropped
    assert "a good fun movie" not in used  # comedy|family: nothing kept
    assert len(used) == 3 * 4  # great film, awful boring plot, bad actor; x4
    targets = [t for split in ("train", "val", "test") for t in dm._datasets[split].targets]
    assert [1.0, 1.0] in targets  # drama|horror kept both


def test_multilabel_empty_label_cell_is_reported(tmp_path: Path) -> None:
    path = _csv(tmp_path / "m.csv", rows=[*ML_ROWS, ("nothing here", "|")], repeat=2)
    dm = TextClassificationDataModule(path=str(path), label_separator="|")
    with pytest.raises(DataError, match=r"no label between the '\|' separators in rows \(0-based\) \[5, 11\]"):
        _ = dm.labels


def test_multilabel_trains_a_multilabel_classifier(tmp_path: Path, tiny_bert_dir: Path) -> None:
    dm = TextClassificationDataModule(path=str(_csv(tmp_path / "m.csv", rows=ML_ROWS, repeat=4)), label_separator="|",
                                      batch_size=4, val_fraction=0.2, test_fraction=0.2)
    model = TransferClassifier(f"hf:{tiny_bert_dir}", labels=dm.labels, task="multilabel", lr=1e-3)
    dm.set_preprocess(model.backbone.preprocess)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)
    assert 0.0 <= trainer.test(model, dm, verbose=False)[0]["test/acc"] <= 1.0


# -- labels and texts as written ------------------------------------------------------------
def test_labels_are_kept_as_written(tmp_path: Path, tokenizer_pre: TextPreprocess) -> None:
    (tmp_path / "d.csv").write_text("text,label\n" + "good,01\nfun,1\nbad,007\ngreat,10\n" * 3)
    dm = _dm(tokenizer_pre, path=str(tmp_path / "d.csv"), val_fraction=0.0, test_fraction=0.0)
    assert dm.labels == ["01", "1", "007", "10"]  # numeric order; pandas' guess merged 01 and 1, lost 007
    dm.setup("fit")
    train = dm._datasets["train"]
    assert sorted(set(zip(train.texts, train.targets))) == [("bad", 2), ("fun", 1), ("good", 0), ("great", 3)]


def test_na_like_texts_are_texts_and_empty_texts_are_reported(tmp_path: Path, tokenizer_pre: TextPreprocess) -> None:
    (tmp_path / "d.csv").write_text("text,label\n" + "NA,NA\nNone,b\nnull,NA\nnan,b\n" * 2)
    dm = _dm(tokenizer_pre, path=str(tmp_path / "d.csv"), val_fraction=0.0, test_fraction=0.0)
    assert dm.labels == ["NA", "b"]
    dm.setup("fit")
    assert sorted(dm._datasets["train"].texts) == sorted(["NA", "None", "null", "nan"] * 2)
    (tmp_path / "e.csv").write_text('text,label\nfine,a\n"",b\n  ,a\nok,b\n')
    with pytest.raises(DataError, match=r"text \[1, 2\] / label \[\] \(2 empty texts"):
        _ = TextClassificationDataModule(path=str(tmp_path / "e.csv")).labels


def test_predict_keeps_na_like_and_empty_texts(tmp_path: Path, tokenizer_pre: TextPreprocess) -> None:
    (tmp_path / "p.csv").write_text('id,text\n7,NA\n8,""\n9,None\n')
    dm = _dm(tokenizer_pre, predict_path=str(tmp_path / "p.csv"), model_labels=["neg", "pos"], id_column="id")
    batches = list(dm.predict_dataloader())
    assert dm._datasets["predict"].texts == ["NA", "", "None"] and dm.predict_ids == ["7", "8", "9"]
    assert batches[0]["input_ids"].shape[0] == 3
    (tmp_path / "p.jsonl").write_text('{"text": null}\n{"text": "NA"}\n')
    dm = _dm(tokenizer_pre, predict_path=str(tmp_path / "p.jsonl"), model_labels=["neg", "pos"])
    dm.setup("predict")
    assert dm._datasets["predict"].texts == ["", "NA"]


def test_json_list_labels_are_multi_label_rows(tmp_path: Path, tokenizer_pre: TextPreprocess) -> None:
    rows = [("a good fun movie", ["comedy", "family"]), ("great film", ["drama"]), ("bad actor", "horror"),
            ("an awful boring plot", ["drama", "horror"])]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows * 3))
    dm = _dm(tokenizer_pre, path=str(tmp_path / "m.jsonl"), val_fraction=0.0, test_fraction=0.0)
    assert dm.multilabel  # automatic: the label column holds lists
    assert dm.labels == ["comedy", "drama", "family", "horror"]  # not "['comedy', 'family']"
    dm.setup("fit")
    train = dm._datasets["train"]
    assert train.targets[train.texts.index("a good fun movie")] == [1.0, 0.0, 1.0, 0.0]
    assert train.targets[train.texts.index("bad actor")] == [0.0, 0.0, 0.0, 1.0]  # a string cell: one label
    _, y = next(iter(dm.train_dataloader()))
    assert y.dtype == torch.float and y.shape[1] == 4
    plain = _dm(tokenizer_pre, path=str(_csv(tmp_path / "d.csv")))
    assert not plain.multilabel
    (tmp_path / "e.jsonl").write_text('{"text": "x", "label": []}\n{"text": "y", "label": ["a"]}\n')
    with pytest.raises(DataError, match=r"empty lists in rows \(0-based\) \[0\]"):
        _ = TextClassificationDataModule(path=str(tmp_path / "e.jsonl")).labels


def test_near_duplicate_labels_give_one_warning_and_stay_separate(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("text,label\n" + "a,pos\nb,pos \nc,Pos\nd,neg\ne,NEG\nf,other\n" * 2)
    dm = TextClassificationDataModule(path=str(tmp_path / "d.csv"))
    with pytest.warns(UserWarning, match=r"differ only by case or surrounding whitespace.*"
                                         r"\['NEG', 'neg'\]; \['Pos', 'pos', 'pos '\]") as record:
        assert dm.labels == ["NEG", "Pos", "neg", "other", "pos", "pos "]
        _ = dm.labels  # cached: no second warning
    assert len([w for w in record if "differ only by case" in str(w.message)]) == 1


def test_encoding_and_separator_options(tmp_path: Path, tokenizer_pre: TextPreprocess) -> None:
    (tmp_path / "d.csv").write_bytes(("text;label\n" + "café bien;pos\nmauvais, trop;neg\n" * 3).encode("cp1252"))
    with pytest.raises(DataError, match=r"data\.separator=';'"):
        _ = TextClassificationDataModule(path=str(tmp_path / "d.csv"), encoding="cp1252").labels
    with pytest.raises(DataError, match=r"not valid utf-8: byte 0xe9 at byte position 14 \(line 2\).*data\.encoding=cp1252"):
        _ = TextClassificationDataModule(path=str(tmp_path / "d.csv"), separator=";").labels
    dm = _dm(tokenizer_pre, path=str(tmp_path / "d.csv"), separator=";", encoding="cp1252", val_fraction=0.0,
             test_fraction=0.0)
    dm.setup("fit")
    assert dm.labels == ["neg", "pos"] and "café bien" in dm._datasets["train"].texts
    assert dm.input_settings() == {"text_column": "text", "max_length": 64, "encoding": "cp1252", "separator": ";"}
    with pytest.raises(ConfigurationError, match="unknown encoding"):
        TextClassificationDataModule(path="x.csv", encoding="utf-9")


# -- model limits and public API -------------------------------------------------------------
def test_max_length_beyond_the_model_positions_is_refused(tmp_path: Path, tokenizer_pre: TextPreprocess) -> None:
    # the tiny tokenizer has no model_max_length (transformers' 1e30 sentinel): the limit comes from config.json
    assert tokenizer_pre.tokenizer.model_max_length > 10**9
    dm = TextClassificationDataModule(path=str(_csv(tmp_path / "d.csv")), max_length=512)
    with pytest.raises(ConfigurationError, match=r"max_length=512 is more than the 128 tokens.*"
                                                 r"max_position_embeddings.*data\.max_length=128"):
        dm.set_preprocess(tokenizer_pre)
    assert dm.preprocess is None  # not half set
    with pytest.raises(ConfigurationError, match=r"the backbone's max_length=300 is more than the 128"):
        _dm(tokenizer_pre.with_max_length(300), path=str(_csv(tmp_path / "d.csv")))
    ok = _dm(tokenizer_pre, path=str(_csv(tmp_path / "d.csv")), max_length=128)
    assert ok.effective_preprocess().max_length == 128


def test_max_length_checked_against_model_max_length(tmp_path: Path, tokenizer_pre: TextPreprocess) -> None:
    import copy

    tokenizer = copy.copy(tokenizer_pre.tokenizer)
    tokenizer.model_max_length = 32
    dm = TextClassificationDataModule(path=str(_csv(tmp_path / "d.csv")), max_length=48)
    with pytest.raises(ConfigurationError, match=r"48 is more than the 32 tokens.*model_max_length"):
        dm.set_preprocess(TextPreprocess(tokenizer=tokenizer, max_length=16))


def test_effective_preprocess_input_settings_and_drop_last(tmp_path: Path, tokenizer_pre: TextPreprocess) -> None:
    dm = TextClassificationDataModule(path=str(_csv(tmp_path / "d.csv", repeat=2)), max_length=16, batch_size=3,
                                      val_fraction=0.0, test_fraction=0.0, drop_last=True)
    assert dm.input_settings()["max_length"] == 16  # before set_preprocess: the override
    dm.set_preprocess(tokenizer_pre)
    assert dm.effective_preprocess().max_length == 16 and dm.preprocess is tokenizer_pre
    assert dm.train_size() == 10  # known before fit
    assert [len(y) for _, y in dm.train_dataloader()] == [3, 3, 3]  # the last batch of 1 is dropped
    keep = _dm(tokenizer_pre, path=str(_csv(tmp_path / "d.csv", repeat=2)), batch_size=3, val_fraction=0.0,
               test_fraction=0.0)
    assert sorted(len(y) for _, y in keep.train_dataloader()) == [1, 3, 3, 3]
    few = _dm(tokenizer_pre, path=str(_csv(tmp_path / "d.csv", repeat=2)), batch_size=16, drop_last=True,
              val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(DataError, match=r"drops every training batch: 10 training samples < batch_size 16"):
        few.train_dataloader()
    with pytest.raises(ConfigurationError, match="drop_last must be true or false"):
        TextClassificationDataModule(path="x.csv", drop_last="yes")  # type: ignore[arg-type]
