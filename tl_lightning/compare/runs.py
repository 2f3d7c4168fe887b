"""Reading a finished (or stopped) sweep folder: one :class:`RunRecord` per planned job.

A comparison is a Hydra multirun of ``tl-train``: the sweep folder holds ``multirun.yaml`` (the
sweep's config, with ``hydra.sweeper.params`` and the command line's overrides) and one folder
per job with ``.hydra/overrides.yaml``, ``.hydra/config.yaml`` and, once the job has ended,
``summary.json`` (:class:`~tl_lightning.cli._summary.RunSummary`).

The jobs the sweep planned are recomputed from ``multirun.yaml`` exactly as Hydra's basic
sweeper expands them, and matched to the job folders by their swept overrides. So a job that
failed or was interrupted appears with its status and the reason from its ``summary.json``, and
a job that never started or never wrote its summary appears as ``missing``: nothing is dropped
silently. Without ``multirun.yaml`` (runs copied into one folder by hand) the job folders found
are the runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tl_lightning.errors import DataError

__all__ = ["MISSING", "STATUSES", "RunRecord", "SweepRuns", "read_sweep"]

#: status of a planned job without a ``summary.json`` (not started, still running, or killed)
MISSING = "missing"
#: every status a record can have: RunSummary's three, and ``missing``
STATUSES = ("completed", "failed", "interrupted", MISSING)


@dataclass
class RunRecord:
    """One job of the comparison, as its folder shows it.

    Attributes:
        job: The job's folder name (Hydra's job number), or ``#<n>`` for a planned job without a folder.
        strategy: The arm it belongs to: the ``finetune`` option (``"full"``), followed by any
            other swept override (``"full (model.lr=0.0001)"``).
        seed: The job's ``seed``.
        status: ``completed``, ``failed``, ``interrupted`` (from ``summary.json``) or ``missing``.
        metrics: Test and validation metrics of the run (``test/acc``, ``val/acc``, ...).
        train_seconds: Training time (``summary.json``'s ``train_seconds``).
        trainable_params: Parameters that trained (required grad when training ended).
        total_params: All of the model's parameters.
        epochs: Epochs trained.
        folder: The job folder, or ``None``.
        message: Why a run did not complete (the error or signal), or why it is missing.
        settings: A few settings that explain a result, from the job's config: ``lr``,
            ``head_lr``, ``max_epochs``, ``pretrained``.
    """

    job: str
    strategy: str
    seed: int | None
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    epochs: int | None = None
    folder: str | None = None
    message: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return asdict(self)


@dataclass
class SweepRuns:
    """The runs of one sweep folder.

    Attributes:
        sweep_dir: The sweep folder.
        records: One record per planned job (in Hydra's job order), then any extra job folders.
        swept: The overrides that vary between jobs, ``{key: [values]}`` in sweep order.
        settings: The ``compare`` section of the sweep's config (``metric``, ``baseline``, ...),
            empty for a plain multirun.
        strategy_key: The override naming a run's strategy (``finetune``).
        seed_key: The override naming a run's seed (``seed``).
    """

    sweep_dir: str
    records: list[RunRecord]
    swept: dict[str, list[str]]
    settings: dict[str, Any]
    strategy_key: str = "finetune"
    seed_key: str = "seed"


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"cannot read {str(path)!r}: {err}. Fix: point at an intact sweep folder") from err


def _split(override: str) -> tuple[str, str]:
    key, _, value = str(override).partition("=")
    return key.lstrip("+~"), value


def _select(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _planned_jobs(multirun: Mapping[str, Any]) -> list[dict[str, str]] | None:
    """The jobs Hydra's basic sweeper expands ``multirun.yaml`` into, as ``{key: value}`` per job.

    ``None`` for another sweeper (Optuna asks for its jobs one batch at a time; there is no plan).
    """
    target = str(_select(multirun, "hydra.sweeper._target_") or "")
    if not target.endswith("BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = _select(multirun, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + [
        str(o) for o in _select(multirun, "hydra.overrides.task") or []
    ]
    parsed = OverridesParser.create().parse_overrides(arguments)
    batches = BasicSweeper.split_arguments(parsed, None)
    return [dict(_split(o) for o in job) for job in batches[0]]


def _job_folders(sweep_dir: Path) -> dict[str, Path]:
    """Job folders under the sweep folder (any depth, for custom ``hydra.sweep.subdir`` patterns)."""
    found: dict[str, Path] = {}
    for root, dirs, files in os.walk(sweep_dir):
        here = Path(root)
        dirs[:] = sorted(
            d for d in dirs if d not in (".hydra", "checkpoints", "csv", ".submitit", "feature_cache")
        )
        if (here / ".hydra" / "overrides.yaml").is_file() or ("summary.json" in files and here != sweep_dir):
            found[here.relative_to(sweep_dir).as_posix()] = here
            dirs[:] = []
    return found


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _label(
    values: Mapping[str, str], swept: Iterable[str], strategy_key: str, seed_key: str, fallback: str
) -> str:
    name = values.get(strategy_key) or fallback
    extra = [f"{k}={values[k]}" for k in swept if k not in (strategy_key, seed_key) and k in values]
    return f"{name} ({', '.join(extra)})" if extra else name


def _record_from_folder(job: str, folder: Path, label: str, seed: int | None) -> RunRecord:
    config = (
        _read_yaml(folder / ".hydra" / "config.yaml") if (folder / ".hydra" / "config.yaml").is_file() else {}
    )
    settings = {
        "lr": _select(config, "model.lr"),
        "head_lr": _select(config, "model.head_lr"),
        "max_epochs": _select(config, "trainer.max_epochs"),
        "pretrained": _select(config, "backbone.pretrained"),
    }
    if seed is None:
        seed = _int_or_none(_select(config, "seed"))
    record = RunRecord(
        job=job, strategy=label, seed=seed, status=MISSING, folder=str(folder), settings=settings
    )
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        record.message = (
            "no summary.json: the job has not ended (still running, or killed before it could write one)"
        )
        return record
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as err:
        record.message = f"unreadable summary.json ({err})"
        return record
    record.status = str(summary.get("status") or "completed")
    metrics: dict[str, float] = {}
    for section in ("val_metrics", "test_metrics"):
        for key, value in (summary.get(section) or {}).items():
            try:
                metrics[str(key)] = float(value)
            except (TypeError, ValueError):
                continue
    record.metrics = metrics
    record.train_seconds = summary.get("train_seconds")
    record.trainable_params = _int_or_none(summary.get("trainable_params"))
    record.total_params = _int_or_none(summary.get("total_params"))
    record.epochs = _int_or_none(summary.get("epochs"))
    if record.status != "completed":
        record.message = summary.get("stopped_by") or None
    return record


def read_sweep(
    sweep_dir: str | os.PathLike[str], strategy_key: str = "finetune", seed_key: str = "seed"
) -> SweepRuns:
    """Read every job of a sweep folder (``outputs/<task>/multirun/<date>/<time>``).

    Args:
        sweep_dir: The sweep folder (holding ``multirun.yaml`` and the job folders).
        strategy_key: The override that names a job's strategy.
        seed_key: The override that names a job's seed.

    Returns:
        The runs: every planned job (missing ones included) and any other job folder found.

    Raises:
        DataError: The folder does not exist, or holds neither ``multirun.yaml`` nor job folders.

    Example:
        >>> runs = read_sweep("outputs/demo/multirun/2025-06-01/12-00-00")  # doctest: +SKIP
        >>> [(r.strategy, r.seed, r.status) for r in runs.records]  # doctest: +SKIP
        [('scratch', 1, 'completed'), ('scratch', 2, 'failed'), ...]
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise DataError(
            f"sweep folder {str(root)!r} does not exist. Fix: give the folder a tl-compare run printed"
        )
    multirun_path = root / "multirun.yaml"
    multirun = _read_yaml(multirun_path) if multirun_path.is_file() else {}
    folders = _job_folders(root)
    if not folders and not multirun:
        raise DataError(
            f"{str(root)!r} holds no multirun.yaml and no job folders (with .hydra/overrides.yaml or summary.json). "
            "Fix: give the sweep folder itself (outputs/<task>/multirun/<date>/<time>), not a job or a parent folder"
        )
    overrides = {
        name: dict(_split(o) for o in (_read_yaml(f / ".hydra" / "overrides.yaml") or []))
        if (f / ".hydra" / "overrides.yaml").is_file()
        else {}
        for name, f in folders.items()
    }
    planned = _planned_jobs(multirun) if multirun else None
    candidates = planned if planned is not None else list(overrides.values())
    swept: dict[str, list[str]] = {}
    for job in candidates:
        for key, value in job.items():
            swept.setdefault(key, [])
            if value not in swept[key]:
                swept[key].append(value)
    # the strategy and the seed name every run even when only one value was given
    swept = {k: v for k, v in swept.items() if len(v) > 1 or k in (strategy_key, seed_key)}

    records: list[RunRecord] = []
    used: set[str] = set()
    if planned is not None:
        for index, job in enumerate(planned):
            wanted = {k: job[k] for k in swept if k in job}
            match = next(
                (
                    n
                    for n in folders
                    if n not in used and all(overrides[n].get(k) == v for k, v in wanted.items())
                ),
                None,
            )
            label = _label(job, swept, strategy_key, seed_key, fallback="?")
            seed = _int_or_none(job.get(seed_key))
            if match is None:
                records.append(
                    RunRecord(
                        job=f"#{index}",
                        strategy=label,
                        seed=seed,
                        status=MISSING,
                        message="no job folder: the sweep ended before this job started",
                    )
                )
                continue
            used.add(match)
            records.append(_record_from_folder(match, folders[match], label, seed))
    for name in sorted(set(folders) - used, key=lambda n: (len(n), n)):
        values = overrides[name]
        config = folders[name] / ".hydra" / "config.yaml"
        fallback = str(_select(_read_yaml(config), "finetune.name") or "?") if config.is_file() else "?"
        label = _label(values, swept, strategy_key, seed_key, fallback=fallback)
        records.append(_record_from_folder(name, folders[name], label, _int_or_none(values.get(seed_key))))
    settings = dict(multirun.get("compare") or {}) if isinstance(multirun, Mapping) else {}
    return SweepRuns(str(root), records, swept, settings, strategy_key, seed_key)
