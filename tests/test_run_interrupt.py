"""A real `tl-train` process stopped by SIGINT / SIGTERM: it saves a resumable checkpoint, says what
happened in summary.json, prints the command that continues it and exits 130 / 143; that command
finishes the run in the same folder."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tl_lightning.modules._checkpoint import read_checkpoint


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tl_lightning.cli.train", *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )


def interrupt_after_first_checkpoint(proc: subprocess.Popen, run: Path, signum: int) -> tuple[str, str]:
    """Send ``signum`` once the first epoch's last.ckpt exists; return (stdout, stderr)."""
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted:\n" + proc.communicate()[1][-3000:]
    proc.send_signal(signum)
    return proc.communicate(timeout=300)


def run_args(image_root: Path) -> list[str]:
    # 6 training batches per epoch, 4 epochs: the signal arrives well before the end
    return ["experiment=tiny_image", f"data.root={image_root}", "hydra.run.dir=run", "trainer.max_epochs=4",
            "data.batch_size=2", "model.head_dropout=0.2", "extras.print_config=false", "~callbacks.progress_bar",
            "+trainer.enable_progress_bar=false"]


def test_sigint_saves_reports_and_resumes(image_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = start(run_args(image_root), tmp_path)
    out, err = interrupt_after_first_checkpoint(proc, run, signal.SIGINT)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["stopped_by"] == "SIGINT"
    last = read_checkpoint(summary["last_checkpoint"])
    # the signal may land mid-epoch (a checkpoint of the epoch being trained) or between an epoch's
    # last batch and the next epoch's start (the end-of-epoch checkpoint, which Lightning stamps with
    # the finished epoch's index while the summary names the epoch the run would have gone on with)
    at_epoch_end = summary["global_step"] == 6 * summary["epochs"]
    expected_epoch = summary["epochs"] - 1 if at_epoch_end else summary["epochs"]
    assert (last["epoch"], last["global_step"]) == (expected_epoch, summary["global_step"])
    assert summary["global_step"] >= 6, "at least the first epoch (6 steps) was trained"
    assert not summary["test_metrics"], "an interrupted run is not tested"

    command = re.search(r"resume with:\s+(tl-train .+)", out)
    assert command, out[-2000:]
    assert command.group(1) == f"tl-train --resume {run}"
    resumed = subprocess.run(
        [sys.executable, "-m", "tl_lightning.cli.train", *shlex.split(command.group(1))[1:]],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = json.loads((run / "summary.json").read_text())
    assert done["status"] == "completed" and done["epochs"] == 4 and done["global_step"] == 24
    assert done["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    assert 0.0 <= done["test_metrics"]["test/acc"] <= 1.0
    with open(run / "csv" / "metrics.csv", newline="") as f:
        val_rows = [(r["epoch"], r["step"]) for r in csv.DictReader(f) if r.get("val/acc")]
    assert [e for e, _ in val_rows] == ["0", "1", "2", "3"], "one validation row per epoch, none lost, none twice"


@pytest.mark.slow
def test_sigterm_saves_reports_and_exits_143(image_root: Path, tmp_path: Path) -> None:
    """SIGTERM (a scheduler's time limit): Lightning alone would exit 0 without a checkpoint of the state reached."""
    run = tmp_path / "run"
    proc = start(run_args(image_root), tmp_path)
    out, err = interrupt_after_first_checkpoint(proc, run, signal.SIGTERM)
    assert proc.returncode == 143, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["stopped_by"] == "SIGTERM"
    assert read_checkpoint(summary["last_checkpoint"])["global_step"] == summary["global_step"]
    assert f"tl-train --resume {run}" in out
