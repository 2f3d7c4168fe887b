"""ImageFolderDataModule: labels, splits, transforms from the backbone, predict, bad data."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tl_lightning.backbones import ImagePreprocess
from tl_lightning.data import ImageFolderDataModule
from tl_lightning.errors import ConfigurationError, DataError

PRE = ImagePreprocess(input_size=(3, 48, 48), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _write(path: Path, size: int = 20, mode: str = "RGB", value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = np.full((size, size + 4, channels), value, dtype=np.uint8).squeeze(-1) if channels == 1 else np.full(
        (size, size + 4, channels), value, dtype=np.uint8
    )
    Image.fromarray(arr, mode=mode).save(path)


def _folder(root: Path, counts: dict[str, int], mode: str = "RGB") -> Path:
    for cls, n in counts.items():
        for i in range(n):
            _write(root / cls / f"{i:03d}.png", mode=mode)
    return root


def _dm(**kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(**{"batch_size": 4, **kwargs})
    dm.set_preprocess(PRE)
    return dm


def test_labels_sorted_and_lazy(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"zebra": 3, "ant": 3, "moth": 3})
    dm = ImageFolderDataModule(root=str(root))
    assert dm.labels == ["ant", "moth", "zebra"] and dm.num_classes == 3
    assert dm.class_to_idx == {"ant": 0, "moth": 1, "zebra": 2}


def test_seeded_stratified_split(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 20, "b": 10})
    dm = _dm(root=str(root), val_fraction=0.2, test_fraction=0.1, seed=1)
    dm.setup("fit")
    dm.setup("test")
    sizes = dm.split_sizes()
    assert sizes == {"train": 21, "val": 6, "test": 3}
    val = dm._datasets["val"].samples
    assert sorted(t for _, t in val) == [0, 0, 0, 0, 1, 1]  # stratified
    train_files = {p for p, _ in dm._datasets["train"].samples}
    assert not train_files & {p for p, _ in val}
    again = _dm(root=str(root), val_fraction=0.2, test_fraction=0.1, seed=1)
    again.setup("fit")
    assert again._datasets["val"].samples == val
    other = _dm(root=str(root), val_fraction=0.2, test_fraction=0.1, seed=2)
    other.setup("fit")
    assert other._datasets["val"].samples != val


def test_loaders_use_backbone_preprocess(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 4, "b": 4}, mode="L")  # grayscale files -> RGB tensors
    dm = _dm(root=str(root), val_fraction=0.25, test_fraction=0.25)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 48, 48) and x.dtype == torch.float32
    assert y.dtype == torch.long and set(y.tolist()) <= {0, 1}
    xv, _ = next(iter(dm.val_dataloader()))
    # constant grey 128 normalized with mean=std=0.5 everywhere in eval
    torch.testing.assert_close(xv, torch.full_like(xv, (128 / 255 - 0.5) / 0.5))
    small = _dm(root=str(root), image_size=32)
    assert next(iter(small.train_dataloader()))[0].shape[-2:] == (32, 32)


def test_explicit_train_val_test_dirs(tmp_path: Path) -> None:
    tr = _folder(tmp_path / "train", {"a": 5, "b": 5})
    va = _folder(tmp_path / "val", {"a": 2, "b": 1})
    te = _folder(tmp_path / "test", {"a": 1, "b": 1})
    dm = _dm(train_dir=str(tr), val_dir=str(va), test_dir=str(te))
    dm.setup()
    assert {k: v for k, v in dm.split_sizes().items() if k != "predict"} == {"train": 10, "val": 3, "test": 2}


def test_model_labels_fix_the_class_order(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"cat": 2, "dog": 2})
    dm = _dm(root=str(root), model_labels=["dog", "cat", "bird"], val_fraction=0.0, test_fraction=0.0)
    assert dm.labels == ["dog", "cat", "bird"]
    dm.setup("fit")
    targets = {p.parent.name: t for p, t in dm._datasets["train"].samples}
    assert targets == {"dog": 0, "cat": 1}


def test_label_unknown_to_model_is_an_error(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"cat": 2, "dog": 2, "fox": 2})
    dm = _dm(root=str(root), model_labels=["cat", "dog"])
    with pytest.raises(DataError, match=r"\['fox'\]"):
        dm.setup("fit")


def test_predict_dir(tmp_path: Path) -> None:
    _write(tmp_path / "p" / "b.png")
    _write(tmp_path / "p" / "sub" / "a.jpg")
    (tmp_path / "p" / "notes.txt").write_text("not an image")
    dm = _dm(predict_dir=str(tmp_path / "p"), model_labels=["x", "y"])
    batches = list(dm.predict_dataloader())
    assert dm.predict_ids == ["b.png", "sub/a.jpg"]
    assert len(batches) == 1 and isinstance(batches[0], torch.Tensor) and batches[0].shape == (2, 3, 48, 48)
    assert dm.labels == ["x", "y"]


def test_missing_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="nope.*does not exist"):
        ImageFolderDataModule(root=str(missing)).labels


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 2})
    (root / "empty_cls").mkdir()
    with pytest.raises(DataError, match="empty_cls"):
        ImageFolderDataModule(root=str(root)).labels


def test_no_class_subfolders(tmp_path: Path) -> None:
    _write(tmp_path / "flat" / "x.png")
    with pytest.raises(DataError, match="no class subfolders.*predict_dir"):
        ImageFolderDataModule(root=str(tmp_path / "flat")).labels


def test_unreadable_image_error_names_the_file(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 3, "b": 3})
    (root / "a" / "broken.png").write_bytes(b"definitely not a png")
    dm = _dm(root=str(root), val_fraction=0.0, test_fraction=0.0, batch_size=16)
    with pytest.raises(DataError, match="broken.png.*on_bad_image='skip'"):
        next(iter(dm.train_dataloader()))


def test_unreadable_image_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _folder(tmp_path / "d", {"a": 3, "b": 3})
    (root / "a" / "broken.png").write_bytes(b"junk")
    (root / "b" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0junk")
    dm = _dm(root=str(root), val_fraction=0.0, test_fraction=0.0, batch_size=16, on_bad_image="skip")
    with caplog.at_level(logging.WARNING, logger="tl_lightning.data"):
        x, y = next(iter(dm.train_dataloader()))
    assert x.shape[0] == 6 and dm.num_skipped == 2
    assert any("skipped 2 unreadable" in r.getMessage() for r in caplog.records)


def test_setup_without_preprocess(tmp_path: Path) -> None:
    dm = ImageFolderDataModule(root=str(_folder(tmp_path / "d", {"a": 2, "b": 2})))
    with pytest.raises(DataError, match="set_preprocess"):
        dm.setup("fit")


def test_wrong_preprocess_kind(tmp_path: Path) -> None:
    from tl_lightning.backbones import TextPreprocess

    with pytest.raises(ConfigurationError, match="ImagePreprocess"):
        ImageFolderDataModule(root=str(tmp_path)).set_preprocess(TextPreprocess(tokenizer=None))


def test_missing_test_split_and_argument_errors(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 3, "b": 3})
    with pytest.raises(DataError, match="test_fraction"):
        _dm(root=str(root), test_fraction=0.0).test_dataloader()
    assert _dm(root=str(root), val_fraction=0.0).val_dataloader() == []  # validation skipped
    with pytest.raises(ConfigurationError, match="not both"):
        ImageFolderDataModule(root="x", train_dir="y")
    with pytest.raises(ConfigurationError, match="on_bad_image"):
        ImageFolderDataModule(root="x", on_bad_image="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="val_fraction"):
        ImageFolderDataModule(root="x", val_fraction=0.6, test_fraction=0.5)


def test_sort_labels_is_deterministic_for_equal_integers() -> None:
    from tl_lightning.data._base import sort_labels

    assert sort_labels(["02", "1", "2", "01", "10"]) == ["01", "1", "02", "2", "10"]
    assert sort_labels(["2", "01", "1", "02", "10"]) == ["01", "1", "02", "2", "10"]


def _truncated_jpeg(path: Path) -> None:
    """A JPEG cut in half: its header passes PIL's verify(), decoding it fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_skip_catches_truncated_images_in_training_and_predict(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 3, "b": 3})
    _truncated_jpeg(root / "a" / "cut.jpg")
    dm = _dm(root=str(root), val_fraction=0.0, test_fraction=0.0, batch_size=16, on_bad_image="skip")
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape[0] == 6 and dm.num_skipped == 1
    assert dm.skipped_files["root"] == [str(root / "a" / "cut.jpg")]

    _write(tmp_path / "p" / "ok.png")
    _truncated_jpeg(tmp_path / "p" / "cut.jpg")
    pred = _dm(predict_dir=str(tmp_path / "p"), model_labels=["a", "b"], on_bad_image="skip")
    batches = list(pred.predict_dataloader())
    assert pred.predict_ids == ["ok.png"] and batches[0].shape[0] == 1


