"""``tl-compare``: is transfer worth it here? Strategies against scratch over seeds, with a report.

Two commands:

``tl-compare [tl-train overrides]``
    Runs ``tl-train -m compare=strategies <overrides>``: every strategy of
    ``compare.strategies`` (default scratch, feature_extraction, lp_ft, full) for each of
    ``compare.seeds`` seeds (default 3) on the same data and splits, as one Hydra multirun (so
    ``hydra/launcher=slurm`` or any other launcher works), then writes ``report.md``,
    ``report.json`` and ``report.png`` into the sweep folder. When a job fails and the multirun
    stops, the report is written all the same, with the failed and missing jobs named; the exit
    status is then tl-train's.

``tl-compare report <sweep folder> [compare.metric=test/f1] [compare.alpha=0.1] [compare.mode=min] [compare.baseline=scratch]``
    Rebuilds the report of a sweep folder (finished, stopped, or still running) from its files.

Settings (conf/compare/strategies.yaml): compare.strategies, compare.seeds (N or a list),
compare.metric (test/acc), compare.mode (max / min), compare.baseline (scratch), compare.alpha
(0.05). Everything else is a tl-train override (tl-train --help).

Examples::

    tl-compare experiment=demo
    tl-compare data.root=/data/xray backbone=timm_convnext_tiny 'compare.strategies=[scratch,full]' compare.seeds=5
    tl-compare experiment=demo hydra/launcher=slurm hydra.launcher.partition=gpu trainer=gpu
    tl-compare report outputs/demo/multirun/2025-06-01/12-00-00
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tl_lightning.errors import TLError

__all__ = ["main", "rebuild_report", "run_comparison"]

_MULTIRUN_FLAGS = ("-m", "--multirun")
_REPORT_KEYS = {
    "compare.metric": "metric",
    "compare.mode": "mode",
    "compare.baseline": "baseline",
    "compare.alpha": "alpha",
}


def _usage() -> str:
    return (__doc__ or "").split("\n\n", 1)[1].replace("``", "").replace("::", ":")


def rebuild_report(sweep_dir: str, options: Sequence[str] = ()) -> Any:
    """``tl-compare report``: write the report of ``sweep_dir`` again; ``options`` are ``compare.<key>=<value>``.

    Returns:
        The :class:`~tl_lightning.compare.ComparisonReport`.

    Raises:
        ConfigurationError: An option other than ``compare.metric`` / ``mode`` / ``baseline`` / ``alpha``.
        DataError: ``sweep_dir`` is not a sweep folder.
    """
    from tl_lightning.compare.sweep import print_verdict, write_report
    from tl_lightning.errors import ConfigurationError, did_you_mean

    settings: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in _REPORT_KEYS:
            raise ConfigurationError(
                f"tl-compare report takes {', '.join(k + '=...' for k in _REPORT_KEYS)}, got {option!r}"
                + did_you_mean(key, list(_REPORT_KEYS))
            )
        settings[_REPORT_KEYS[key]] = value
    if "alpha" in settings:
        try:
            settings["alpha"] = float(settings["alpha"])
        except ValueError:
            raise ConfigurationError(
                f"compare.alpha must be a number in (0, 0.5], got {settings['alpha']!r}"
            ) from None
    report = write_report(sweep_dir, **settings)
    print_verdict(report, sweep_dir)
    return report


def _train_command(overrides: Sequence[str]) -> list[str]:
    args = [a for a in overrides if a not in _MULTIRUN_FLAGS]
    if not any(a.startswith("compare=") for a in args):
        args.append("compare=strategies")  # after the flags: argparse takes the overrides in one run
    return [sys.executable, "-m", "tl_lightning.cli.train", "-m", *args]


def run_comparison(overrides: Sequence[str]) -> int:
    """``tl-compare <overrides>``: the multirun, then the report even when a job failed.

    Args:
        overrides: ``tl-train`` overrides (and flags such as ``--config-dir``).

    Returns:
        tl-train's exit status (0 when every job completed).
    """
    from tl_lightning.compare.sweep import SWEEP_FILE_ENV

    with tempfile.TemporaryDirectory(prefix="tl_compare_") as tmp:
        sweep_file = Path(tmp) / "sweep_dir"
        env = {**os.environ, SWEEP_FILE_ENV: str(sweep_file)}
        process = subprocess.Popen(_train_command(overrides), env=env)

        def forward(signum: int, frame: Any) -> None:
            del frame
            if process.poll() is None:
                process.send_signal(signum)

        # tl-train stops at a safe point on SIGINT / SIGTERM; this process waits for it and reports
        previous = signal.signal(signal.SIGTERM, forward)
        try:
            while True:
                try:
                    code = process.wait()
                    break
                except KeyboardInterrupt:
                    continue  # Ctrl+C reached tl-train too (same process group)
        finally:
            signal.signal(signal.SIGTERM, previous)
        sweep_dir = sweep_file.read_text().strip() if sweep_file.is_file() else None
    if sweep_dir is None:
        return code  # stopped before the sweep began (a config error, printed by tl-train)
    report_written = (Path(sweep_dir) / "report.md").is_file()
    if code != 0 or not report_written:
        if not (Path(sweep_dir) / "multirun.yaml").is_file():
            return code
        print(
            f"tl-compare: tl-train exited with status {code}; writing the report of what ran", file=sys.stderr
        )
        rebuild_report(sweep_dir)
    return code


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``tl-compare`` (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args and args[0] in ("-h", "--help", "help"):
        print(_usage())
        raise SystemExit(0)
    try:
        if args and args[0] == "report":
            if len(args) < 2 or "=" in args[1]:
                print(
                    "usage: tl-compare report <sweep folder> [compare.metric=...] [compare.alpha=...]",
                    file=sys.stderr,
                )
                raise SystemExit(2)
            rebuild_report(args[1], args[2:])
            raise SystemExit(0)
        raise SystemExit(run_comparison(args))
    except TLError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
