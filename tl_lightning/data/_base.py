"""Machinery shared by the classification data modules: label mapping, seeded splits, loaders."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Subset

from tl_lightning._plain import to_plain
from tl_lightning.backbones._base import ImagePreprocess, PreprocessConfig, TextPreprocess
from tl_lightning.data._sampling import seeded_train_loader
from tl_lightning.errors import ConfigurationError, DataError

__all__ = ["ClassificationDataModule", "stratified_split", "sort_labels", "near_duplicate_labels"]

log = logging.getLogger("tl_lightning.data")


_INTEGER = re.compile(r"-?[0-9]+")


def sort_labels(labels: Sequence[str]) -> list[str]:
    """Sorted unique label names; numerically when every name is an integer (``"2" < "10"``).

    Names are compared as written: ``"01"`` and ``"1"`` are two labels, ordered ``"01"`` before
    ``"1"`` (equal numbers are ordered by their text, so the order never depends on input order).
    """
    unique = {str(label) for label in labels}
    if unique and all(_INTEGER.fullmatch(label) for label in unique):
        return sorted(unique, key=lambda label: (int(label), label))
    return sorted(unique)


def near_duplicate_labels(labels: Sequence[str]) -> list[list[str]]:
    """Groups of distinct labels that differ only by letter case or surrounding whitespace.

    Example:
        >>> near_duplicate_labels(["pos", "pos ", "Pos", "neg"])
        [['Pos', 'pos', 'pos ']]
    """
    groups: dict[str, set[str]] = {}
    for label in labels:
        groups.setdefault(str(label).strip().casefold(), set()).add(str(label))
    return [sorted(g) for _, g in sorted(groups.items()) if len(g) > 1]


def stratified_split(
    targets: Sequence[int], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Split indices into train / val / test, per class, with a seeded shuffle.

    Each class contributes ``round(n * fraction)`` samples to val and to test (at least one
    when the fraction is positive and the class has enough samples to keep one for training).

    Returns:
        Sorted ``(train, val, test)`` index lists.
    """
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for cls in sorted(by_class):
        idx = np.array(by_class[cls])
        rng.shuffle(idx)
        n = len(idx)
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        if test_fraction > 0 and n_test == 0 and n - n_val >= 2:
            n_test = 1
        if val_fraction > 0 and n_val == 0 and n - n_test >= 2:
            n_val = 1
        n_test = min(n_test, max(0, n - 1))
        n_val = min(n_val, max(0, n - 1 - n_test))
        test.extend(idx[:n_test].tolist())
        val.extend(idx[n_test : n_test + n_val].tolist())
        train.extend(idx[n_test + n_val :].tolist())
    return sorted(train), sorted(val), sorted(test)