def test_16_bit_images_are_decoded_not_white(tmp_path: Path) -> None:
    for cls, value in (("dark", 4112), ("mid", 32896)):  # 8-bit 16 and 128
        for i in range(2):
            (tmp_path / "d" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((20, 24), value, dtype=np.uint16)).save(tmp_path / "d" / cls / f"{i}.png")
    pre = ImagePreprocess(input_size=(3, 16, 16), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    dm = ImageFolderDataModule(root=str(tmp_path / "d"), val_fraction=0.0, test_fraction=0.0, augment=False,
                               batch_size=4)
    dm.set_preprocess(pre)
    x, y = next(iter(dm.train_dataloader()))
    means = {int(t): float(img.mean()) for img, t in zip(x, y)}
    assert means[0] == pytest.approx(16 / 255, abs=1e-4) and means[1] == pytest.approx(128 / 255, abs=1e-4)
    gray = ImageFolderDataModule(root=str(tmp_path / "d"), val_fraction=0.0, test_fraction=0.0, augment=False)
    gray.set_preprocess(ImagePreprocess(input_size=(1, 16, 16), mean=(0.0,), std=(1.0,)))
    x, _ = next(iter(gray.train_dataloader()))
    assert x.shape[1] == 1 and float(x.max()) == pytest.approx(128 / 255, abs=1e-4)


def test_near_duplicate_class_folders_warn_once(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"cat": 2, "Cat": 2, "dog ": 2, "dog": 2})
    with pytest.warns(UserWarning, match=r"class folder names that differ only by case.*\['Cat', 'cat'\]; "
                                         r"\['dog', 'dog '\]"):
        assert ImageFolderDataModule(root=str(root)).labels == ["Cat", "cat", "dog", "dog "]


