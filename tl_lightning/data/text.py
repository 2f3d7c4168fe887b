"""TextClassificationDataModule: CSV / TSV / JSONL files, tokenized with the backbone's tokenizer."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import Dataset
from typing_extensions import override

from tl_lightning.backbones._base import TextPreprocess
from tl_lightning.data._base import ClassificationDataModule, _plain_list, stratified_split
from tl_lightning.data._tables import check_encoding, check_separator, read_table
from tl_lightning.errors import ConfigurationError, DataError

__all__ = ["TextClassificationDataModule", "read_table"]

log = logging.getLogger("tl_lightning.data")


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


@dataclass
class _Labelled:
    """The usable rows of one labelled file: texts and, per row, its label names."""

    texts: list[str]
    names: list[list[str]]
    #: some label cell was a JSON list (a multi-label row)
    has_lists: bool
    #: the ``group_column`` cell of each row (when the file has that column)
    groups: list[str] | None = None


class TextClassificationDataModule(ClassificationDataModule):
    """Labelled texts from CSV, TSV or JSONL files, tokenized by the backbone's tokenizer.

    One label per row (multi-class), or several (multi-label; targets are multi-hot float
    vectors, for ``TransferClassifier(task="multilabel")``) when either

    * ``label_separator`` is set and label cells hold names joined by it (``"drama|comedy"``), or
    * a JSON-lines / JSON file has label cells that are JSON lists (``"label": ["drama",
      "comedy"]``). This is automatic: :attr:`multilabel` becomes True when any labelled file
      holds a list; in such a file a plain string cell is a row with one label.

    Cells are read as written (see :func:`~tl_lightning.data.read_table`): ``01`` and ``1`` are
    two labels, ``007`` stays ``007``, and texts such as ``NA``, ``None``, ``null`` or ``nan``
    are texts. Labelled rows with an empty (or whitespace-only) text or label are reported as
    an error naming the rows; in the predict file an empty text is valid input and is predicted
    like any other (a JSON ``null`` text counts as empty). Labels that differ only by case or
    surrounding whitespace (``pos``, ``Pos``, ``pos ``) stay separate classes, with one warning
    naming them.

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
        label_column: Column with the labels (read as written, as strings).
        label_separator: Multi-label data: split each label cell on this string (``"|"``) and
            strip the names. ``None`` (default): one label per cell (JSON list cells are
            multi-label either way).
        keep_labels: Keep only rows with these labels (e.g. ``["fresh", "rotten"]``); for
            multi-label data, other labels are dropped from each row and rows left with none
            are dropped.
        max_train_samples: Seeded random subsample of the training split.
        max_length: Override the preprocess' ``max_length`` (tokens). It may not exceed what
            the model supports (the tokenizer's ``model_max_length`` or the position embeddings
            of the model's ``config.json``): :meth:`set_preprocess` refuses a longer one.
        id_column: Column used for :attr:`predict_ids` (default: row numbers).
        encoding: Text encoding of every file (default ``"utf-8"``; a UTF-8 byte-order mark is
            dropped). A file that does not decode is an error naming the byte position; files
            saved by Excel on Windows are often ``"cp1252"``.
        separator: Field separator of CSV / TSV files, one character (``";"``, ``"|"``,
            ``"\\t"``). ``None`` (default): ``","`` for ``.csv``, tab for ``.tsv``; JSON files
            ignore it. A file that reads as a single column whose header contains another
            separator is an error naming it.
        batch_size: Batch size of every loader.
        num_workers: DataLoader workers.
        seed: Seed of the splits and the subsample.
        val_fraction: Fraction of each class held out for validation when there is no ``val_path``.
        test_fraction: Fraction of each class held out for testing when there is no ``test_path``.
        model_labels: Labels the model knows, in class-index order; other labels are an error.
        pin_memory: DataLoader ``pin_memory``.
        drop_last: Drop the last, incomplete training batch (training loader only), e.g. when
            :meth:`train_size` ``% batch_size == 1`` would leave BatchNorm a batch of one.
        group_column: Column naming a subgroup of each row (a region, a source); read as
            written and given per test row by :meth:`test_groups`, so the per-class report can
            show the metrics of every subgroup. Needed only in the file the test rows come from.
        cache_dir: Folder for cached frozen-backbone features (``finetune=feature_extraction``,
            ``lp_ft``); ``None``: ``feature_cache/`` in the run folder. A shared folder lets a
            second run with the same backbone, tokenizer settings and data reuse them.

    Example:
        >>> from tl_lightning.assets import rotten_tomatoes_path  # doctest: +SKIP
        >>> dm = TextClassificationDataModule(rotten_tomatoes_path(), text_column="text",
        ...     label_column="category", keep_labels=["fresh", "rotten"])  # doctest: +SKIP
        >>> dm.labels  # doctest: +SKIP
        ['fresh', 'rotten']
    """

    modality = "text"

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
        encoding: str = "utf-8",
        separator: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        model_labels: Sequence[str] | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        group_column: str | None = None,
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
        if path is not None and train_path is not None:
            raise ConfigurationError(f"give path ({path!r}, split by fractions) or train_path ({train_path!r}), not both")
        if path is None and train_path is None and (val_path is not None or test_path is not None):
            raise ConfigurationError("val_path / test_path need train_path (or use path and fractions)")
        if max_train_samples is not None and (not isinstance(max_train_samples, int) or max_train_samples <= 0):
            raise ConfigurationError(f"max_train_samples must be a positive int or None, got {max_train_samples!r}")
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0
        ):
            raise ConfigurationError(f"max_length must be a positive int or None, got {max_length!r}")
        if label_separator is not None and (not isinstance(label_separator, str) or not label_separator):
            raise ConfigurationError(f"label_separator must be a non-empty string or None, got {label_separator!r}")
        self.path = None if path is None else str(path)
        self.train_path = None if train_path is None else str(train_path)
        self.val_path = None if val_path is None else str(val_path)
        self.test_path = None if test_path is None else str(test_path)
        self.predict_path = None if predict_path is None else str(predict_path)
        self.text_column = text_column
        self.label_column = label_column
        self.label_separator = label_separator
        self.keep_labels = _plain_list(keep_labels)
        self.max_train_samples = max_train_samples
        self.max_length = max_length
        self.id_column = id_column
        if group_column is not None and (not isinstance(group_column, str) or not group_column):
            raise ConfigurationError(f"group_column must be a column name or None, got {group_column!r}")
        self.group_column = group_column
        self._test_groups: list[str] | None = None
        self.encoding = check_encoding(encoding)
        self.separator = check_separator(separator)
        self._tables: dict[str, _Labelled] | None = None
        self.save_hyperparameters(logger=False)
        self._plain_hparams()

    @property
    def multilabel(self) -> bool:  # type: ignore[override]
        """Whether rows carry several labels: ``label_separator`` is set, or a label cell is a JSON list.

        Reads the labelled files (once) when ``label_separator`` is not set.
        """
        if self.label_separator is not None:
            return True
        if not self._has_labelled_source():
            return False
        return any(t.has_lists for t in self._labelled_tables().values())

    # -- reading ---------------------------------------------------------------------------
    def _read(self, path: str) -> Any:
        return read_table(path, encoding=self.encoding, separator=self.separator)

    def _columns(self, df: Any, path: str, need_labels: bool) -> None:
        needed = [self.text_column] + ([self.label_column] if need_labels else [])
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise DataError(
                f"column(s) {missing} not in {path!r}; columns present: {list(map(str, df.columns))}. "
                "Fix: set text_column / label_column"
            )

    def _read_labelled(self, path: str) -> _Labelled:
        df = self._read(path)
        self._columns(df, path, need_labels=True)
        texts: list[Any] = df[self.text_column].tolist()
        cells: list[Any] = df[self.label_column].tolist()
        _check_text_cells(texts, path)
        bad_text = [i for i, t in enumerate(texts) if t is None or not t.strip()]
        bad_label = [i for i, c in enumerate(cells) if c is None or (isinstance(c, str) and not c.strip())]
        if bad_text or bad_label:
            raise DataError(
                f"{path!r}: missing values in rows (0-based) text {bad_text[:10]} / label {bad_label[:10]} "
                f"({len(bad_text)} empty texts, {len(bad_label)} empty labels). Fix: drop or fill those rows"
            )
        not_labels = [i for i, c in enumerate(cells) if not _is_label_cell(c)]
        if not_labels:
            raise DataError(
                f"{path!r}: label cells that are neither a string nor a list of non-empty strings in rows (0-based) "
                f"{not_labels[:10]} (e.g. {json.dumps(cells[not_labels[0]])[:80]}). Fix: one label, or a list of labels"
            )
        names = [self._names(c) for c in cells]
        empty_lists = [i for i, n in enumerate(names) if not n and isinstance(cells[i], list)]
        if empty_lists:
            raise DataError(
                f"{path!r}: label cells that are empty lists in rows (0-based) {empty_lists[:10]}. "
                "Fix: drop or fill those rows"
            )
        empty = [i for i, n in enumerate(names) if not n]
        if empty:
            raise DataError(
                f"{path!r}: label cells with no label between the {self.label_separator!r} separators in rows "
                f"(0-based) {empty[:10]}. Fix: drop or fill those rows"
            )
        has_lists = any(isinstance(c, list) for c in cells)
        groups: list[str] | None = None
        if self.group_column is not None and self.group_column in df.columns:
            groups = ["" if g is None else str(g) for g in df[self.group_column].tolist()]
        if self.keep_labels is not None:
            present = {name for row in names for name in row}
            absent = [k for k in self.keep_labels if k not in present]
            if absent:
                raise DataError(
                    f"keep_labels {absent} not found in {path!r} (labels present: {sorted(present)}); fix keep_labels"
                )
            keep = set(self.keep_labels)
            names = [[n for n in row if n in keep] for row in names]
            rows = [i for i, row in enumerate(names) if row]
            texts, names = [texts[i] for i in rows], [names[i] for i in rows]
            groups = None if groups is None else [groups[i] for i in rows]
        if not texts:
            raise DataError(f"{path!r} has no rows to use")
        return _Labelled(texts, names, has_lists, groups)

    def _names(self, cell: str | list[str]) -> list[str]:
        """The label names of one label cell: a JSON list as written, or the cell split on ``label_separator``."""
        if isinstance(cell, list):
            return list(cell)
        if self.label_separator is None:
            return [cell]
        return [name.strip() for name in cell.split(self.label_separator) if name.strip()]

    def _target(self, names: list[str], mapping: dict[str, int], multilabel: bool) -> int | list[float]:
        if not multilabel:
            return mapping[names[0]]
        hot = [0.0] * len(mapping)
        for name in names:
            hot[mapping[name]] = 1.0
        return hot

    def _labelled_tables(self) -> dict[str, _Labelled]:
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
        return [name for table in tables.values() for row in table.names for name in row]

    @property
    @override
    def labels(self) -> list[str]:
        if self.model_labels is not None and not self._has_labelled_source():
            return list(self.model_labels)  # predict-only
        return super().labels

    # -- preprocess ------------------------------------------------------------------------
    @override
    def set_preprocess(self, preprocess: Any) -> None:
        """Use a backbone's :class:`TextPreprocess`; refuses a ``max_length`` beyond the model's positions.

        Raises:
            ConfigurationError: Not a text preprocess, or the effective ``max_length`` is larger
                than the tokenizer / model supports (both numbers and the fix are named).
        """
        super().set_preprocess(preprocess)
        try:
            self.effective_preprocess()
        except ConfigurationError:
            self.preprocess = None
            raise

    @override
    def effective_preprocess(self) -> TextPreprocess:
        """The backbone's :class:`TextPreprocess` with this module's ``max_length`` (when set).

        Raises:
            DataError: :meth:`set_preprocess` was not called.
            ConfigurationError: The ``max_length`` is larger than the model supports.
        """
        p = cast(TextPreprocess, self._require_preprocess())  # set_preprocess checked the type
        effective = p.with_max_length(self.max_length) if self.max_length is not None else p
        limit = _position_limit(effective)
        if limit is not None and effective.max_length > limit[0]:
            source = "max_length" if self.max_length is not None else "the backbone's max_length"
            raise ConfigurationError(
                f"{source}={effective.max_length} is more than the {limit[0]} tokens the model supports "
                f"({limit[1]}). Fix: max_length={limit[0]} or less (data.max_length={limit[0]} with tl-train)"
            )
        return effective

    @override
    def input_settings(self) -> dict[str, Any]:
        """``{"text_column", "max_length", "encoding", "separator"}``: how to read new texts the same way.

        ``max_length`` is the effective one once :meth:`set_preprocess` was called, else the
        override (``None``: the backbone's).
        """
        max_length = self.effective_preprocess().max_length if self.preprocess is not None else self.max_length
        return {
            "text_column": self.text_column,
            "max_length": max_length,
            "encoding": self.encoding,
            "separator": self.separator,
        }

    # -- datasets --------------------------------------------------------------------------
    @override
    def _has_labelled_source(self) -> bool:
        return self.path is not None or self.train_path is not None

    @override
    def _has_predict_source(self) -> bool:
        return self.predict_path is not None

    def _predict_texts(self) -> list[str]:
        assert self.predict_path is not None  # checked by the caller
        df = self._read(self.predict_path)
        self._columns(df, self.predict_path, need_labels=False)
        if self.id_column is not None and self.id_column not in df.columns:
            raise DataError(
                f"id_column {self.id_column!r} not in {self.predict_path!r}; columns present: {list(map(str, df.columns))}"
            )
        texts: list[Any] = df[self.text_column].tolist()
        _check_text_cells(texts, self.predict_path)
        ids = df[self.id_column].tolist() if self.id_column is not None else range(len(texts))
        self.predict_ids = ["" if i is None else str(i) for i in ids]
        # an empty text (empty cell, JSON null) is valid input: predicted like any other text
        return ["" if t is None else t for t in texts]

    @override
    def _build(self, stage: str) -> dict[str, Dataset]:
        self.effective_preprocess()
        if stage == "predict":
            if self.predict_path is None:
                raise DataError("no predict_path given: pass predict_path=<file with a text column> to predict")
            return {"predict": _TextDataset(self._predict_texts(), None)}
        mapping = self.class_to_idx  # raises on labels the model does not know
        tables = self._labelled_tables()
        multilabel = self.multilabel
        base = tables.get("all") or tables["train"]
        targets = [self._target(names, mapping, multilabel) for names in base.names]
        val_frac = self.val_fraction if "val" not in tables else 0.0
        test_frac = self.test_fraction if "test" not in tables else 0.0
        # multi-label rows are stratified by their first label (in class-index order)
        strata = [t if isinstance(t, int) else t.index(1.0) for t in targets]
        tr, va, te = stratified_split(strata, val_frac, test_frac, self.seed)
        if self.max_train_samples is not None and self.max_train_samples < len(tr):
            rng = np.random.default_rng(self.seed)
            tr = sorted(rng.choice(tr, size=self.max_train_samples, replace=False).tolist())

        def subset(idx: list[int]) -> _TextDataset:
            return _TextDataset([base.texts[i] for i in idx], [targets[i] for i in idx])

        def table(name: str, idx: list[int]) -> _TextDataset:
            if name in tables:
                t = tables[name]
                return _TextDataset(t.texts, [self._target(names, mapping, multilabel) for names in t.names])
            return subset(idx)

        test_source = tables.get("test", base)
        if self.group_column is not None and test_source.groups is None:
            path = self.test_path if "test" in tables else (self.path or self.train_path)
            raise DataError(
                f"group_column {self.group_column!r} is not a column of {path!r}, where the test rows come from"
            )
        if test_source.groups is not None:
            groups = test_source.groups
            self._test_groups = list(groups) if "test" in tables else [groups[i] for i in te]
        return {"train": subset(tr), "val": table("val", va), "test": table("test", te)}

    def test_groups(self) -> list[str] | None:
        """The ``group_column`` cell of every test row, in test-dataset order (``None`` without ``group_column``)."""
        if self.group_column is None:
            return None
        self._dataset("test")
        return list(self._test_groups or [])

    @override
    def _collate(self, split: str) -> _TokenizeCollate:
        return _TokenizeCollate(self.effective_preprocess())

    @override
    def _missing_split_message(self, split: str) -> str:
        if split == "test":
            return "no test rows: give test_path=... or test_fraction > 0 (with path=... or train_path=...)"
        if split == "predict":
            return "no rows to predict: give predict_path=..."
        return f"no {split} rows"


def _check_text_cells(texts: list[Any], path: str) -> None:
    bad = [i for i, t in enumerate(texts) if t is not None and not isinstance(t, str)]
    if bad:
        raise DataError(
            f"{path!r}: text cells that are not strings in rows (0-based) {bad[:10]} "
            f"(e.g. {json.dumps(texts[bad[0]])[:80]}). Fix: one string per text cell"
        )


def _is_label_cell(cell: Any) -> bool:
    if isinstance(cell, str):
        return True
    return isinstance(cell, list) and all(isinstance(n, str) and n.strip() for n in cell)


#: tokenizers without a known limit report a huge sentinel (transformers' VERY_LARGE_INTEGER, 1e30)
_NO_LIMIT = 10**9
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


def _position_limit(preprocess: TextPreprocess) -> tuple[int, str] | None:
    """The most tokens the model behind ``preprocess`` takes, and where that number comes from.

    The smallest of: a ``max_positions`` attribute of the preprocess (when the backbone sets
    one), the tokenizer's ``model_max_length`` (unless it is transformers' "no limit" sentinel),
    and the position-embedding size in the ``config.json`` of a local model folder the
    tokenizer was loaded from. ``None`` when none is known.
    """
    limits: list[tuple[int, str]] = []
    declared = getattr(preprocess, "max_positions", None)
    if isinstance(declared, int) and declared > 0:
        limits.append((declared, "the backbone's max_positions"))
    tokenizer = preprocess.tokenizer
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < _NO_LIMIT:
        limits.append((model_max, "the tokenizer's model_max_length"))
    folder = getattr(tokenizer, "name_or_path", None)
    config_file = Path(folder) / "config.json" if isinstance(folder, str) and folder else None
    if config_file is not None and config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        for key in _POSITION_KEYS:
            value = config.get(key) if isinstance(config, dict) else None
            if isinstance(value, int) and value > 0:
                limits.append((value, f"{key} in {str(config_file)!r}"))
                break
    return min(limits) if limits else None