class ClassificationDataModule(LightningDataModule):
    """Base class: labels, model-label checks, seeded splits and data loaders.

    Subclasses implement :meth:`_data_labels` (label names present in the labelled data) and
    :meth:`_build` (the datasets of a stage), and may override :meth:`_collate`.
    """

    modality: str = ""
    #: rows carry several labels (multi-hot targets) instead of one class index
    multilabel: bool = False

    def __init__(
        self,
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
        super().__init__()
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ConfigurationError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigurationError(f"num_workers must be an int >= 0, got {num_workers!r}")
        for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= frac < 1.0:
                raise ConfigurationError(f"{name} must be in [0, 1), got {frac!r}")
        if val_fraction + test_fraction >= 1.0:
            raise ConfigurationError(
                f"val_fraction + test_fraction must be < 1 to leave training data, got {val_fraction} + {test_fraction}"
            )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.pin_memory = pin_memory
        if not isinstance(drop_last, bool):
            raise ConfigurationError(f"drop_last must be true or false, got {drop_last!r}")
        self.drop_last = drop_last
        #: folder of cached frozen-backbone features (tl_lightning.features); None: the run folder
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.model_labels: list[str] | None = _plain_list(model_labels)
        self.preprocess: PreprocessConfig | None = None
        self.predict_ids: list[str] = []
        self._datasets: dict[str, Dataset] = {}
        self._data_labels_cache: list[str] | None = None

    def _plain_hparams(self) -> None:
        """Turn OmegaConf containers (Hydra passes lists as ``ListConfig``) in ``hparams`` into plain
        Python, so checkpoints holding the datamodule's hparams load with ``weights_only=True``."""
        for key, value in list(self.hparams.items()):
            self.hparams[key] = to_plain(value)

    # -- labels ----------------------------------------------------------------------------
    def _data_labels(self) -> list[str]:
        raise NotImplementedError

    def data_labels(self) -> list[str]:
        """Sorted label names found in the labelled data (cached after the first scan)."""
        if self._data_labels_cache is None:
            self._data_labels_cache = sort_labels(self._data_labels())
            suspicious = near_duplicate_labels(self._data_labels_cache)
            if suspicious:
                what = "class folder names" if self.modality == "image" else "labels"
                rank_zero_warn(
                    f"{type(self).__name__}: {what} that differ only by case or surrounding whitespace are kept "
                    f"as separate classes: {'; '.join(map(str, suspicious))}. If they mean the same class, "
                    "rename them in the data to one spelling"
                )
        return list(self._data_labels_cache)

    @property
    def labels(self) -> list[str]:
        """Class names in class-index order: ``model_labels`` when set, else the sorted labels of the data.

        Raises:
            DataError: The data holds labels the model does not know.
        """
        found = self.data_labels()
        if self.model_labels is None:
            return found
        unknown = [label for label in found if label not in self.model_labels]
        if unknown:
            raise DataError(
                f"the data has label(s) {unknown} that the model does not know (model labels: {self.model_labels}); "
                "they are not trained on. Fix: remove or rename those samples, or build a model with these labels."
            )
        return list(self.model_labels)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(labels)``)."""
        return len(self.labels)

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Label name -> class index."""
        return {label: i for i, label in enumerate(self.labels)}

    # -- preprocess ------------------------------------------------------------------------
    def set_preprocess(self, preprocess: PreprocessConfig) -> None:
        """Use a backbone's preprocess (``model.backbone.preprocess``) for transforms / tokenization."""
        expected = ImagePreprocess if self.modality == "image" else TextPreprocess
        if not isinstance(preprocess, expected):
            raise ConfigurationError(
                f"{type(self).__name__} needs a {expected.__name__} (from an {self.modality} backbone), got "
                f"{type(preprocess).__name__}; is the backbone for the right kind of data?"
            )
        self.preprocess = preprocess
        self._datasets.clear()

    def effective_preprocess(self) -> PreprocessConfig:
        """The preprocess batches are made with: the backbone's, with this module's overrides applied.

        Raises:
            DataError: :meth:`set_preprocess` was not called.
        """
        return self._require_preprocess()

    def input_settings(self) -> dict[str, Any]:
        """Plain settings that shape inputs, which a predictor needs to read new data the same way.

        Stored in checkpoints as ``TransferClassifier.data_settings``.
        """
        return {}

    def _require_preprocess(self) -> PreprocessConfig:
        if self.preprocess is None:
            raise DataError(
                f"{type(self).__name__} has no preprocess: call dm.set_preprocess(model.backbone.preprocess) "
                "before trainer.fit / test / predict, so inputs match what the backbone expects"
            )
        return self.preprocess

    # -- datasets and loaders --------------------------------------------------------------
    def _has_labelled_source(self) -> bool:
        raise NotImplementedError

    def _has_predict_source(self) -> bool:
        raise NotImplementedError

    def _build(self, stage: str) -> dict[str, Dataset]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        self._require_preprocess()
        if stage is None:
            stages = (["fit", "test"] if self._has_labelled_source() else []) + (
                ["predict"] if self._has_predict_source() else []
            )
        else:
            stages = [stage]
        for s in stages:
            needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}[s]
            if all(k in self._datasets for k in needed):
                continue
            self._datasets.update(self._build(s))

    def _dataset(self, split: str) -> Dataset:
        if split not in self._datasets:
            stage = {"train": "fit", "val": "validate", "test": "test", "predict": "predict"}[split]
            self.setup(stage)
        ds = self._datasets.get(split)
        if ds is None or len(ds) == 0:  # type: ignore[arg-type]
            raise DataError(self._missing_split_message(split))
        return ds

    def _missing_split_message(self, split: str) -> str:
        return f"{type(self).__name__} has no {split} data"

    def _collate(self, split: str) -> Callable[[list[Any]], Any] | None:
        return None

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        kwargs: dict[str, Any] = dict(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=self._collate(split),
            pin_memory=self.pin_memory,
            drop_last=self.drop_last and split == "train",
            persistent_workers=self.num_workers > 0,
        )
        if shuffle:  # order and augmentation seeded by (seed, epoch): exact resume (data/_sampling.py)
            return seeded_train_loader(self._dataset(split), seed=self.seed, datamodule=self, **kwargs)
        return DataLoader(self._dataset(split), generator=torch.Generator().manual_seed(self.seed), **kwargs)

    def train_dataloader(self) -> DataLoader:
        if self.drop_last and self.train_size() < self.batch_size:
            raise DataError(
                f"drop_last=true drops every training batch: {self.train_size()} training samples < batch_size "
                f"{self.batch_size}. Fix: lower batch_size or set drop_last=false"
            )
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self._datasets:
            self.setup("validate")
        if len(self._datasets.get("val", ())) == 0:  # type: ignore[arg-type]
            log.info("%s: no validation data (val_fraction=0 and no val source); validation is skipped", type(self).__name__)
            return []
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Batches of inputs only (no targets), in the order of :attr:`predict_ids`."""
        return self._loader("predict", shuffle=False)

    def feature_dataset(self, split: str) -> Dataset:
        """The ``split`` as frozen-backbone features are computed from it: deterministic inputs.

        The training split without random augmentation; the other splits as they are. Used by
        :mod:`tl_lightning.features` (cached features, the LP phase of LP-FT).
        """
        return self._dataset(split)

    def feature_loader(self, split: str, indices: Sequence[int] | None = None, batch_size: int | None = None) -> DataLoader:
        """A sequential loader over :meth:`feature_dataset` (optionally only ``indices``, in that order)."""
        dataset = self.feature_dataset(split)
        if indices is not None:
            dataset = Subset(dataset, list(indices))
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self._collate(split),
            pin_memory=self.pin_memory,
        )

    def split_sizes(self) -> dict[str, int]:
        """Number of samples per built split (after :meth:`setup`; ``setup("fit")`` builds train and val)."""
        return {k: len(v) for k, v in self._datasets.items()}  # type: ignore[arg-type]

    def train_size(self) -> int:
        """Number of training samples (builds the fit splits if needed; needs :meth:`set_preprocess`).

        With ``train_size() % batch_size == 1`` the last training batch holds one sample, which
        BatchNorm cannot train on; ``drop_last=True`` drops that batch.
        """
        if "train" not in self._datasets:
            self.setup("fit")
        return len(self._datasets["train"])  # type: ignore[arg-type]


def _plain_list(values: Sequence[str] | None) -> list[str] | None:
    if values is None:
        return None
    values = to_plain(values)
    if isinstance(values, str):
        raise ConfigurationError(f"expected a list of label names, got the string {values!r}")
    return [str(v) for v in values]  # type: ignore[union-attr]
