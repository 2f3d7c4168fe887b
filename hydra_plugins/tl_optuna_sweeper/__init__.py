"""Hydra sweeper ``tl_optuna``: hyperparameter sweeps for ``tl-train`` on Optuna (>= 4).

Shipped with tl_lightning (``hydra_plugins`` is Hydra's namespace for plugins). Select it with
``hparams_search=optuna`` (``conf/hparams_search/optuna.yaml``) or ``hydra/sweeper=tl_optuna``.
See :class:`hydra_plugins.tl_optuna_sweeper.tl_optuna_sweeper.TLOptunaSweeper`.
"""
