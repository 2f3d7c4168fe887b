"""Command-line entry points: ``tl-train`` (Hydra training app) and ``tl-predict``.

The configs live in the repository's top-level ``conf/`` folder and ship inside the wheel as
``tl_lightning/conf``; :func:`config_dir` finds whichever is present.
"""

from tl_lightning.cli._config import config_dir

__all__ = ["config_dir"]
