"""``tl-train --resume <run folder>``: the same run, continued in its own folder.

The command line of a resumed run is rebuilt from the run folder: the overrides it was started
with (``.hydra/overrides.yaml``, plus its ``hydra.*`` overrides and ``--config-dir``), then
the overrides given now (``trainer.max_epochs=10`` extends a run), then
``hydra.run.dir=<folder> ckpt_path=<folder>/checkpoints/last.ckpt resume=<folder>``. Written
as ``resume=<folder>`` it works the same.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from tl_lightning.errors import ConfigurationError

__all__ = ["expand_resume", "resume_command"]

_OWN_KEYS = ("hydra.run.dir", "ckpt_path", "resume", "hydra.output_subdir", "hydra.job.name")


def _quote(path: Path) -> str:
    """A path as a Hydra override value (quoted when it holds characters the grammar reads)."""
    text = str(path)
    if re.fullmatch(r"[\w/.-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].strip()


def _find_resume(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    rest: list[str] = []
    folder: str | None = None
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--resume":
            if i + 1 >= len(args):
                raise ConfigurationError("--resume needs the run folder: tl-train --resume outputs/<task>/<date>/<time>")
            folder = args[i + 1]
            i += 2
            continue
        if arg.startswith("--resume="):
            folder = arg.split("=", 1)[1]
        elif _key(arg) == "resume" and "=" in arg and not arg.startswith("~"):
            value = arg.split("=", 1)[1].strip().strip("'\"")
            folder = None if value in ("", "null") else value
        else:
            rest.append(arg)
        i += 1
    return folder, rest


def _config_dirs(hydra_yaml: Path) -> list[str]:
    """``--config-dir`` folders the run was started with (from ``.hydra/hydra.yaml``)."""
    try:
        sources = OmegaConf.to_container(OmegaConf.load(hydra_yaml).hydra.runtime.config_sources, resolve=False)
    except Exception:  # noqa: BLE001 - an old or hand-edited hydra.yaml: replay without it
        return []
    dirs = []
    for source in sources or []:
        if isinstance(source, dict) and source.get("provider") == "command-line" and source.get("schema") == "file":
            dirs.append(str(source.get("path")))
    return dirs


def _hydra_overrides(hydra_yaml: Path) -> list[str]:
    try:
        overrides = OmegaConf.to_container(OmegaConf.load(hydra_yaml).hydra.overrides.hydra, resolve=False)
    except Exception:  # noqa: BLE001 - see _config_dirs
        return []
    return [str(o) for o in overrides or []]


_VALUE_FLAGS = ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp")


def _split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """``(flags with their values, overrides)``."""
    flags: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _VALUE_FLAGS and i + 1 < len(args):
            flags += [arg, args[i + 1]]
            i += 2
            continue
        (flags if arg.startswith("-") else overrides).append(arg)
        i += 1
    return flags, overrides


def _dedupe(overrides: list[str]) -> list[str]:
    """Later overrides of the same key win (and take the place of the earlier one)."""
    last: dict[str, int] = {}
    for i, override in enumerate(overrides):
        last[_key(override)] = i
    return [o for i, o in enumerate(overrides) if last[_key(o)] == i]


def expand_resume(argv: Sequence[str]) -> list[str]:
    """Rewrite ``tl-train`` arguments holding ``--resume <folder>`` / ``resume=<folder>``; others unchanged.

    Raises:
        ConfigurationError: The folder is not a ``tl-train`` run with a ``checkpoints/last.ckpt``,
            or ``--resume`` is combined with ``--multirun``.

    Example:
        >>> expand_resume(["trainer.max_epochs=5"])
        ['trainer.max_epochs=5']
    """
    folder, rest = _find_resume(argv)
    if folder is None:
        return list(argv)
    if any(a in ("-m", "--multirun") for a in rest):
        raise ConfigurationError("--resume continues one run; it cannot be combined with -m/--multirun")
    run = Path(os.path.abspath(os.path.expanduser(folder)))
    overrides_yaml = run / ".hydra" / "overrides.yaml"
    last = run / "checkpoints" / "last.ckpt"
    if not run.is_dir():
        raise ConfigurationError(f"--resume {folder!r}: no such folder. Fix: pass a run folder, e.g. outputs/<task>/<date>/<time>")
    if not overrides_yaml.is_file():
        raise ConfigurationError(
            f"--resume {folder!r}: not a tl-train run folder (no .hydra/overrides.yaml). "
            "Fix: pass the folder tl-train printed as 'output dir'"
        )
    if not last.exists():  # a file, or a folder of shards (trainer=fsdp)
        raise ConfigurationError(
            f"--resume {folder!r}: the run saved no checkpoint (no checkpoints/last.ckpt), so there is nothing to "
            f"continue. Fix: start it again with its overrides ({overrides_yaml}) in a new folder"
        )
    saved = [str(o) for o in OmegaConf.to_container(OmegaConf.load(overrides_yaml)) or []]  # type: ignore[union-attr]
    hydra_yaml = run / ".hydra" / "hydra.yaml"
    saved += _hydra_overrides(hydra_yaml)
    flag_args, given = _split_flags(rest)
    if not any(a in ("--config-dir", "-cd") or a.startswith("--config-dir=") for a in flag_args):
        for config_dir in _config_dirs(hydra_yaml):
            flag_args += ["--config-dir", config_dir]
    overrides = _dedupe([o for o in saved + given if _key(o) not in _OWN_KEYS])
    own = [f"hydra.run.dir={_quote(run)}", f"ckpt_path={_quote(last)}", f"resume={_quote(run)}"]
    return flag_args + overrides + own


def resume_command(output_dir: str | os.PathLike[str]) -> str:
    """The command that continues the run in ``output_dir``."""
    import shlex

    return f"tl-train --resume {shlex.quote(str(output_dir))}"
