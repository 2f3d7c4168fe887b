"""tl-compare: the report's logic on hand-made runs, reading sweep folders, and end to end.

The report logic is tested on hand-made :class:`RunRecord` lists (negative transfer flagged with
the seed document's mitigations, "within noise" wording, the pick and its cost tie-break, failed
and missing jobs). End to end, a constructed case of negative transfer: a "pretrained"
``timm:test_resnet`` whose weights file was scrambled (every tensor shuffled, the input
convolution zeroed, so its frozen features are the same for every image) against training from
scratch on coloured squares, through ``tl-compare`` as a real multirun; the report is rebuilt
from the folder by ``tl-compare report``. That negative transfer is *not* flagged on the demo
data (real MiniLM, Rotten Tomatoes) is checked by notebook 03 (tests/test_notebooks.py).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tl_lightning.compare import (
    MISSING,
    SEED_NEGATIVE_TRANSFER,
    ComparisonReport,
    RunRecord,
    build_report,
    paired_t_test,
    plot_report,
    read_sweep,
    student_t_critical,
    student_t_two_sided_p,
    sweep_values,
    write_report,
)
from tl_lightning.compare.plot import COLORS
from tl_lightning.errors import ConfigurationError, DataError

SEEDS = (1, 2, 3)


def runs(table: dict[str, tuple[list[float], float, int]], seeds: tuple[int, ...] = SEEDS) -> list[RunRecord]:
    """``{strategy: ([metric per seed], train seconds, trainable params)}`` -> completed records."""
    out = []
    for name, (values, seconds, params) in table.items():
        for seed, value in zip(seeds, values):
            out.append(
                RunRecord(
                    job=str(len(out)),
                    strategy=name,
                    seed=seed,
                    status="completed",
                    metrics={"test/acc": value},
                    train_seconds=seconds,
                    trainable_params=params,
                    total_params=100_000,
                    settings={"lr": 1e-3, "max_epochs": 3},
                )
            )
    return out


# --- the statistics --------------------------------------------------------------------------


def test_student_t_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 10, 40):
        for t in (0.0, 0.3, 1.0, 2.5, 4.3, 12.0, -3.0):
            assert student_t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), abs=1e-12)
        assert student_t_critical(0.05, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-9)
    a, b = [0.71, 0.74, 0.69, 0.73], [0.70, 0.70, 0.68, 0.69]
    test = paired_t_test(a, b)
    reference = stats.ttest_rel(a, b)
    assert test.t == pytest.approx(reference.statistic) and test.p_value == pytest.approx(reference.pvalue)


def test_paired_t_test_edge_cases() -> None:
    one = paired_t_test([0.8], [0.5])
    assert one.n == 1 and one.p_value is None and not one.beyond_noise and one.mean_diff == pytest.approx(0.3)
    same_gap = paired_t_test([0.8, 0.9, 0.7], [0.5, 0.6, 0.4])  # identical differences: no noise at all
    assert same_gap.p_value == 0.0 and same_gap.beyond_noise
    identical = paired_t_test([1 / 3] * 3, [1 / 3] * 3)
    assert identical.p_value == 1.0 and not identical.beyond_noise
    # detectable: t_crit * sd / sqrt(n), the threshold the report quotes
    noisy = paired_t_test([0.80, 0.70, 0.75], [0.72, 0.74, 0.70])
    assert noisy.detectable == pytest.approx(student_t_critical(0.05, 2) * noisy.sd_diff / math.sqrt(3))
    with pytest.raises(ConfigurationError, match="same length"):
        paired_t_test([1.0, 2.0], [1.0])


# --- the report's verdicts -------------------------------------------------------------------


def test_negative_transfer_is_flagged_with_the_seed_mitigations() -> None:
    report = build_report(
        runs(
            {
                "scratch": ([0.90, 0.88, 0.91], 30.0, 100_000),
                "feature_extraction": ([0.34, 0.33, 0.35], 5.0, 291),
                "full": ([0.93, 0.91, 0.94], 20.0, 100_000),
            }
        )
    )
    assert report.negative_transfer == ["feature_extraction"]
    assert report.baseline == "scratch"
    text = report.to_markdown()
    assert "**Negative transfer: `feature_extraction`.**" in text
    # the seed document's mitigations, word for word
    assert SEED_NEGATIVE_TRANSFER["mitigation"] in text
    assert "(2) choose a domain-closer pretrained model" in SEED_NEGATIVE_TRANSFER["mitigation"]
    assert "performs worse than a from-scratch baseline" in text
    assert "input_check" in text  # rule out misaligned preprocessing first
    verdicts = {d.strategy: d.verdict for d in report.versus_baseline}
    assert verdicts == {"feature_extraction": "worse", "full": "better"}


def test_every_pretrained_strategy_below_scratch_says_so_and_picks_scratch() -> None:
    report = build_report(
        runs(
            {
                "scratch": ([0.90, 0.88, 0.91], 30.0, 100_000),
                "feature_extraction": ([0.34, 0.33, 0.35], 5.0, 291),
                "full": ([0.60, 0.58, 0.63], 20.0, 100_000),
            }
        )
    )
    assert report.negative_transfer == ["feature_extraction", "full"]
    assert report.pick == "scratch"
    assert "Every pretrained strategy does worse" in report.to_markdown()
    assert "Transfer is not worth it here" in report.pick_sentence


def test_below_scratch_within_noise_is_not_negative_transfer() -> None:
    report = build_report(
        runs(
            {
                "scratch": ([0.70, 0.78, 0.74], 30.0, 100_000),
                "lp_ft": ([0.72, 0.71, 0.73], 25.0, 100_000),  # 0.02 below on average, with a noisy scratch
                "full": ([0.86, 0.90, 0.88], 20.0, 100_000),
            }
        )
    )
    assert report.negative_transfer == []
    lp_ft = next(d for d in report.versus_baseline if d.strategy == "lp_ft")
    assert lp_ft.verdict == "within noise" and lp_ft.diff < 0
    text = report.to_markdown()
    assert "**Within noise of scratch**: `lp_ft`" in text
    assert "below scratch on average, but not beyond noise" in text
    assert "No negative transfer" in text
    # honest about power: 3 seeds -> 2 degrees of freedom -> 4.30 standard errors
    assert "With 3 paired seeds the test has 2 degrees of freedom" in text and "4.30 standard errors" in text
    assert "not shown to differ" in text


def test_pick_breaks_a_tie_within_noise_by_cost_and_gives_the_numbers() -> None:
    report = build_report(
        runs(
            {
                "scratch": ([0.50, 0.52, 0.49], 60.0, 100_000),
                "feature_extraction": ([0.76, 0.73, 0.77], 10.0, 291),
                "full": ([0.77, 0.78, 0.75], 40.0, 100_000),  # best mean, within noise of feature extraction
            }
        )
    )
    assert report.best == "full"
    tie = next(d for d in report.versus_best if d.strategy == "feature_extraction")
    assert tie.verdict == "within noise"
    assert report.pick == "feature_extraction"
    sentence = report.pick_sentence
    assert sentence.startswith("Pick `feature_extraction`")
    for number in ("0.753", "0.767", "10 s", "40 s", "291", "100.0k"):
        assert number in sentence, (number, sentence)
    assert report.negative_transfer == []
    # each strategy's recipe is in the table: a head with its own LR is shown
    records = runs(
        {"scratch": ([0.5, 0.52, 0.49], 60.0, 10), "feature_extraction": ([0.7, 0.72, 0.71], 9.0, 10)}
    )
    for r in records[3:]:
        r.settings["head_lr"] = 1e-2
    text = build_report(records).to_markdown()
    assert "| 0.001, 3 |" in text and "| 0.001 (head 0.01), 3 |" in text


def test_pick_is_the_best_when_it_wins_beyond_noise_even_if_it_costs_more() -> None:
    report = build_report(
        runs(
            {
                "scratch": ([0.50, 0.52, 0.49], 60.0, 100_000),
                "feature_extraction": ([0.66, 0.65, 0.67], 10.0, 291),
                "full": ([0.78, 0.79, 0.77], 40.0, 100_000),
            }
        )
    )
    assert report.pick == "full"
    assert "ahead of every other strategy beyond noise" in report.pick_sentence
    assert "Transfer helps" in report.to_markdown()


def test_mode_min_for_a_loss() -> None:
    table = {"scratch": ([1.00, 1.05, 0.98], 30.0, 10), "full": ([0.40, 0.42, 0.39], 20.0, 10)}
    records = runs(table)
    for r in records:
        r.metrics = {"test/loss": r.metrics["test/acc"]}
    report = build_report(records, metric="test/loss")
    assert report.mode == "min" and report.pick == "full" and report.negative_transfer == []
    assert report.versus_baseline[0].verdict == "better"
    flipped = build_report(records, metric="test/loss", mode="max")
    assert flipped.negative_transfer == ["full"]


def test_failed_and_missing_jobs_are_named_not_dropped() -> None:
    records = runs({"scratch": ([0.50, 0.52, 0.49], 30.0, 10), "full": ([0.77, 0.78, 0.75], 20.0, 10)})
    records[-1] = RunRecord("5", "full", 3, "failed", message="NonFiniteError: loss nan at step 7")
    records.append(
        RunRecord("#6", "full", 4, MISSING, message="no job folder: the sweep ended before this job started")
    )
    records.append(RunRecord("7", "scratch", 4, "completed", metrics={"val/acc": 0.5}))  # no test metric
    report = build_report(records)
    full = report.stats("full")
    assert full.values == [0.77, 0.78] and full.planned == 4 and len(full.problems) == 2
    text = report.to_markdown()
    assert "3 of 8 jobs are left out" in text
    assert "`full` seed 3 (job 5): failed: NonFiniteError: loss nan at step 7" in text
    assert "`full` seed 4 (job #6): missing: no job folder" in text
    assert "completed without a finite test/acc (logged: val/acc)" in text
    assert "| `full` (**pick**) | 2/4 |" in text
    # the paired test uses the 2 seeds both completed
    assert report.versus_baseline[0].n == 2


def test_no_baseline_and_single_seed_are_said() -> None:
    report = build_report(
        runs({"feature_extraction": ([0.7], 5.0, 10), "full": ([0.8], 9.0, 10)}, seeds=(1,))
    )
    text = report.to_markdown()
    assert report.baseline is None and report.negative_transfer == []
    assert "No from-scratch baseline" in text and "Always compare against a from-scratch baseline" in text
    assert report.pick == "full" and "1 seed, no spread" in report.pick_sentence
    assert report.versus_best[0].verdict == "untested"


def test_nothing_completed_gives_a_report_without_a_pick() -> None:
    report = build_report([RunRecord("0", "scratch", 1, "failed", message="boom")])
    assert report.pick is None and "nothing to pick" in report.pick_sentence
    json.dumps(report.to_dict(), allow_nan=False)


def test_report_json_is_plain_data() -> None:
    records = runs({"scratch": ([0.50, 0.52, 0.49], 30.0, 10), "full": ([0.77, 0.78, 0.75], 20.0, 10)})
    records.append(RunRecord("6", "full", 4, "completed", metrics={"test/acc": float("nan")}))
    data = json.loads(json.dumps(build_report(records).to_dict(), allow_nan=False))
    assert data["pick"] == "full" and data["negative_transfer"] == []
    assert {s["name"] for s in data["strategies"]} == {"scratch", "full"}
    assert data["runs"][-1]["metrics"]["test/acc"] is None  # NaN -> null
    assert data["versus_baseline"][0]["verdict"] == "better"


def test_bad_settings_are_one_line_errors() -> None:
    records = runs({"scratch": ([0.5, 0.5, 0.5], 1.0, 1)})
    with pytest.raises(ConfigurationError, match="'acc'"):
        build_report(records, metric="acc")
    with pytest.raises(ConfigurationError, match="mode must be one of"):
        build_report(records, mode="maximum")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="alpha"):
        build_report(records, alpha=0.9)


def test_sweep_values() -> None:
    assert sweep_values({"strategies": ["scratch", "full"], "seeds": 3}) == {
        "finetune": "scratch,full",
        "seed": "1,2,3",
    }
    assert sweep_values({"strategies": ["full"], "seeds": [0, 7, 42]})["seed"] == "0,7,42"
    with pytest.raises(ConfigurationError, match="compare.strategies must be a non-empty list"):
        sweep_values({"strategies": "scratch", "seeds": 3})
    with pytest.raises(ConfigurationError, match="compare.seeds must be an integer >= 1"):
        sweep_values({"strategies": ["full"], "seeds": 0})
    with pytest.raises(ConfigurationError, match="distinct"):
        sweep_values({"strategies": ["full"], "seeds": [1, 1]})
    with pytest.raises(ConfigurationError, match="twice"):
        sweep_values({"strategies": ["full", "full"], "seeds": 2})


# --- the picture -----------------------------------------------------------------------------


def _share_of_colour(png: Path, hex_colour: str, tolerance: int = 12) -> float:
    from PIL import Image

    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    with Image.open(png) as img:
        pixels = np.asarray(img.convert("RGB")).astype(int)
    return float((np.abs(pixels - target).max(axis=-1) <= tolerance).mean())


def _on_white(hex_colour: str, alpha: float = 0.85) -> str:
    """The colour a bar drawn with ``alpha`` (as plot_report draws them) shows over white."""
    rgb = [round(alpha * int(hex_colour[i : i + 2], 16) + (1 - alpha) * 255) for i in (1, 3, 5)]
    return "#" + "".join(f"{c:02x}" for c in rgb)


def test_report_png_shows_negative_transfer_in_red_and_scratch_in_grey(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    flagged = build_report(
        runs(
            {
                "scratch": ([0.90, 0.88, 0.91], 30.0, 100_000),
                "feature_extraction": ([0.34, 0.33, 0.35], 5.0, 291),
            }
        )
    )
    clean = build_report(
        runs(
            {
                "scratch": ([0.50, 0.52, 0.49], 30.0, 100_000),
                "feature_extraction": ([0.76, 0.75, 0.77], 5.0, 291),
            }
        )
    )
    a = plot_report(flagged, tmp_path / "flagged.png")
    b = plot_report(clean, tmp_path / "clean.png")
    with Image.open(a) as img:
        assert img.format == "PNG" and img.size[0] > 600 and img.size[1] > 200
    red = _on_white(COLORS["negative"])
    assert _share_of_colour(a, red) > 0.005
    assert _share_of_colour(b, red) < 0.0005
    grey = _on_white(COLORS["baseline"])
    assert _share_of_colour(a, grey) > 0.002 and _share_of_colour(b, grey) > 0.002


# --- reading a sweep folder ------------------------------------------------------------------


def _job(folder: Path, overrides: list[str], summary: dict | None, lr: float = 1e-3) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump(
            {"seed": 0, "model": {"lr": lr}, "trainer": {"max_epochs": 3}, "backbone": {"pretrained": True}}
        )
    )
    if summary is not None:
        (folder / "summary.json").write_text(
            json.dumps({"task_name": "t", "output_dir": str(folder), **summary})
        )


def _fake_sweep(root: Path) -> Path:
    """A stopped 2 x 2 sweep: two completed jobs, one failed, one never started."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "sweeper": {
                        "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                        "params": {"finetune": "scratch,full", "seed": "1,2"},
                    },
                    "overrides": {"task": ["compare=strategies", "experiment=tiny_image", "data.root=/x"]},
                },
                "compare": {"metric": "test/acc", "baseline": "scratch", "alpha": 0.05, "mode": None},
            }
        )
    )
    common = ["compare=strategies", "experiment=tiny_image", "data.root=/x"]
    _job(
        root / "0",
        ["finetune=scratch", "seed=1", *common],
        {
            "status": "completed",
            "test_metrics": {"test/acc": 0.5},
            "train_seconds": 3.0,
            "trainable_params": 100,
            "total_params": 100,
        },
    )
    _job(
        root / "1",
        ["finetune=scratch", "seed=2", *common],
        {
            "status": "completed",
            "test_metrics": {"test/acc": 0.6},
            "train_seconds": 3.0,
            "trainable_params": 100,
            "total_params": 100,
        },
    )
    _job(
        root / "2",
        ["finetune=full", "seed=1", *common],
        {"status": "failed", "stopped_by": "NonFiniteError: loss is nan at step 3", "train_seconds": 1.0},
    )
    return root


