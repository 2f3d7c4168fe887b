"""CachedFeatureDataModule: train a head on a frozen backbone's features, computed once per split.

While the whole backbone is frozen (feature extraction, a linear probe), its output depends only
on the input, so recomputing it every epoch is wasted work. This data module wraps an
:class:`~tl_lightning.data.ImageFolderDataModule` or
:class:`~tl_lightning.data.TextClassificationDataModule`: the first time Lightning asks for a
split's loader it computes that split's features with the model's backbone
(:class:`~tl_lightning.features.extraction.FeatureExtractor`: eval mode, batched, on the run's
device and precision, through the on-disk cache), and its batches are then
``({"cached_features": (batch, feature_dim)}, targets)``, on which
:class:`~tl_lightning.TransferClassifier` runs its head alone. Everything else (labels, the
input preprocessing stored in checkpoints, predict data) is the wrapped module's: a checkpoint
holds the full model and predicts on images / texts as usual.

Training order is the wrapped module's (the same seeded per-epoch order, resumable mid-epoch),
so a cached run trains on the same batches as an uncached one and reaches the same metrics up to
float rounding; only the backbone's forward pass per batch is gone.

Example:
    >>> dm = CachedFeatureDataModule(ImageFolderDataModule(root="data/digits"))  # doctest: +SKIP
    >>> model = TransferClassifier("timm:resnet18", labels=dm.labels)  # doctest: +SKIP
    >>> dm.set_preprocess(model.backbone.preprocess)  # doctest: +SKIP
    >>> trainer = Trainer(max_epochs=30, callbacks=[GradualUnfreezing.feature_extraction()])  # doctest: +SKIP
    >>> trainer.fit(model, dm)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate
from typing_extensions import override

from tl_lightning.data._sampling import seeded_train_loader
from tl_lightning.errors import ConfigurationError, DataError
from tl_lightning.features.cache import DEFAULT_MEMMAP_BYTES, CachedSplit
from tl_lightning.features.extraction import FeatureExtractor
from tl_lightning.freezing import is_frozen
from tl_lightning.modules.classifier import CACHED_FEATURES_KEY

__all__ = ["CachedFeatureDataModule", "cached_features_datamodule", "check_no_augmentation"]


def check_no_augmentation(datamodule: Any) -> None:
    """Refuse a data module that asks for random training augmentation: cached features cannot have it.

    ``augment=None`` (the default of :class:`~tl_lightning.data.ImageFolderDataModule`) means
    "on, unless the features are cached", so only an explicit ``True`` is an error.
    """
    if getattr(datamodule, "augment", None) is True:
        raise ConfigurationError(
            "data.augment=true (random training augmentation) and cached features (finetune.cached_features=true) "
            "exclude each other: cached features are computed once, from unaugmented images. Fix: "
            "data.augment=false (or leave it null) to train on cached features, or finetune.cached_features=false "
            "to run the frozen backbone on augmented images every epoch"
        )


class _Batch(NamedTuple):
    """A batch fetched at once by :meth:`_FeatureDataset.__getitems__` (already collated)."""

    inputs: dict[str, Tensor]
    targets: Tensor


class _FeatureDataset(Dataset):
    """Rows of a :class:`CachedSplit`; a batch of indices is fetched with one indexing operation."""

    def __init__(self, split: CachedSplit) -> None:
        self.features = split.features
        self.targets = torch.from_numpy(np.asarray(split.targets))
        if self.targets.is_floating_point():
            self.targets = self.targets.float()  # multi-hot rows, as the text data module makes them
        # in memory: one tensor, indexed per batch; memory-mapped: rows are read as drawn
        self._tensor = None if isinstance(split.features, np.memmap) else torch.from_numpy(split.features)

    def __len__(self) -> int:
        return len(self.targets)

    def _rows(self, indices: list[int]) -> Tensor:
        if self._tensor is not None:
            return self._tensor[indices]
        return torch.from_numpy(np.ascontiguousarray(self.features[indices]))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self._rows([int(index)])[0], self.targets[int(index)]

    def __getitems__(self, indices: list[int]) -> _Batch:
        idx = [int(i) for i in indices]
        return _Batch({CACHED_FEATURES_KEY: self._rows(idx)}, self.targets[idx])


def _collate(batch: Any) -> tuple[dict[str, Tensor], Tensor]:
    if isinstance(batch, _Batch):
        return batch.inputs, batch.targets
    features, targets = default_collate(batch)
    return {CACHED_FEATURES_KEY: features}, targets


class CachedFeatureDataModule(LightningDataModule):
    """Batches of cached frozen-backbone features for the splits of another data module.

    Args:
        datamodule: The data module with the images / texts (``ImageFolderDataModule``,
            ``TextClassificationDataModule``). Its random training augmentation must be off
            (``augment=None`` turns it off here; ``True`` is an error).
        cache_dir: Cache folder; ``None``: the data module's ``cache_dir``, else
            ``feature_cache/`` under the Trainer's ``default_root_dir`` (the run folder with ``tl-train``).
        memmap_bytes: Feature sets larger than this many bytes are memory-mapped from the cache
            instead of held in memory.
        batch_size: Batch size of the feature computation (default: the data module's).

    Raises:
        ConfigurationError: The data module asks for random augmentation; or, when a split is
            first needed during training, the model's backbone is not frozen.

    Attributes:
        splits: The :class:`CachedSplit` of every split computed or read so far.
    """

    def __init__(
        self,
        datamodule: LightningDataModule,
        cache_dir: str | Path | None = None,
        memmap_bytes: int = DEFAULT_MEMMAP_BYTES,
        batch_size: int | None = None,
    ) -> None:
        check_no_augmentation(datamodule)
        if isinstance(datamodule, CachedFeatureDataModule):
            raise ConfigurationError("the data module already yields cached features; do not wrap it twice")
        super().__init__()
        self.datamodule = datamodule
        self.cache_dir = cache_dir
        self.memmap_bytes = memmap_bytes
        self.feature_batch_size = batch_size
        self.splits: dict[str, CachedSplit] = {}
        self._extractor: FeatureExtractor | None = None

    def __getattr__(self, name: str) -> Any:
        # everything but the loaders is the wrapped data module's (labels, preprocess, sizes, ...)
        if name == "datamodule" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.datamodule, name)

    # -- the wrapped module's API ---------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        """The wrapped data module's labels."""
        return self.datamodule.labels

    def set_preprocess(self, preprocess: Any) -> None:
        """Give the wrapped data module the backbone's preprocess (cached splits are kept: the key checks them)."""
        self.datamodule.set_preprocess(preprocess)

    @override
    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    @override
    def setup(self, stage: str) -> None:
        self.datamodule.setup(stage)

    # -- features ---------------------------------------------------------------------------
    def cached_split(self, split: str) -> CachedSplit:
        """``split``'s features (computed or read from the cache on the first call; needs the Trainer)."""
        if split in self.splits:
            return self.splits[split]
        trainer = self.trainer
        if trainer is None:
            raise ConfigurationError(
                "CachedFeatureDataModule computes features with the Trainer's model, device and precision: use it "
                "through trainer.fit / validate / test (or call FeatureExtractor directly)"
            )
        model = trainer.lightning_module
        self._check_frozen(model)
        if self._extractor is None or self._extractor.model is not model:
            self._extractor = FeatureExtractor(
                model,
                cache_dir=self.cache_dir,
                memmap_bytes=self.memmap_bytes,
                batch_size=self.feature_batch_size,
                trainer=trainer,
            )
        self.splits[split] = self._extractor.split(self.datamodule, split)
        return self.splits[split]

    def _check_frozen(self, model: Any) -> None:
        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return
        backbone = getattr(model, "backbone", None)
        if backbone is not None and not is_frozen(backbone):
            raise ConfigurationError(
                "cached features need a frozen backbone while training (its features must not change), but "
                f"{type(model).__name__}.backbone has trainable parameters. Fix: finetune=feature_extraction "
                "(GradualUnfreezing preset='all_frozen'), or finetune.cached_features=false for a strategy that "
                "trains the backbone"
            )

    @override
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # an unfreezing schedule would train a backbone these batches never run through
        if self.trainer is not None and self.trainer.training:
            self._check_frozen(self.trainer.lightning_module)
        return batch

    def _has_split(self, split: str) -> bool:
        try:
            return len(self.datamodule.feature_dataset(split)) > 0
        except DataError:
            return False

    def _loader(self, split: str) -> DataLoader:
        dataset = _FeatureDataset(self.cached_split(split))
        return DataLoader(dataset, batch_size=self.datamodule.batch_size, shuffle=False, collate_fn=_collate)

    @override
    def train_dataloader(self) -> DataLoader:
        dm = self.datamodule
        dataset = _FeatureDataset(self.cached_split("train"))
        # the wrapped module's seeded per-epoch order: the same batches as uncached training
        return seeded_train_loader(
            dataset,
            seed=dm.seed,
            datamodule=self,
            batch_size=dm.batch_size,
            drop_last=bool(getattr(dm, "drop_last", False)),
            collate_fn=_collate,
        )

    @override
    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val") if self._has_split("val") else []

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    @override
    def predict_dataloader(self) -> Any:
        """The wrapped module's predict loader: raw inputs through the whole model."""
        return self.datamodule.predict_dataloader()

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.datamodule.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.datamodule.load_state_dict(state_dict)


def cached_features_datamodule(datamodule: Any, finetune: Mapping[str, Any] | None) -> Any:
    """The data module ``tl-train`` trains with: wrapped in :class:`CachedFeatureDataModule` when
    the ``finetune`` config sets ``cached_features: true`` (``finetune=feature_extraction`` does),
    else ``datamodule`` itself.

    Raises:
        ConfigurationError: ``cached_features`` is not a boolean, or the data asks for augmentation.
    """
    wanted = (finetune or {}).get("cached_features", False)
    if not isinstance(wanted, bool):
        raise ConfigurationError(f"finetune.cached_features must be true or false, got {wanted!r}")
    if not wanted:
        return datamodule
    return CachedFeatureDataModule(datamodule, memmap_bytes=int((finetune or {}).get("memmap_bytes", DEFAULT_MEMMAP_BYTES)))
