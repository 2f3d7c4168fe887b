"""Hyperparameter sweeps on Optuna (>= 4): storage by URL, per-trial seeding, the search space, results.

The Hydra side is the ``tl_optuna`` sweeper (``hydra_plugins/tl_optuna_sweeper``, selected by
``tl-train -m hparams_search=optuna``); the training side is the
:class:`~tl_lightning.callbacks.OptunaPruning` callback. These helpers are shared by both and
usable from your own Optuna loops.

Example:
    >>> from tl_lightning.sweeps import storage_url
    >>> storage_url("journal:/shared/study.journal")
    'journal:/shared/study.journal'
"""

from tl_lightning.sweeps._results import write_results
from tl_lightning.sweeps._space import SearchSpace, search_space
from tl_lightning.sweeps._storage import open_storage, storage_url
from tl_lightning.sweeps._trial import PRUNED_ATTR, trial_from_environment

__all__ = [
    "PRUNED_ATTR",
    "SearchSpace",
    "open_storage",
    "search_space",
    "storage_url",
    "trial_from_environment",
    "write_results",
]