def test_read_sweep_plans_the_jobs_and_names_the_missing_one(tmp_path: Path) -> None:
    sweep = read_sweep(_fake_sweep(tmp_path))
    got = [(r.job, r.strategy, r.seed, r.status) for r in sweep.records]
    assert got == [
        ("0", "scratch", 1, "completed"),
        ("1", "scratch", 2, "completed"),
        ("2", "full", 1, "failed"),
        ("#3", "full", 2, MISSING),
    ]
    assert sweep.records[2].message == "NonFiniteError: loss is nan at step 3"
    assert sweep.records[0].settings == {"lr": 1e-3, "head_lr": None, "max_epochs": 3, "pretrained": True}
    assert sweep.swept == {"finetune": ["scratch", "full"], "seed": ["1", "2"]}
    assert sweep.settings["metric"] == "test/acc"


def test_read_sweep_still_running_job_and_folder_without_multirun_yaml(tmp_path: Path) -> None:
    root = _fake_sweep(tmp_path / "a")
    _job(
        root / "3",
        ["finetune=full", "seed=2", "compare=strategies", "experiment=tiny_image", "data.root=/x"],
        None,
    )
    last = read_sweep(root).records[-1]
    assert (last.job, last.status) == ("3", MISSING) and "has not ended" in (last.message or "")
    (root / "multirun.yaml").unlink()
    records = read_sweep(root).records
    assert [(r.strategy, r.seed) for r in records] == [
        ("scratch", 1),
        ("scratch", 2),
        ("full", 1),
        ("full", 2),
    ]


