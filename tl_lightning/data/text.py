"""TextClassificationDataModule: CSV / TSV / JSONL files, tokenized with the backbone's tokenizer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import Dataset
from typing_extensions import override

from tl_lightning.backbones._base import TextPreprocess
from tl_lightning.data._base import ClassificationDataModule, _plain_list, stratified_split
from tl_lightning.errors import ConfigurationError, DataError

__all__ = ["TextClassificationDataModule", "read_table"]

log = logging.getLogger("tl_lightning.data")

_COMPRESSION = (".bz2", ".gz", ".xz", ".zip", ".zst")
_FORMATS = (".csv", ".tsv", ".jsonl", ".json")


def read_table(path: str | Path) -> Any:
    """Read a CSV, TSV or JSON-lines file (optionally ``.bz2`` / ``.gz`` / ``.xz`` / ``.zip`` compressed).

    Returns:
        A ``pandas.DataFrame``.

    Raises:
        DataError: The file is missing, has an unsupported extension, or cannot be parsed.
    """
    import pandas as pd

    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data file {str(p)!r} does not exist. Fix: check the path (relative paths start at {Path.cwd()})")
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    fmt = suffixes[-1] if suffixes else ""
    try:
        if fmt == ".csv":
            return pd.read_csv(p)
        if fmt == ".tsv":
            return pd.read_csv(p, sep="\t")
        if fmt in (".jsonl", ".json"):
            return pd.read_json(p, lines=True)
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError, EOFError) as err:
        raise DataError(f"cannot parse data file {str(p)!r} as {fmt[1:].upper()}: {type(err).__name__}: {err}") from err
    raise DataError(
        f"unsupported data file {str(p)!r}: extension {fmt or '(none)'!r}; supported: {list(_FORMATS)}, "
        f"optionally compressed with {list(_COMPRESSION)}"
    )


class _TextDataset(Dataset):
    """``(text, target)`` pairs (just texts for predict)."""

    def __init__(self, texts: Sequence[str], targets: Sequence[int | list[float]] | None) -> None:
        self.texts = list(texts)
        self.targets = None if targets is None else list(targets)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> Any:
        if self.targets is None:
            return self.texts[index]
        return self.texts[index], self.targets[index]


class _TokenizeCollate:
    """Tokenize a batch with dynamic padding (to the longest text, at most ``max_length`` tokens)."""

    def __init__(self, preprocess: TextPreprocess) -> None:
        self.preprocess = preprocess

    def __call__(self, batch: list[Any]) -> Any:
        if batch and isinstance(batch[0], tuple):
            texts, targets = zip(*batch)
            dtype = torch.float if isinstance(targets[0], list) else torch.long  # multi-hot vs class index
            return self.preprocess(list(texts)), torch.tensor(targets, dtype=dtype)
        return self.preprocess(list(batch))


class TextClassificationDataModule(ClassificationDataModule):
    """Labelled texts from CSV, TSV or JSONL files, tokenized by the backbone's tokenizer.

    One label per row (multi-class), or several when ``label_separator`` is set (multi-label:
    ``"drama|comedy"``; targets are multi-hot float vectors, for
    ``TransferClassifier(task="multilabel")``).

    Give either ``path`` (one file split into train / val / test with a seeded, stratified
    split) or ``train_path`` with optional ``val_path`` / ``test_path`` (a missing one is split
    off the training file by ``val_fraction`` / ``test_fraction``). ``predict_path`` is a file
    with a text column (labels not needed); its row ids are in :attr:`predict_ids`.

    Batches are ``(tokens, targets)`` where ``tokens`` is a dict of tensors (``input_ids``,
    ``attention_mask``, ...) padded to the longest text of the batch.

    Args:
        path: One file with every labelled row.
        train_path: Training file.
        val_path: Validation file.
        test_path: Test file.
        predict_path: File to predict on.
        text_column: Column with the texts.
        label_column: Column with the labels (read as strings).
        label_separator: Multi-label data: split each label cell on this string (``"|"``).
            ``None`` (default): one label per row.
        keep_labels: Keep only rows with these labels (e.g. ``["fresh", "rotten"]``); with
            ``label_separator``, other labels are dropped from each row and rows left with none
            are dropped.
        max_train_samples: Seeded random subsample of the training split.
        max_length: Override the preprocess' ``max_length`` (tokens).
        id_column: Column used for :attr:`predict_ids` (default: row numbers).
        batch_size: Batch size of every loader.
        num_workers: DataLoader workers.
        seed: Seed of the splits and the subsample.
        val_fraction: Fraction of each class held out for validation when there is no ``val_path``.
        test_fraction: Fraction of each class held out for testing when there is no ``test_path``.
        model_labels: Labels the model knows, in class-index order; other labels are an error.
        pin_memory: DataLoader ``pin_memory``.

    Example:
        >>> from tl_lightning.assets import rotten_tomatoes_path  # doctest: +SKIP
        >>> dm = TextClassificationDataModule(rotten_tomatoes_path(), text_column="text",
        ...     label_column="category", keep_labels=["fresh", "rotten"])  # doctest: +SKIP
        >>> dm.labels  # doctest: +SKIP
        ['fresh', 'rotten']
    """

    modality = "text"

    @property
    def multilabel(self) -> bool:
        """Whether rows carry several labels (``label_separator`` is set)."""
        return self.label_separator is not None

    def __init__(
        self,
        path: str | None = None,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        predict_path: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        label_separator: str | None = None,
        keep_labels: Sequence[str] | None = None,
        max_train_samples: int | None = None,
        max_length: int | None = None,
        id_column: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        model_labels: Sequence[str] | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            model_labels=model_labels,
            pin_memory=pin_memory,
        )
        if path is not None and train_path is not None:
            raise ConfigurationError(f"give path ({path!r}, split by fractions) or train_path ({train_path!r}), not both")
        if path is None and train_path is None and (val_path is not None or test_path is not None):
            raise ConfigurationError("val_path / test_path need train_path (or use path and fractions)")
        if max_train_samples is not None and (not isinstance(max_train_samples, int) or max_train_samples <= 0):
            raise ConfigurationError(f"max_train_samples must be a positive int or None, got {max_train_samples!r}")
        if max_length is not None and (not isinstance(max_length, int) or max_length <= 0):
            raise ConfigurationError(f"max_length must be a positive int or None, got {max_length!r}")
        self.path = None if path is None else str(path)
        self.train_path = None if train_path is None else str(train_path)
        self.val_path = None if val_path is None else str(val_path)
        self.test_path = None if test_path is None else str(test_path)
        self.predict_path = None if predict_path is None else str(predict_path)
        self.text_column = text_column
        if label_separator is not None and (not isinstance(label_separator, str) or not label_separator):
            raise ConfigurationError(f"label_separator must be a non-empty string or None, got {label_separator!r}")
        self.label_column = label_column
        self.label_separator = label_separator
        self.keep_labels = _plain_list(keep_labels)
        self.max_train_samples = max_train_samples
        self.max_length = max_length
        self.id_column = id_column
        self._tables: dict[str, tuple[list[str], list[str]]] | None = None
        self.save_hyperparameters(logger=False)
        self._plain_hparams()

    # -- reading ---------------------------------------------------------------------------
    def _columns(self, df: Any, path: str, need_labels: bool) -> None:
        needed = [self.text_column] + ([self.label_column] if need_labels else [])
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise DataError(
                f"column(s) {missing} not in {path!r}; columns present: {list(map(str, df.columns))}. "
                "Fix: set text_column / label_column"
            )

    def _read_labelled(self, path: str) -> tuple[list[str], list[str]]:
        df = read_table(path)
        self._columns(df, path, need_labels=True)
        bad_text = df.index[df[self.text_column].isna()].tolist()
        bad_label = df.index[df[self.label_column].isna()].tolist()
        if bad_text or bad_label:
            raise DataError(
                f"{path!r}: missing values in rows (0-based) text {bad_text[:10]} / label {bad_label[:10]} "
                f"({len(bad_text)} empty texts, {len(bad_label)} empty labels). Fix: drop or fill those rows"
            )
        texts = df[self.text_column].astype(str).tolist()
        labels = [_label_str(v) for v in df[self.label_column].tolist()]
        if self.label_separator is not None:
            empty = [i for i, label in enumerate(labels) if not self._names(label)]
            if empty:
                raise DataError(
                    f"{path!r}: label cells with no label between the {self.label_separator!r} separators in rows "
                    f"(0-based) {empty[:10]}. Fix: drop or fill those rows"
                )
        if self.keep_labels is not None:
            present = {name for label in labels for name in self._names(label)}
            absent = [k for k in self.keep_labels if k not in present]
            if absent:
                raise DataError(
                    f"keep_labels {absent} not found in {path!r} (labels present: {sorted(present)}); fix keep_labels"
                )
            keep = set(self.keep_labels)
            if self.label_separator is None:
                rows = [i for i, label in enumerate(labels) if label in keep]
            else:
                labels = [self.label_separator.join(n for n in self._names(label) if n in keep) for label in labels]
                rows = [i for i, label in enumerate(labels) if label]
            texts, labels = [texts[i] for i in rows], [labels[i] for i in rows]
        if not texts:
            raise DataError(f"{path!r} has no rows to use")
        return texts, labels

    def _names(self, label: str) -> list[str]:
        """The label names of one label cell (several with ``label_separator``)."""
        if self.label_separator is None:
            return [label]
        return [name.strip() for name in label.split(self.label_separator) if name.strip()]

    def _target(self, label: str, mapping: dict[str, int]) -> int | list[float]:
        if self.label_separator is None:
            return mapping[label]
        hot = [0.0] * len(mapping)
        for name in self._names(label):
            hot[mapping[name]] = 1.0
        return hot

    def _labelled_tables(self) -> dict[str, tuple[list[str], list[str]]]:
        if self._tables is None:
            sources = {"all": self.path, "train": self.train_path, "val": self.val_path, "test": self.test_path}
            self._tables = {k: self._read_labelled(v) for k, v in sources.items() if v is not None}
        return self._tables

    @override
    def _data_labels(self) -> list[str]:
        tables = self._labelled_tables()
        if not tables:
            raise DataError(
                "TextClassificationDataModule has no labelled data: give path=... or train_path=... "
                "(predict_path alone has no labels; pass model_labels=model.labels to predict)"
            )
        return [name for _, labels in tables.values() for label in labels for name in self._names(label)]

    @property
    @override
    def labels(self) -> list[str]:
        if self.model_labels is not None and not self._has_labelled_source():
            return list(self.model_labels)  # predict-only
        return super().labels

    def _effective_preprocess(self) -> TextPreprocess:
        p = cast(TextPreprocess, self._require_preprocess())  # set_preprocess checked the type
        return p.with_max_length(self.max_length) if self.max_length is not None else p

    @override
    def _has_labelled_source(self) -> bool:
        return self.path is not None or self.train_path is not None

    @override
    def _has_predict_source(self) -> bool:
        return self.predict_path is not None

    @override
    def _build(self, stage: str) -> dict[str, Dataset]:
        self._require_preprocess()
        if stage == "predict":
            if self.predict_path is None:
                raise DataError("no predict_path given: pass predict_path=<file with a text column> to predict")
            df = read_table(self.predict_path)
            self._columns(df, self.predict_path, need_labels=False)
            if self.id_column is not None and self.id_column not in df.columns:
                raise DataError(
                    f"id_column {self.id_column!r} not in {self.predict_path!r}; columns present: {list(map(str, df.columns))}"
                )
            empty = df.index[df[self.text_column].isna()].tolist()
            if empty:
                raise DataError(f"{self.predict_path!r}: empty texts in rows (0-based) {empty[:10]}")
            ids = df[self.id_column] if self.id_column is not None else df.index
            self.predict_ids = [str(i) for i in ids.tolist()]
            return {"predict": _TextDataset(df[self.text_column].astype(str).tolist(), None)}
        mapping = self.class_to_idx  # raises on labels the model does not know
        tables = self._labelled_tables()
        base_texts, base_labels = tables.get("all") or tables["train"]
        targets = [self._target(label, mapping) for label in base_labels]
        val_frac = self.val_fraction if "val" not in tables else 0.0
        test_frac = self.test_fraction if "test" not in tables else 0.0
        # multi-label rows are stratified by their first label
        strata = [t if isinstance(t, int) else t.index(1.0) for t in targets]
        tr, va, te = stratified_split(strata, val_frac, test_frac, self.seed)
        if self.max_train_samples is not None and self.max_train_samples < len(tr):
            rng = np.random.default_rng(self.seed)
            tr = sorted(rng.choice(tr, size=self.max_train_samples, replace=False).tolist())

        def subset(idx: list[int]) -> _TextDataset:
            return _TextDataset([base_texts[i] for i in idx], [targets[i] for i in idx])

        def table(name: str, idx: list[int]) -> _TextDataset:
            if name in tables:
                texts, labels = tables[name]
                return _TextDataset(texts, [self._target(label, mapping) for label in labels])
            return subset(idx)

        return {"train": subset(tr), "val": table("val", va), "test": table("test", te)}

    @override
    def _collate(self, split: str) -> _TokenizeCollate:
        return _TokenizeCollate(self._effective_preprocess())

    @override
    def _missing_split_message(self, split: str) -> str:
        if split == "test":
            return "no test rows: give test_path=... or test_fraction > 0 (with path=... or train_path=...)"
        if split == "predict":
            return "no rows to predict: give predict_path=..."
        return f"no {split} rows"


def _label_str(value: Any) -> str:
    # pandas reads integer label columns with NaNs as floats: 1.0 -> "1"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)

