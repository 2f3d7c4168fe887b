"""On-disk store of frozen-backbone features, one folder per :class:`~tl_lightning.features.key.FeatureKey`.

Layout: ``<cache_dir>/features-<first 32 hex digits of the key>/`` holds ``features.npy``
(float32, ``(n, feature_dim)``), ``targets.npy`` (class indices, or 0/1 rows for multilabel
data) and ``meta.json`` (the full key, its components, the split it was computed for, sizes).
A folder is written under a temporary name and renamed when complete, so a run that stops
half-way leaves nothing that a later run could mistake for a cache; two runs computing the same
key at once both succeed (the second keeps the first one's folder).

Sets larger than ``memmap_bytes`` are memory-mapped (``numpy.load(mmap_mode="r")``) instead of
read into memory: batches are copied out of the page cache as they are drawn.

Example:
    >>> import numpy as np, tempfile
    >>> from tl_lightning.features.key import FeatureKey
    >>> key = FeatureKey("timm:x", "w", "avg", "image:...", "d", "l", "32-true")
    >>> cache = FeatureCache(tempfile.mkdtemp())
    >>> cache.load(key) is None
    True
    >>> stored = cache.save(key, np.ones((4, 3), np.float32), np.arange(4), split="train")
    >>> cache.load(key).features.shape
    (4, 3)
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tl_lightning._checks import check_int
from tl_lightning.errors import ConfigurationError, DataError
from tl_lightning.features.key import CACHE_FORMAT, FeatureKey

__all__ = ["CachedSplit", "FeatureCache", "DEFAULT_MEMMAP_BYTES"]

#: sets above 1 GiB of features are memory-mapped
DEFAULT_MEMMAP_BYTES = 1 << 30


@dataclass
class CachedSplit:
    """The features of one split and where they came from.

    Attributes:
        features: ``(n, feature_dim)`` float32 (a read-only ``numpy.memmap`` for large sets).
        targets: ``(n,)`` class indices or ``(n, num_classes)`` 0/1 rows.
        key: The key they were computed under.
        path: Their cache folder (``None`` when kept in memory only).
        reused: Read from the cache instead of computed in this run.
        seconds: Time spent computing (or reading) them.
    """

    features: np.ndarray
    targets: np.ndarray
    key: FeatureKey
    path: Path | None = None
    reused: bool = False
    seconds: float = 0.0

    @property
    def memmapped(self) -> bool:
        """Whether the features are memory-mapped from disk rather than held in memory."""
        return isinstance(self.features, np.memmap)

    def __len__(self) -> int:
        return int(self.features.shape[0])


class FeatureCache:
    """Features on disk under ``folder``, keyed by :class:`FeatureKey`.

    Args:
        folder: The cache folder (created when first written).
        memmap_bytes: Feature arrays larger than this are memory-mapped when read.
    """

    def __init__(self, folder: str | Path, memmap_bytes: int = DEFAULT_MEMMAP_BYTES) -> None:
        if not isinstance(folder, (str, Path)) or not str(folder):
            raise ConfigurationError(f"cache_dir must be a folder path, got {folder!r}")
        self.folder = Path(folder).expanduser()
        self.memmap_bytes = check_int("memmap_bytes", memmap_bytes, low=0)

    def path_for(self, key: FeatureKey) -> Path:
        """The folder of ``key``'s features."""
        return self.folder / f"features-{key.digest()[:32]}"

    def _read(self, path: Path, key: FeatureKey) -> CachedSplit:
        try:
            features = np.load(path / "features.npy", mmap_mode="r")
            targets = np.load(path / "targets.npy")
        except (OSError, ValueError) as err:
            raise DataError(
                f"the feature cache {str(path)!r} is unreadable ({type(err).__name__}: {err}). Fix: delete that "
                "folder; it is recomputed on the next run"
            ) from err
        if features.nbytes <= self.memmap_bytes:
            features = np.array(features)
        return CachedSplit(features=features, targets=targets, key=key, path=path, reused=True)

    def load(self, key: FeatureKey) -> CachedSplit | None:
        """The cached features of ``key``, or ``None`` when there are none."""
        path = self.path_for(key)
        meta_file = path / "meta.json"
        if not meta_file.is_file():
            return None
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("digest") != key.digest() or meta.get("format") != CACHE_FORMAT:
            return None  # a different key with the same prefix: recompute (and keep the other)
        return self._read(path, key)

    def save(self, key: FeatureKey, features: np.ndarray, targets: np.ndarray, split: str = "") -> CachedSplit:
        """Write ``key``'s features atomically and return them as :meth:`load` would."""
        path = self.path_for(key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            np.save(tmp / "features.npy", np.ascontiguousarray(features, dtype=np.float32))
            np.save(tmp / "targets.npy", np.asarray(targets))
            meta: dict[str, Any] = {
                "format": CACHE_FORMAT,
                "digest": key.digest(),
                "key": asdict(key),
                "split": split,
                "num_samples": int(features.shape[0]),
                "feature_dim": int(features.shape[1]),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        except OSError as err:
            raise ConfigurationError(
                f"cannot write the feature cache under {str(self.folder)!r} ({err}). Fix: point data.cache_dir at a "
                "writable folder"
            ) from err
        try:
            os.rename(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process stored the same key first
            if not (path / "meta.json").is_file():
                raise
        split_data = self._read(path, key)
        split_data.reused = False
        return split_data