def test_read_sweep_other_swept_keys_label_the_arms(tmp_path: Path) -> None:
    (tmp_path / "multirun.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "sweeper": {
                        "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                        "params": None,
                    },
                    "overrides": {"task": ["finetune=full", "model.lr=1e-4,1e-3", "seed=1,2"]},
                }
            }
        )
    )
    sweep = read_sweep(tmp_path)
    assert [r.strategy for r in sweep.records] == ["full (model.lr=0.0001)"] * 2 + [
        "full (model.lr=0.001)"
    ] * 2
    assert all(r.status == MISSING for r in sweep.records)


def test_read_sweep_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_sweep(tmp_path / "nope")
    with pytest.raises(DataError, match="no multirun.yaml and no job folders"):
        read_sweep(tmp_path)


def test_write_report_writes_three_files_from_a_folder(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    root = _fake_sweep(tmp_path)
    report = write_report(root)
    assert isinstance(report, ComparisonReport)
    assert {p.name for p in root.iterdir() if p.name.startswith("report")} == {
        "report.md",
        "report.json",
        "report.png",
    }
    data = json.loads((root / "report.json").read_text())
    assert data["pick"] == "scratch" and data["baseline"] == "scratch"
    text = (root / "report.md").read_text()
    assert (
        "`full` seed 1 (job 2): failed: NonFiniteError" in text and "`full` seed 2 (job #3): missing" in text
    )
    assert "![test/acc per strategy" in text


# --- end to end through tl-compare -----------------------------------------------------------


def run_compare(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tl_lightning.cli.compare", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )


@pytest.fixture(scope="module")
def colour_squares(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 40 noisy 32 px squares whose colour gives the class away."""
    from PIL import Image

    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    for label, colour in {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}.items():
        (root / label).mkdir()
        for i in range(40):
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def scrambled_backbone_configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config folder with ``backbone=scrambled_resnet``: test_resnet "pretrained" on scrambled weights.

    Every tensor of a random test_resnet is shuffled (scrambled) and its input convolution zeroed:
    the network then maps every image to the same features. Shuffling alone is not enough: a
    frozen random trunk still separates colours, as random features do.
    """
    import timm
    import torch

    folder = tmp_path_factory.mktemp("scrambled")
    generator = torch.Generator().manual_seed(0)
    state = timm.create_model("test_resnet", num_classes=0).state_dict()
    for key, value in state.items():
        if value.is_floating_point() and value.numel() > 1:
            state[key] = value.flatten()[torch.randperm(value.numel(), generator=generator)].view_as(value)
    state["conv1.0.weight"] = torch.zeros_like(state["conv1.0.weight"])
    torch.save(state, folder / "scrambled_resnet.pth")
    (folder / "backbone").mkdir()
    (folder / "backbone" / "scrambled_resnet.yaml").write_text(
        f"name: timm:test_resnet\npretrained: true\nweights: {folder / 'scrambled_resnet.pth'}\nkwargs: {{}}\n"
    )
    return folder


def _tiny(colour_squares: Path, configs: Path) -> list[str]:
    return [
        "--config-dir",
        str(configs),
        "experiment=tiny_image",
        "backbone=scrambled_resnet",
        f"data.root={colour_squares}",
        "data.batch_size=4",
        "trainer.max_epochs=4",
        "extras.num_threads=1",
        "~callbacks.early_stopping",
    ]


@pytest.mark.slow
def test_tl_compare_flags_negative_transfer_from_scrambled_weights_and_rebuilds_the_report(
    colour_squares: Path, scrambled_backbone_configs: Path, tmp_path: Path
) -> None:
    from PIL import Image

    from tl_lightning.cli.compare import main

    sweep = tmp_path / "sweep"
    result = run_compare(
        [
            *_tiny(colour_squares, scrambled_backbone_configs),
            "compare.strategies=[scratch,feature_extraction]",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == [str(i) for i in range(6)]  # 2 strategies x 3 seeds (the default)
    data = json.loads((sweep / "report.json").read_text())
    assert data["negative_transfer"] == ["feature_extraction"], (sweep / "report.md").read_text()
    scratch = next(s for s in data["strategies"] if s["name"] == "scratch")
    frozen = next(s for s in data["strategies"] if s["name"] == "feature_extraction")
    assert frozen["max"] <= 0.4 < scratch["min"], data["strategies"]  # constant features: chance (1/3)
    assert (
        frozen["trainable_params"] == 291 and scratch["trainable_params"] > 300_000
    )  # head only: 96 x 3 + 3
    assert data["pick"] == "scratch"
    text = (sweep / "report.md").read_text()
    assert (
        "**Negative transfer: `feature_extraction`.**" in text
        and SEED_NEGATIVE_TRANSFER["mitigation"] in text
    )
    assert "NEGATIVE TRANSFER: feature_extraction" in result.stdout
    with Image.open(sweep / "report.png") as img:
        assert img.format == "PNG" and img.size[0] > 600
    assert _share_of_colour(sweep / "report.png", _on_white(COLORS["negative"])) > 0.005

    # the same report, rebuilt from the folder alone
    before = {name: (sweep / name).read_bytes() for name in ("report.md", "report.json")}
    for name in ("report.md", "report.json", "report.png"):
        (sweep / name).unlink()
    with pytest.raises(SystemExit) as stop:
        main(["report", str(sweep)])
    assert stop.value.code == 0
    assert {name: (sweep / name).read_bytes() for name in before} == before
    assert (sweep / "report.png").is_file()
    # and with another metric
    with pytest.raises(SystemExit):
        main(["report", str(sweep), "compare.metric=test/f1"])
    assert json.loads((sweep / "report.json").read_text())["metric"] == "test/f1"


@pytest.mark.slow
def test_tl_compare_reports_a_failed_job_and_the_jobs_it_stopped(
    colour_squares: Path, scrambled_backbone_configs: Path, tmp_path: Path
) -> None:
    """LoRA on a CNN fails (no attention layers): tl-compare still writes the report, naming the failure.

    tl-train ends a local multirun at a job's configuration error, so the scratch job after it never
    runs and is reported as missing (should tl-train go on instead, it completes: both are fine here).
    """
    sweep = tmp_path / "sweep"
    result = run_compare(
        [
            *_tiny(colour_squares, scrambled_backbone_configs),
            "trainer.max_epochs=1",
            "compare.strategies=[lora,scratch]",
            "compare.seeds=1",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    assert result.returncode != 0
    assert "writing the report of what ran" in result.stderr
    data = json.loads((sweep / "report.json").read_text())
    statuses = [(r["strategy"], r["status"]) for r in data["runs"]]
    assert statuses[0] == ("lora", "failed") and statuses[1][0] == "scratch", statuses
    text = (sweep / "report.md").read_text()
    assert (
        "`lora` seed 1 (job 0): failed: " in text and "target" in text
    )  # the LoRA error, as the run recorded it
    if statuses[1][1] == "missing":
        assert "`scratch` seed 1 (job #1): missing: no job folder" in text
    else:
        assert statuses[1][1] == "completed", statuses


def _multirun_config(overrides: list[str], sweep_dir: Path, sweeps: tuple[str, ...] = ()):
    """The config a multirun hands its callbacks; ``sweeps`` are added to the task overrides as given."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from tl_lightning.cli import config_dir
    from tl_lightning.cli._config import prepare_omegaconf

    prepare_omegaconf()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(
            "train",
            overrides=[
                "compare=strategies",
                "experiment=tiny_image",
                "data.root=/nowhere",
                f"hydra.sweep.dir={sweep_dir}",
                *overrides,
            ],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.overrides.task = [*cfg.hydra.overrides.task, *sweeps]
    return cfg


def test_the_callback_plans_the_sweep_from_compare_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from omegaconf import OmegaConf

    from tl_lightning.compare import StrategyComparison
    from tl_lightning.compare.sweep import SWEEP_FILE_ENV

    monkeypatch.setenv(SWEEP_FILE_ENV, str(tmp_path / "where"))
    cfg = _multirun_config(["compare.seeds=[3,5]"], tmp_path / "sweep")
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_readonly(cfg.hydra, True)  # as Hydra hands it over
    StrategyComparison().on_multirun_start(cfg)
    assert dict(cfg.hydra.sweeper.params) == {
        "finetune": "scratch,feature_extraction,lp_ft,full",
        "seed": "3,5",
    }
    assert (tmp_path / "where").read_text().strip() == str((tmp_path / "sweep").absolute())
    # a sweep of the same key on the command line wins, as in any Hydra sweep
    cfg = _multirun_config([], tmp_path / "sweep", sweeps=("seed=1,2,3,4",))
    StrategyComparison().on_multirun_start(cfg)
    assert dict(cfg.hydra.sweeper.params) == {"finetune": "scratch,feature_extraction,lp_ft,full"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("compare.seeds=0", "compare.seeds must be an integer >= 1, got 0"),
        ("compare.strategies=scratch,full", "compare settings take a list"),
        ("compare.metric=acc", "compare.metric must name a logged metric"),
        ("compare.alpha=0.7", "compare.alpha must be a finite number in (0, 0.5]"),
        ("finetune=full", "finetune=full on the command line replaces the compared strategies"),
        ("seed=7", "seed=7 on the command line replaces the compared seeds. Fix: compare.seeds=[7]"),
        ("hydra/sweeper=basic", None),  # replaced below by another sweeper's target
    ],
)
def test_bad_compare_settings_stop_before_any_job(
    override: str, message: str | None, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from omegaconf import open_dict

    from tl_lightning.compare import StrategyComparison

    sweep = "," in override
    cfg = _multirun_config(
        [] if sweep else [override], tmp_path / "sweep", sweeps=(override,) if sweep else ()
    )
    if message is None:
        with open_dict(cfg):
            cfg.hydra.sweeper._target_ = "hydra_plugins.tl_optuna_sweeper.TLOptunaSweeper"
        message = "compare=strategies sweeps with Hydra's basic sweeper"
    with pytest.raises(SystemExit) as stop:
        StrategyComparison().on_multirun_start(cfg)
    assert stop.value.code == 1 and message in capsys.readouterr().err


def test_compare_without_multirun_is_refused_except_on_extra_ddp_ranks(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tl_lightning.compare import StrategyComparison

    cfg = _multirun_config([], tmp_path / "sweep")
    for var in ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit):
        StrategyComparison().on_run_start(cfg)
    assert "it needs a multirun" in capsys.readouterr().err
    monkeypatch.setenv("LOCAL_RANK", "1")  # rank 1 of a DDP job re-runs its job in run mode
    StrategyComparison().on_run_start(cfg)


def test_tl_compare_report_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tl_lightning.cli.compare import main

    with pytest.raises(SystemExit) as stop:
        main(["report", str(tmp_path / "missing")])
    assert stop.value.code == 1 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["report", str(_fake_sweep(tmp_path)), "compare.metrc=test/f1"])
    err = capsys.readouterr().err
    assert stop.value.code == 1 and "compare.metrc=test/f1" in err and "compare.metric" in err
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0 and "tl-compare report <sweep folder>" in capsys.readouterr().out
