"""Where diagnostics write, how they draw (matplotlib, Agg, no pyplot state) and log pictures."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tl_lightning.errors import ConfigurationError

__all__ = ["log_image", "new_figure", "require_matplotlib", "resolve_dir", "save_figure"]


def require_matplotlib(who: str, hint: str = "") -> None:
    """Raise a one-line error naming the fix when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigurationError(
            f"{who} draws its pictures with matplotlib, which is not installed. Fix: pip install matplotlib"
            + (f" ({hint})" if hint else "")
        )


def new_figure(width: float, height: float, dpi: int = 100) -> Any:
    """A matplotlib Figure on its own Agg canvas: no pyplot, no window, safe in any thread."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG (parent folders created) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def resolve_dir(trainer: Any, dirpath: str | Path | None) -> Path:
    """``dirpath``, else the trainer's log folder (the first logger's ``log_dir``, else ``default_root_dir``).

    ``trainer.log_dir`` broadcasts from rank 0, so call this on every rank (in ``setup``), never
    from rank-0-only code.
    """
    if dirpath is not None:
        return Path(dirpath)
    log_dir = trainer.log_dir
    return Path(log_dir if log_dir is not None else trainer.default_root_dir)


def log_image(trainer: Any, tag: str, path: Path, step: int) -> bool:
    """Log the PNG at ``path`` to every TensorBoardLogger of ``trainer``; whether one was found."""
    from lightning.pytorch.loggers import TensorBoardLogger

    loggers = [lg for lg in getattr(trainer, "loggers", []) if isinstance(lg, TensorBoardLogger)]
    if not loggers:
        return False
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"))
    for lg in loggers:
        lg.experiment.add_image(tag, pixels, global_step=step, dataformats="HWC")
    return True
