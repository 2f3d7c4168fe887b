"""ImageFolderDataModule: one folder per class, transforms from the backbone's preprocess."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

from torch.utils.data import Dataset, default_collate
from typing_extensions import override

from tl_lightning.backbones._base import ImagePreprocess
from tl_lightning.data._base import ClassificationDataModule, stratified_split
from tl_lightning.data._images import decode_image
from tl_lightning.data._transforms import image_eval_transform, image_train_transform
from tl_lightning.errors import ConfigurationError, DataError

__all__ = ["ImageFolderDataModule", "IMAGE_EXTENSIONS"]

log = logging.getLogger("tl_lightning.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _check_dir(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what} {str(p)!r} does not exist. Fix: check the path (relative paths start at {Path.cwd()})")
    if not p.is_dir():
        raise DataError(f"{what} {str(p)!r} is not a folder; expected one subfolder per class")
    return p


def _class_folders(root: Path, what: str) -> dict[str, list[Path]]:
    """``{class name: sorted image files}`` for a folder with one subfolder per class."""
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        loose = [p.name for p in root.iterdir() if _is_image(p)][:3]
        hint = f" (it holds images directly, e.g. {loose}; for unlabelled images use predict_dir)" if loose else ""
        raise DataError(f"{what} {str(root)!r} has no class subfolders{hint}; expected <root>/<class name>/<image>")
    classes: dict[str, list[Path]] = {}
    empty: list[str] = []
    for d in subdirs:
        files = sorted(p for p in d.rglob("*") if _is_image(p))
        if not files:
            empty.append(str(d))
        classes[d.name] = files
    if empty:
        raise DataError(
            f"empty class folder(s) {empty}: no images with extensions {list(IMAGE_EXTENSIONS)}. "
            "Fix: add images or remove the folder (an empty class cannot be learned)"
        )
    return classes


class _ImageDataset(Dataset):
    """``(path, target)`` samples (target ``None`` for predict) decoded by :func:`decode_image` and transformed."""

    def __init__(
        self, samples: Sequence[tuple[Path, int | None]], transform: Any, skip_bad: bool, channels: int = 3
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.skip_bad = skip_bad
        self.channels = channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        path, target = self.samples[index]
        try:
            img = decode_image(path, self.channels)
        except DataError as err:
            if self.skip_bad:
                log.warning("skipping unreadable image %s: %s", path, err)
                return None
            raise
        x = self.transform(img)
        return x if target is None else (x, target)


def _collate_skipping_none(batch: list[Any]) -> Any:
    kept = [b for b in batch if b is not None]
    if not kept:
        raise DataError("every image of a batch was unreadable; check the data (on_bad_image='skip')")
    return default_collate(kept)


class ImageFolderDataModule(ClassificationDataModule):
    """Images in one folder per class; transforms come from the backbone's :class:`ImagePreprocess`.

    Give either ``root`` (split into train / val / test with a seeded, stratified split) or
    ``train_dir`` with optional ``val_dir`` / ``test_dir`` (a missing one is split off the
    training folder by ``val_fraction`` / ``test_fraction``). ``predict_dir`` holds
    unlabelled images (searched recursively); their relative paths are in :attr:`predict_ids`.

    Args:
        root: Folder ``<root>/<class>/<image>`` split by fractions.
        train_dir: Training folder (one subfolder per class).
        val_dir: Validation folder.
        test_dir: Test folder.
        predict_dir: Folder of unlabelled images for :meth:`predict_dataloader`.
        image_size: Override the backbone's input size (e.g. 32-64 px for fast runs).
        augment: Random resized crop and horizontal flip on training images. ``None`` (default):
            on, except where training reads cached features (:mod:`tl_lightning.features`), which
            need the same input every epoch; ``True`` there is an error naming both settings.
        on_bad_image: ``"error"`` raises a :class:`DataError` naming an unreadable file (or
            one whose mode cannot be decoded correctly, see :func:`decode_image`); ``"skip"``
            decodes every image once when the splits (or the predict set) are built, drops the
            unreadable ones and logs how many were dropped. They are listed in
            :attr:`skipped_files` per source (``"root"``, ``"train"``, ``"val"``, ``"test"``,
            ``"predict"``), so a caller can report them.
        batch_size: Batch size of every loader.
        num_workers: DataLoader workers.
        seed: Seed of the splits.
        val_fraction: Fraction of each class held out for validation when there is no ``val_dir``.
        test_fraction: Fraction of each class held out for testing when there is no ``test_dir``.
        model_labels: Labels the model knows, in class-index order; data with other labels is
            an error. Default: the sorted class folder names.
        pin_memory: DataLoader ``pin_memory``.
        drop_last: Drop the last, incomplete training batch (training loader only), e.g. when
            :meth:`train_size` ``% batch_size == 1`` would leave BatchNorm a batch of one.
        cache_dir: Folder for cached frozen-backbone features (``finetune=feature_extraction``,
            ``lp_ft``); ``None``: ``feature_cache/`` in the run folder. A shared folder lets a
            second run with the same backbone, data and settings reuse them.

    Images are decoded by :func:`~tl_lightning.data.decode_image` into the backbone's channels
    (``"RGB"``, or ``"L"`` when ``preprocess.input_size[0] == 1``): 16-bit images are scaled by
    their bit depth, transparency is composited over white, EXIF orientation is applied.
    Class folder names that differ only by case or surrounding whitespace (``cat``, ``Cat``)
    stay separate classes, with one warning naming them.

    Example:
        >>> dm = ImageFolderDataModule(root="data/flowers", image_size=64)  # doctest: +SKIP
        >>> model = TransferClassifier("timm:resnet18", labels=dm.labels)  # doctest: +SKIP
        >>> dm.set_preprocess(model.backbone.preprocess)  # doctest: +SKIP
        >>> Trainer(max_epochs=3).fit(model, dm)  # doctest: +SKIP
    """

    modality = "image"

    def __init__(
        self,
        root: str | None = None,
        train_dir: str | None = None,
        val_dir: str | None = None,
        test_dir: str | None = None,
        predict_dir: str | None = None,
        image_size: int | None = None,
        augment: bool | None = None,
        on_bad_image: Literal["error", "skip"] = "error",
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        model_labels: Sequence[str] | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            model_labels=model_labels,
            pin_memory=pin_memory,
            drop_last=drop_last,
            cache_dir=cache_dir,
        )
        if root is not None and train_dir is not None:
            raise ConfigurationError(
                f"give root ({root!r}, split by fractions) or train_dir ({train_dir!r}), not both"
            )
        if root is None and train_dir is None and (val_dir is not None or test_dir is not None):
            raise ConfigurationError("val_dir / test_dir need train_dir (or use root and fractions)")
        if on_bad_image not in ("error", "skip"):
            raise ConfigurationError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
            raise ConfigurationError(f"image_size must be a positive int or None, got {image_size!r}")
        self.root = root
        self.train_dir = train_dir
        self.val_dir = val_dir
        self.test_dir = test_dir
        self.predict_dir = predict_dir
        self.image_size = image_size
        self.augment = augment
        self.on_bad_image = on_bad_image
        self.skipped_files: dict[str, list[str]] = {}
        self._folders: dict[str, dict[str, list[Path]]] | None = None
        self.save_hyperparameters(logger=False)
        self._plain_hparams()

    # -- scanning --------------------------------------------------------------------------
    def _scan(self) -> dict[str, dict[str, list[Path]]]:
        """``{source: {class: files}}`` for every labelled source folder given."""
        if self._folders is None:
            sources = {"root": self.root, "train": self.train_dir, "val": self.val_dir, "test": self.test_dir}
            self._folders = {
                k: _class_folders(_check_dir(v, f"{k} folder"), f"{k} folder") for k, v in sources.items() if v is not None
            }
        return self._folders

    @override
    def _data_labels(self) -> list[str]:
        folders = self._scan()
        if not folders:
            raise DataError(
                "ImageFolderDataModule has no labelled data: give root=... or train_dir=... "
                "(predict_dir alone has no labels; pass model_labels=model.labels to predict)"
            )
        return [c for classes in folders.values() for c in classes]

    @property
    @override
    def labels(self) -> list[str]:
        if self.model_labels is not None and not self._has_labelled_source():
            return list(self.model_labels)  # predict-only
        return super().labels

    @override
    def effective_preprocess(self) -> ImagePreprocess:
        """The backbone's :class:`ImagePreprocess` at this module's ``image_size`` (when set).

        Raises:
            DataError: :meth:`set_preprocess` was not called.
        """
        p = cast(ImagePreprocess, self._require_preprocess())  # set_preprocess checked the type
        return p.with_size(self.image_size) if self.image_size is not None else p

    @override
    def input_settings(self) -> dict[str, Any]:
        """``{"image_size": ...}``: the effective input size once :meth:`set_preprocess` was called
        (an int for square inputs, else ``[height, width]``), else the override (``None``: the backbone's)."""
        if self.preprocess is None:
            return {"image_size": self.image_size}
        h, w = self.effective_preprocess().image_size
        return {"image_size": h if h == w else [h, w]}

    def _channels(self) -> int:
        return int(self.effective_preprocess().input_size[0])

    @property
    def num_skipped(self) -> int:
        """Number of unreadable images left out (``on_bad_image="skip"``), over every source read."""
        return sum(len(v) for v in self.skipped_files.values())

    def _drop_unreadable(self, files: list[Path], source: str) -> list[Path]:
        if self.on_bad_image != "skip":
            return files
        kept, bad = [], []
        channels = self._channels()
        for f in files:
            try:
                decode_image(f, channels)  # a full decode: headers alone let truncated files through
                kept.append(f)
            except DataError as err:
                log.info("on_bad_image='skip': %s", err)
                bad.append(f)
        self.skipped_files[source] = self.skipped_files.get(source, []) + [str(b) for b in bad]
        return kept

    def _samples(self, classes: dict[str, list[Path]], source: str) -> list[tuple[Path, int]]:
        mapping = self.class_to_idx
        self.skipped_files[source] = []
        samples = []
        for name, files in classes.items():
            kept = self._drop_unreadable(files, source)
            if not kept:
                raise DataError(f"class folder {str(files[0].parent)!r} has no readable images left after skipping")
            samples.extend((f, mapping[name]) for f in kept)
        return samples

    def _warn_skipped(self, sources: list[str]) -> None:
        bad = [f for s in sources for f in self.skipped_files.get(s, [])]
        if bad:
            log.warning("on_bad_image='skip': skipped %d unreadable image(s), e.g. %s", len(bad), bad[:5])

    @override
    def _has_labelled_source(self) -> bool:
        return self.root is not None or self.train_dir is not None

    @override
    def _has_predict_source(self) -> bool:
        return self.predict_dir is not None

    @override
    def _build(self, stage: str) -> dict[str, Dataset]:
        p = self.effective_preprocess()
        skip = self.on_bad_image == "skip"
        channels = int(p.input_size[0])
        eval_t, train_t = image_eval_transform(p), image_train_transform(p, self.augment is not False)
        if stage == "predict":
            if self.predict_dir is None:
                raise DataError("no predict_dir given: pass predict_dir=<folder of images> to predict")
            root = _check_dir(self.predict_dir, "predict folder")
            self.skipped_files["predict"] = []
            files = self._drop_unreadable(sorted(f for f in root.rglob("*") if _is_image(f)), "predict")
            self._warn_skipped(["predict"])
            if not files:
                raise DataError(f"predict folder {str(root)!r} holds no images with extensions {list(IMAGE_EXTENSIONS)}")
            self.predict_ids = [str(f.relative_to(root)) for f in files]
            # unreadable files were dropped above, so predict_ids stay aligned with the outputs
            return {"predict": _ImageDataset([(f, None) for f in files], eval_t, skip_bad=False, channels=channels)}
        _ = self.labels  # raises on labels the model does not know
        folders = self._scan()
        base_source = "root" if "root" in folders else "train"
        samples = self._samples(folders[base_source], base_source)
        targets = [t for _, t in samples]
        val_frac = self.val_fraction if "val" not in folders else 0.0
        test_frac = self.test_fraction if "test" not in folders else 0.0
        tr, va, te = stratified_split(targets, val_frac, test_frac, self.seed)
        splits = {
            "train": [samples[i] for i in tr],
            "val": self._samples(folders["val"], "val") if "val" in folders else [samples[i] for i in va],
            "test": self._samples(folders["test"], "test") if "test" in folders else [samples[i] for i in te],
        }
        self._warn_skipped([base_source, "val", "test"])
        return {
            "train": _ImageDataset(splits["train"], train_t, skip, channels),
            "val": _ImageDataset(splits["val"], eval_t, skip, channels),
            "test": _ImageDataset(splits["test"], eval_t, skip, channels),
        }

    @override
    def feature_dataset(self, split: str) -> Dataset:
        """The ``split``'s images under the eval transform (the training split without augmentation)."""
        ds = cast(_ImageDataset, self._dataset(split))
        if split != "train":
            return ds
        return _ImageDataset(ds.samples, image_eval_transform(self.effective_preprocess()), ds.skip_bad, ds.channels)

    @override
    def _collate(self, split: str) -> Any:
        return _collate_skipping_none if self.on_bad_image == "skip" else None

    @override
    def _missing_split_message(self, split: str) -> str:
        if split == "test":
            return "no test images: give test_dir=... or test_fraction > 0 (with root=... or train_dir=...)"
        if split == "predict":
            return "no images to predict: give predict_dir=..."
        return f"no {split} images"

