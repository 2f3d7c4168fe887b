"""DDP inside Hydra jobs: the processes Lightning starts for ranks > 0 run this job, and only it.

Lightning's script launcher (``strategy=ddp``, and ``trainer=fsdp``) starts ranks > 0 by running
the command line again (``sys.argv``) with ``hydra.run.dir`` set to the run folder. Under a
multirun that command line is the whole sweep: every extra rank runs every job of the sweep
again, writes its log and ``.hydra/`` folders wherever its own clock puts them (several folders
per job: lightning-hydra-template issue 393), and under an Optuna sweep asks the study for its
own trials, so each GPU trains other hyperparameters (issue 639). After the first job the
launcher's environment (``LOCAL_RANK``, ``MASTER_PORT``) and the process group also stay behind:
the next job takes its ranks for "started externally" and waits for processes that never come.

:class:`DistributedJobs` (a Hydra callback, registered in ``conf/hydra/default.yaml``) fixes both:

- the extra ranks of a job run that job: its own overrides (``hydra.overrides.task`` and
  ``hydra.overrides.hydra``, so also an Optuna trial's parameters), in run mode, in the job's
  folder (``hydra.run.dir`` = the job's ``runtime.output_dir``), writing no ``.hydra/`` of their own;
- when a job ends, the process group is destroyed and the launcher's environment variables are
  put back, so the next job of the sweep starts its own ranks.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

__all__ = ["DistributedJobs", "job_subprocess_command"]

# what Lightning's launchers set in the launching process
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK")
_OWN_KEYS = ("hydra.run.dir", "hydra.mode", "hydra.job.name", "hydra.output_subdir")
_FLAGS_WITH_VALUE = ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp")


def _quote(text: str) -> str:
    if re.fullmatch(r"[\w/.-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].strip()


def _config_flags(argv: Sequence[str]) -> list[str]:
    """``--config-dir``-like flags with their values (the overrides come from the job's config)."""
    flags: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _FLAGS_WITH_VALUE and i + 1 < len(args):
            flags += [arg, args[i + 1]]
            i += 2
            continue
        if any(arg.startswith(flag + "=") for flag in _FLAGS_WITH_VALUE):
            flags.append(arg)
        i += 1
    return flags


def job_subprocess_command(local_rank: int) -> tuple[list[str], str]:
    """The command (and working directory) Lightning runs for rank ``local_rank`` of the current Hydra job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hydra_cfg = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += _config_flags(sys.argv[1:])
    command += [str(o) for o in hydra_cfg.overrides.hydra if _key(str(o)) not in _OWN_KEYS]
    command += [str(o) for o in hydra_cfg.overrides.task]
    command += [
        f"hydra.run.dir={_quote(str(hydra_cfg.runtime.output_dir))}",
        "hydra.mode=RUN",
        f"hydra.job.name=train_ddp_process_{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


def _install() -> None:
    """Make Lightning's script launchers (fabric's and the trainer's) use :func:`job_subprocess_command`."""
    import lightning.fabric.strategies.launchers.subprocess_script as fabric_launcher
    import lightning.pytorch.strategies.launchers.subprocess_script as trainer_launcher

    for module in (fabric_launcher, trainer_launcher):
        module._hydra_subprocess_cmd = job_subprocess_command  # type: ignore[attr-defined]


class DistributedJobs(Callback):
    """Hydra callback: each job's DDP ranks run that job, and each job starts its own ranks (module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        del kwargs
        self._env: dict[str, str | None] = {}

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        _install()
        self._env = {key: os.environ.get(key) for key in _LAUNCH_ENV}

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in self._env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
