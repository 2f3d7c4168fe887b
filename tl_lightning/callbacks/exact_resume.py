"""Global RNG states in every checkpoint, restored where the run stopped, so resume is exact.

Dropout, random augmentation that uses the global RNG and anything else drawing random numbers
during training depend on the torch (CPU and CUDA), numpy and python RNG states. Lightning does
not checkpoint them: a resumed run draws different numbers than the run it continues. This
callback stores them in every checkpoint and puts them back right before training continues
(the first ``on_train_epoch_start`` or ``on_train_batch_start`` after the restore), so what a
resumed run does between loading the checkpoint and its next training step (sanity-check
validation, building loaders) does not shift them.

On resume it also makes sure Lightning gives a resumable training loader its saved position
(see :meth:`ExactResume.on_fit_start`), so a run stopped mid-epoch continues with the next
batch. Under DDP the checkpoint holds rank 0's states and every rank gets them back; with
``seed_everything`` every rank starts from the same seed anyway.

Example:
    >>> from lightning.pytorch import Trainer
    >>> trainer = Trainer(callbacks=[ExactResume()], logger=False)  # doctest: +SKIP
    >>> trainer.fit(model, datamodule=dm, ckpt_path="checkpoints/last.ckpt")  # doctest: +SKIP
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

__all__ = ["ExactResume", "rng_states", "set_rng_states"]


def rng_states() -> dict[str, Any]:
    """The global torch / CUDA / numpy / python RNG states, as tensors and plain numbers.

    Plain types only, so checkpoints holding them load with ``torch.load(weights_only=True)``.
    """
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"].cpu())
    saved_np = states["numpy"]
    np.random.set_state(
        (
            saved_np["name"],
            saved_np["keys"].numpy().astype(np.uint32),
            saved_np["pos"],
            saved_np["has_gauss"],
            saved_np["gauss"],
        )
    )
    saved_py = states["python"]
    random.setstate((saved_py["version"], tuple(int(v) for v in saved_py["state"].tolist()), saved_py["gauss"]))
    cuda = states.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            rank_zero_warn(
                f"the checkpoint holds CUDA RNG states of {len(cuda)} device(s) but this machine has "
                f"{torch.cuda.device_count()}; CUDA random numbers (dropout on GPU) differ from the original run"
            )


class ExactResume(Callback):
    """Checkpoint the global RNG states and restore them when training continues.

    Put it first in the callback list, so callbacks drawing random numbers in the same hook see
    the restored state.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning hands a resumable training loader (state_dict / load_state_dict, e.g.
        # tl_lightning's) its saved position only if it builds the loader after restoring the
        # loop state. ``trainer.estimated_stepping_batches`` (schedulers ask for it in
        # configure_optimizers) builds it before that; drop that early loader on resume so the
        # fit loop builds it again, with its position.
        fit_loop = trainer.fit_loop
        if trainer.ckpt_path is None or getattr(fit_loop, "_combined_loader", None) is None:
            return
        fetcher = getattr(fit_loop, "_data_fetcher", None)
        if fetcher is not None:
            fetcher.teardown()
            fit_loop._data_fetcher = None
        fit_loop._combined_loader = None

    def _restore(self) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._restore()
