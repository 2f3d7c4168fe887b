"""One run, one folder: claim the run folder before Hydra writes into it.

Hydra names run folders by the second (``outputs/<task>/<date>/<H-M-S>``) and writes
``.hydra/`` into the folder before the task starts, so two runs started in the same second
share a folder, and ``hydra.run.dir=<a finished run>`` overwrites that run's config next to its
checkpoints. :class:`RunFolderGuard` (a Hydra callback, registered in ``conf/hydra/default.yaml``)
runs before that:

- a folder named by Hydra's timestamp is claimed with an exclusive claim file; when another
  run got there first, the run moves to ``<folder>_1``, ``<folder>_2``, ...;
- a folder given on the command line (``hydra.run.dir=...``) that already holds a run
  (``checkpoints/``, ``csv/metrics.csv`` or ``summary.json``) is refused, unless this is a
  resume of that run (``tl-train --resume <folder>``); a folder in use by a live ``tl-train``
  process is refused too.

The DDP processes that Lightning starts for ranks > 0 re-run the command inside rank 0's
folder and are left alone.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

__all__ = ["CLAIM_FILE", "RunFolderGuard", "run_markers"]

#: written into every run folder when the run claims it: "<host> <pid>"
CLAIM_FILE = ".tl-train-run"
_MARKERS = ("checkpoints", os.path.join("csv", "metrics.csv"), "summary.json")


def run_markers(folder: str | os.PathLike[str]) -> list[str]:
    """What in ``folder`` shows that a run already wrote there (empty list: nothing).

    Example:
        >>> run_markers("/no/such/folder")
        []
    """
    found = []
    root = Path(folder)
    for name in _MARKERS:
        path = root / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            found.append(name + ("/" if path.is_dir() else ""))
    return found


def _is_secondary_rank() -> bool:
    return any(os.environ.get(var, "0") not in ("", "0") for var in ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"))


def _claim_text() -> str:
    return f"{socket.gethostname()} {os.getpid()}\n"


def _live_owner(folder: Path) -> str | None:
    """``"pid N"`` when the claim file names another live process on this host, else None."""
    try:
        host, pid_text = (folder / CLAIM_FILE).read_text().split()[:2]
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if host != socket.gethostname() or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return f"pid {pid}"


def _claim_exclusive(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(folder / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(_claim_text())
    return True


def _claim_replace(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{CLAIM_FILE}.{os.getpid()}"
    tmp.write_text(_claim_text())
    os.replace(tmp, folder / CLAIM_FILE)


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def _given_on_command_line(config: DictConfig, key: str) -> bool:
    overrides = OmegaConf.select(config, "hydra.overrides.hydra") or []
    return any(str(o).lstrip("+~").split("=", 1)[0] == key for o in overrides)


def _set_folder(config: DictConfig, key: str, folder: str) -> None:
    # the job's config (and, in multirun, every job re-composed from the hydra overrides) sees it
    with read_write(config), open_dict(config):
        OmegaConf.update(config, key, folder, merge=False)
        overrides = list(OmegaConf.select(config, "hydra.overrides.hydra") or [])
        overrides.append(f"{key}={folder}")
        config.hydra.overrides.hydra = overrides


class RunFolderGuard(Callback):
    """Hydra callback: give every run its own folder and never overwrite a finished run (module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        del kwargs

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._guard(config, "hydra.run.dir", what="run folder")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._guard(config, "hydra.sweep.dir", what="sweep folder")

    def _guard(self, config: DictConfig, key: str, what: str) -> None:
        if _is_secondary_rank():
            return
        folder = Path(str(OmegaConf.select(config, key)))
        resume = OmegaConf.select(config, "resume", default=None)
        if not _given_on_command_line(config, key):
            claimed, n = folder, 0
            while not _claim_exclusive(claimed):
                n += 1
                claimed = folder.with_name(f"{folder.name}_{n}")
            if claimed != folder:
                _set_folder(config, key, str(claimed))
            return
        owner = _live_owner(folder)
        if owner is not None:
            _refuse(f"{what} {str(folder)!r} is in use by a running tl-train ({owner}). Fix: wait for it, or pick another folder")
        is_resume = resume is not None and os.path.abspath(str(resume)) == os.path.abspath(folder)
        from tl_lightning.cli._slurm import is_requeued_run

        is_resume = is_resume or is_requeued_run(folder)  # a requeued SLURM job continues its own run
        if key == "hydra.run.dir" and not is_resume:
            markers = run_markers(folder)
            if markers:
                _refuse(
                    f"{what} {str(folder)!r} already holds a run ({', '.join(markers)}); refusing to overwrite it. "
                    f"Fix: continue it with `tl-train --resume {folder}`, or pick a new folder (hydra.run.dir=...)"
                )
        if key == "hydra.sweep.dir":
            jobs = [p.name for p in folder.iterdir() if p.is_dir() and run_markers(p)] if folder.is_dir() else []
            if jobs:
                _refuse(
                    f"{what} {str(folder)!r} already holds runs (jobs {sorted(jobs)[:5]}); refusing to overwrite them. "
                    "Fix: pick a new folder (hydra.sweep.dir=...)"
                )
        _claim_replace(folder)
