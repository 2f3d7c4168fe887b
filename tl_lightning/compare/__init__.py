"""Is transfer worth it here? Fine-tuning strategies against training from scratch, over seeds.

``tl-compare`` (or ``tl-train -m compare=strategies``) trains every strategy of
``compare.strategies`` (default: scratch, feature_extraction, lp_ft, full) for each of
``compare.seeds`` seeds on the same data and splits, as one Hydra multirun, and writes into the
sweep folder:

* ``report.md``: the pick in one sentence with its numbers, negative transfer named with the seed
  document's mitigations, the differences within noise, a table per strategy (mean ± std and
  min-max over seeds, difference to scratch, train time, trainable parameters), every job with
  its status, and how it was decided;
* ``report.json``: the same as plain data;
* ``report.png``: bars with error bars per strategy (scratch marked), and the cost of each.

From Python, on any sweep folder::

    from tl_lightning.compare import write_report, read_sweep, build_report

    report = write_report("outputs/demo/multirun/2025-06-01/12-00-00")  # the three files
    report.pick, report.negative_transfer, report.pick_sentence
    report = build_report(read_sweep(folder).records, metric="test/f1")   # nothing written

Modules: :mod:`~tl_lightning.compare.runs` (reading a sweep folder),
:mod:`~tl_lightning.compare.report` (numbers, tests and verdicts), :mod:`~tl_lightning.compare.plot`
(the picture), :mod:`~tl_lightning.compare.sweep` (the Hydra callback and :func:`write_report`).
"""

from tl_lightning.compare._stats import PairedTest, paired_t_test, student_t_critical, student_t_two_sided_p
from tl_lightning.compare.plot import plot_report
from tl_lightning.compare.report import (
    SEED_NEGATIVE_TRANSFER,
    ComparisonReport,
    Difference,
    StrategyStats,
    build_report,
    default_mode,
)
from tl_lightning.compare.runs import MISSING, STATUSES, RunRecord, SweepRuns, read_sweep
from tl_lightning.compare.sweep import REPORT_FILES, StrategyComparison, sweep_values, write_report

__all__ = [
    "MISSING",
    "REPORT_FILES",
    "SEED_NEGATIVE_TRANSFER",
    "STATUSES",
    "ComparisonReport",
    "Difference",
    "PairedTest",
    "RunRecord",
    "StrategyComparison",
    "StrategyStats",
    "SweepRuns",
    "build_report",
    "default_mode",
    "paired_t_test",
    "plot_report",
    "read_sweep",
    "student_t_critical",
    "student_t_two_sided_p",
    "sweep_values",
    "write_report",
]
