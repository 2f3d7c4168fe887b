"""The comparison as a Hydra multirun: the callback that plans the sweep and writes the report.

``compare=strategies`` (``conf/compare/strategies.yaml``) registers :class:`StrategyComparison`
as a Hydra callback. It runs in the launching process, whatever the launcher (local, joblib,
submitit / SLURM, which waits for its jobs), so:

* **before the sweep** it turns ``compare.strategies`` and ``compare.seeds`` into
  ``hydra.sweeper.params`` (``finetune: scratch,feature_extraction,lp_ft,full``, ``seed: 1,2,3``);
  a sweep of the same key given on the command line (``seed=1,2,3,4,5``) takes precedence, as
  for any Hydra sweep;
* **after the sweep** it calls :func:`write_report` on the sweep folder.

A failing job ends a local multirun before the later jobs run and before ``on_multirun_end``;
``tl-compare`` writes the report in that case too (failed and missing jobs named in it), and
``tl-compare report <sweep folder>`` rebuilds it at any time from the folder alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from tl_lightning._checks import check_choice, check_int, check_number
from tl_lightning.compare.plot import plot_report
from tl_lightning.compare.report import ComparisonReport, build_report
from tl_lightning.compare.runs import read_sweep
from tl_lightning.errors import ConfigurationError

__all__ = ["REPORT_FILES", "SWEEP_FILE_ENV", "StrategyComparison", "sweep_values", "write_report"]

#: the files written into the sweep folder
REPORT_FILES = ("report.md", "report.json", "report.png")
#: when set, the callback writes the sweep folder's absolute path into this file (how tl-compare finds it)
SWEEP_FILE_ENV = "TL_COMPARE_SWEEP_FILE"

_STRATEGY_KEY = "finetune"
_SEED_KEY = "seed"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(
    sweep_dir: str | os.PathLike[str],
    metric: str | None = None,
    mode: str | None = None,
    baseline: str | None = None,
    alpha: float | None = None,
    plot: bool = True,
) -> ComparisonReport:
    """Build the comparison of a sweep folder and write ``report.md``, ``report.json``, ``report.png`` into it.

    Settings left ``None`` come from the sweep's ``compare`` section (``multirun.yaml``), then
    from the defaults (``test/acc``, mode from the metric's name, ``scratch``, 0.05).

    Args:
        sweep_dir: The sweep folder.
        metric: The metric compared (``test/acc``).
        mode: ``max`` or ``min``.
        baseline: The from-scratch strategy's name.
        alpha: Significance level of the paired t-tests.
        plot: Also draw ``report.png`` (needs matplotlib).

    Returns:
        The report.

    Example:
        >>> report = write_report("outputs/demo/multirun/2025-06-01/12-00-00")  # doctest: +SKIP
        >>> print(report.pick_sentence)  # doctest: +SKIP
    """
    runs = read_sweep(sweep_dir, strategy_key=_STRATEGY_KEY, seed_key=_SEED_KEY)
    settings = runs.settings
    report = build_report(
        runs.records,
        metric=metric or settings.get("metric") or "test/acc",
        mode=mode or settings.get("mode"),  # type: ignore[arg-type]
        baseline=baseline or settings.get("baseline") or "scratch",
        alpha=float(alpha if alpha is not None else settings.get("alpha") or 0.05),
        sweep_dir=str(runs.sweep_dir),
    )
    folder = Path(sweep_dir)
    if plot:
        plot_report(report, folder / "report.png")
    _atomic_write(folder / "report.md", report.to_markdown(picture="report.png" if plot else None))
    import json

    _atomic_write(folder / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def sweep_values(compare: Mapping[str, Any]) -> dict[str, str]:
    """``hydra.sweeper.params`` for a ``compare`` section: ``{"finetune": "a,b", "seed": "1,2,3"}``.

    Example:
        >>> sweep_values({"strategies": ["scratch", "full"], "seeds": 3})
        {'finetune': 'scratch,full', 'seed': '1,2,3'}
    """
    strategies = compare.get("strategies")
    if isinstance(strategies, str) or not isinstance(strategies, (list, tuple, ListConfig)) or not strategies:
        raise ConfigurationError(
            f"compare.strategies must be a non-empty list of finetune options, got {strategies!r}. "
            "Fix: compare.strategies=[scratch,feature_extraction,lp_ft,full]"
        )
    names = [str(s) for s in strategies]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"compare.strategies lists a strategy twice: {names}")
    seeds = compare.get("seeds")
    if isinstance(seeds, (list, tuple, ListConfig)):
        values = [check_int("compare.seeds[]", s, hint="seeds are integers") for s in seeds]
        if not values or len(set(values)) != len(values):
            raise ConfigurationError(f"compare.seeds must list distinct seeds, got {list(values)}")
    else:
        count = check_int(
            "compare.seeds", seeds, low=1, hint="a count N (seeds 1..N) or a list, e.g. [0,7,42]"
        )
        values = list(range(1, count + 1))
    return {_STRATEGY_KEY: ",".join(names), _SEED_KEY: ",".join(str(v) for v in values)}


def _refuse(message: str) -> None:
    # Hydra turns a callback's exceptions into warnings; a wrong comparison must not run
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def _check_settings(compare: Mapping[str, Any]) -> None:
    metric = compare.get("metric")
    if not isinstance(metric, str) or "/" not in metric:
        raise ConfigurationError(
            f"compare.metric must name a logged metric like 'test/acc' or 'val/f1', got {metric!r}"
        )
    if compare.get("mode") is not None:
        check_choice("compare.mode", compare.get("mode"), ["max", "min"])
    check_number("compare.alpha", compare.get("alpha", 0.05), low=0.0, high=0.5, low_open=True)
    if not isinstance(compare.get("baseline", "scratch"), str):
        raise ConfigurationError(
            f"compare.baseline must be a finetune option name, got {compare.get('baseline')!r}"
        )


class StrategyComparison(Callback):
    """Hydra callback of ``compare=strategies``: plan the strategy x seed sweep, then write its report.

    Registered by ``conf/compare/strategies.yaml`` under ``hydra.callbacks.compare``; see the
    module docstring. It refuses (one line, exit status 1) a run that is not a multirun, a sweeper
    other than Hydra's basic one, a sweep over a ``compare.*`` key, and bad ``compare`` settings.
    """

    def __init__(self, **kwargs: Any) -> None:
        del kwargs

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from tl_lightning.cli._run_folder import _is_secondary_rank

        # the extra DDP ranks of a comparison job re-run that job alone, in run mode
        if not _is_secondary_rank():
            _refuse(
                "compare=strategies runs one job per strategy and seed: it needs a multirun. "
                "Fix: tl-compare <overrides>, or tl-train -m compare=strategies <overrides>"
            )

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._plan(config)
        except SystemExit:
            raise
        except Exception as err:  # noqa: BLE001 - Hydra would only warn and run an unplanned sweep
            _refuse(f"compare=strategies could not plan the sweep: {type(err).__name__}: {err}")

    def _plan(self, config: DictConfig) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        target = str(OmegaConf.select(config, "hydra.sweeper._target_") or "")
        if not target.endswith("BasicSweeper"):
            _refuse(
                f"compare=strategies sweeps with Hydra's basic sweeper, but hydra.sweeper is {target!r} "
                "(hparams_search=...?). Fix: run the comparison without hparams_search"
            )
        task = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task") or []]
        parsed = OverridesParser.create().parse_overrides(task)
        swept = {o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()}
        fixed = {o.get_key_element().lstrip("+~"): o for o in parsed if not o.is_sweep_override()}
        for key, setting in (
            (_STRATEGY_KEY, "compare.strategies=[scratch,full]"),
            (_SEED_KEY, "compare.seeds=[7]"),
        ):
            if key in fixed:
                # Hydra would let the single value replace the whole list, silently
                _refuse(
                    f"{key}={fixed[key].get_value_element_as_str()} on the command line replaces the compared "
                    f"{'strategies' if key == _STRATEGY_KEY else 'seeds'}. Fix: {setting}"
                )
        bad = sorted(k for k in swept if k.startswith("compare."))
        if bad:
            _refuse(
                f"{bad[0]} was given as a sweep (a,b); compare settings take a list. "
                "Fix: 'compare.strategies=[scratch,full]' (with the brackets, quoted for the shell)"
            )
        compare = OmegaConf.to_container(config.compare, resolve=True)
        try:
            assert isinstance(compare, dict)
            _check_settings(compare)
            params = sweep_values(compare)
        except ConfigurationError as err:
            _refuse(str(err))
        current = (
            OmegaConf.to_container(config.hydra.sweeper.params, resolve=False)
            if OmegaConf.select(config, "hydra.sweeper.params") is not None
            else {}
        )
        assert isinstance(current, dict)
        # a sweep of the same key on the command line wins (as in any Hydra sweep): leave it out
        current.update({k: v for k, v in params.items() if k not in swept})
        # Hydra may hand over its node read-only (HydraConfig.set_config): lift that on the node itself
        with read_write(config.hydra), open_dict(config.hydra), read_write(config.hydra.sweeper):
            config.hydra.sweeper.params = current
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).absolute()
        if os.environ.get(SWEEP_FILE_ENV):
            Path(os.environ[SWEEP_FILE_ENV]).write_text(str(sweep_dir) + "\n")
        print(
            f"tl-compare: {params[_STRATEGY_KEY] if _STRATEGY_KEY not in swept else 'the finetune sweep'} x seeds "
            f"{params[_SEED_KEY] if _SEED_KEY not in swept else '(from the command line)'}; the report goes to "
            f"{sweep_dir / 'report.md'}",
            flush=True,
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
        compare = OmegaConf.to_container(config.compare, resolve=True)
        assert isinstance(compare, dict)
        report = write_report(
            sweep_dir,
            metric=compare.get("metric"),
            mode=compare.get("mode"),
            baseline=compare.get("baseline"),
            alpha=compare.get("alpha"),
        )
        print_verdict(report, sweep_dir)


def print_verdict(report: ComparisonReport, sweep_dir: str | os.PathLike[str]) -> None:
    """Print the pick, any negative transfer and where the report files are."""
    folder = Path(sweep_dir)
    print("=" * 72, flush=True)
    print(f"tl-compare: {report.pick_sentence}")
    if report.negative_transfer:
        print(
            f"NEGATIVE TRANSFER: {', '.join(report.negative_transfer)} below {report.baseline} beyond noise "
            "(mitigations in report.md)"
        )
    left_out = [p for s in report.strategies for p in s.problems]
    if left_out:
        print(f"{len(left_out)} job(s) did not complete and are left out (listed in report.md)")
    print("report: " + ", ".join(str(folder / name) for name in REPORT_FILES if (folder / name).is_file()))
    print("=" * 72, flush=True)