def test_predict_bad_images_error_or_skip_and_record(tmp_path: Path) -> None:
    _write(tmp_path / "p" / "ok.png")
    Image.new("LAB", (8, 8)).save(tmp_path / "p" / "lab.tif")  # a mode that cannot be decoded correctly
    err = _dm(predict_dir=str(tmp_path / "p"), model_labels=["a", "b"])
    with pytest.raises(DataError, match=r"lab\.tif.*mode 'LAB'"):
        list(err.predict_dataloader())
    skip = _dm(predict_dir=str(tmp_path / "p"), model_labels=["a", "b"], on_bad_image="skip")
    batches = list(skip.predict_dataloader())
    assert skip.predict_ids == ["ok.png"] and batches[0].shape[0] == 1
    assert skip.skipped_files["predict"] == [str(tmp_path / "p" / "lab.tif")]


def test_effective_preprocess_input_settings_and_drop_last(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 5, "b": 4})
    dm = ImageFolderDataModule(root=str(root), image_size=32, batch_size=4, val_fraction=0.0, test_fraction=0.0,
                               drop_last=True)
    assert dm.input_settings() == {"image_size": 32}
    dm.set_preprocess(PRE)
    assert dm.effective_preprocess().input_size == (3, 32, 32) and dm.input_settings() == {"image_size": 32}
    assert dm.train_size() == 9
    assert [len(y) for _, y in dm.train_dataloader()] == [4, 4]  # the batch of 1 is dropped
    assert [len(y) for _, y in _dm(root=str(root), val_fraction=0.0, test_fraction=0.0).train_dataloader()] == [4, 4, 1]
    plain = _dm(root=str(root))
    assert plain.input_settings() == {"image_size": 48}  # the backbone's size once the preprocess is set
