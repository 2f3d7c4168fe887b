"""Training data whose order and augmentation depend only on ``(seed, epoch)``, so resume is exact.

Three pieces, put together by :func:`seeded_train_loader`:

- :class:`EpochSampler` shuffles with a generator seeded by ``seed + epoch`` (Lightning calls
  ``set_epoch`` before every epoch). It is a ``DistributedSampler``: under DDP it splits the
  epoch's order between the ranks itself and Lightning leaves it in place (Lightning would wrap
  any other custom sampler in a ``DistributedSamplerWrapper``). It yields :class:`EpochIndex`
  values: plain ``int`` indices that also carry the epoch.
- :class:`SeededDataset` runs the wrapped dataset's ``__getitem__`` under torch / numpy / python
  RNGs seeded by ``(seed, epoch, index)``. Random augmentation (random crops, flips) then depends
  neither on the global RNG nor on which worker loads the sample, and the caller's RNG state is
  left untouched.
- :class:`ResumableDataLoader` implements Lightning's ``state_dict`` / ``load_state_dict``
  (the fit loop saves it in checkpoints): the epoch and how many batches of it the loop has
  taken. On resume the sampler skips exactly those, so a run stopped mid-epoch continues with
  the next batch of the same order.

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> loader = seeded_train_loader(TensorDataset(torch.arange(6)), seed=0, batch_size=2)
    >>> loader.sampler.set_epoch(1)
    >>> first = [b[0].tolist() for b in loader]
    >>> loader.sampler.set_epoch(1)
    >>> first == [b[0].tolist() for b in loader]
    True
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["EpochIndex", "EpochSampler", "ResumableDataLoader", "SeededDataset", "seeded_train_loader"]


class EpochIndex(int):
    """A dataset index that remembers the epoch it was drawn for (an ``int`` everywhere else)."""

    epoch: int

    def __new__(cls, index: int, epoch: int) -> EpochIndex:
        obj = super().__new__(cls, index)
        obj.epoch = int(epoch)
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        # sent to DataLoader worker processes: keep the epoch
        return (EpochIndex, (int(self), self.epoch))

    def __repr__(self) -> str:
        return f"EpochIndex({int(self)}, epoch={self.epoch})"


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class EpochSampler(DistributedSampler):
    """Shuffled (or sequential) order seeded by ``(seed, epoch)``, split between ranks, resumable.

    Args:
        dataset: The dataset (only its length is used).
        seed: Seed of the order; epoch ``e`` uses ``seed + e``.
        shuffle: Shuffle each epoch (``False``: ``0, 1, 2, ...``).
        num_replicas: Number of ranks; default: the initialised process group's world size, else 1.
        rank: This rank; default: the process group's rank, else 0.

    The order of an epoch is the same on every rank and in every run with the same seed; each
    rank takes every ``num_replicas``-th index of it (padded to equal length, as
    ``DistributedSampler`` does).
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        world, own_rank = _world()
        super().__init__(
            dataset,
            num_replicas=world if num_replicas is None else num_replicas,
            rank=own_rank if rank is None else rank,
            shuffle=shuffle,
            seed=int(seed),
            drop_last=False,
        )
        self._skip = 0

    def skip_next(self, samples: int) -> None:
        """Leave out the first ``samples`` indices of this rank's next iteration (resume mid-epoch)."""
        self._skip = max(0, int(samples))

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        epoch = self.epoch
        return iter([EpochIndex(i, epoch) for i in indices[skip:]])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch.

    Example:
        >>> sample_seed(0, 1, 2) == sample_seed(0, 1, 2) != sample_seed(0, 2, 2)
        True
    """
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class SeededDataset(Dataset):
    """Load each sample under RNGs seeded by ``(seed, epoch, index)``; the caller's RNG is untouched.

    Indices without an epoch (a plain ``int``, e.g. from a ``SequentialSampler`` when Lightning
    replaces the sampler for ``overfit_batches``) use epoch 0.

    Args:
        dataset: The map-style dataset to wrap.
        seed: Base seed.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        epoch = getattr(index, "epoch", 0)
        seed = sample_seed(self.seed, epoch, int(index))
        py_state, np_state = random.getstate(), np.random.get_state()
        # the CPU generator only: torch.manual_seed would also reseed every CUDA device
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed & 0xFFFFFFFF)
            try:
                return self.dataset[int(index)]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)

    def __getattr__(self, name: str) -> Any:
        # attributes of the wrapped dataset (``samples``, ``targets``) stay reachable
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableDataLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` that Lightning can checkpoint and resume mid-epoch.

    Args:
        *args: ``DataLoader`` arguments.
        batches_taken: Returns how many batches of the current epoch the training loop has taken
            (``trainer.fit_loop.epoch_loop.batch_progress.current.ready``); saved in
            :meth:`state_dict`. The loader cannot count them itself: Lightning fetches a batch
            ahead.
        **kwargs: ``DataLoader`` keyword arguments.
    """

    def __init__(self, *args: Any, batches_taken: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches_taken = batches_taken

    def _epoch_sampler(self) -> EpochSampler | None:
        sampler = self.batch_sampler.sampler if self.batch_sampler is not None else self.sampler
        return sampler if isinstance(sampler, EpochSampler) else None

    def state_dict(self) -> dict[str, Any]:
        """The epoch and the batches of it already taken."""
        sampler = self._epoch_sampler()
        return {
            "epoch": sampler.epoch if sampler is not None else 0,
            "batches": int(self.batches_taken()) if self.batches_taken is not None else 0,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the saved epoch after its taken batches (on the next ``iter``)."""
        sampler = self._epoch_sampler()
        if sampler is None:
            return
        sampler.set_epoch(int(state_dict.get("epoch", 0)))
        batch_size = int(state_dict.get("batch_size") or self.batch_size or 1)
        sampler.skip_next(int(state_dict.get("batches", 0)) * batch_size)


def _batches_taken(datamodule: Any) -> int:
    trainer = getattr(datamodule, "trainer", None)
    if trainer is None:
        return 0
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)


def seeded_train_loader(
    dataset: Dataset,
    *,
    seed: int,
    shuffle: bool = True,
    datamodule: Any = None,
    **loader_kwargs: Any,
) -> ResumableDataLoader:
    """The training loader: :class:`EpochSampler` order, :class:`SeededDataset` augmentation, resumable.

    Args:
        dataset: The training dataset.
        seed: Seed of the order and of the augmentation.
        shuffle: Shuffle every epoch.
        datamodule: The ``LightningDataModule`` building the loader; through its ``trainer`` the
            loader knows how far the fit loop got (for checkpoints), and shuffling is off under
            ``Trainer(overfit_batches=...)``, which only turns off samplers it recognises.
        **loader_kwargs: ``batch_size``, ``num_workers``, ``collate_fn``, ... (not ``shuffle`` /
            ``sampler``).
    """
    trainer = getattr(datamodule, "trainer", None)
    if trainer is not None and trainer.overfit_batches > 0:
        shuffle = False
    batches_taken = None if datamodule is None else (lambda: _batches_taken(datamodule))
    seeded = SeededDataset(dataset, seed)
    return ResumableDataLoader(
        seeded,
        sampler=EpochSampler(seeded, seed=seed, shuffle=shuffle),
        # the iterator's base seed comes from here, not from (and not advancing) the global RNG
        generator=torch.Generator().manual_seed(int(seed)),
        batches_taken=batches_taken,
        **loader_kwargs,
    )
