"""SLURM preemption, simulated: SIGUSR1 mid-epoch under SLURM checkpoints, requeues the job (a fake
``scontrol`` records it), and the requeued job (same command, same job id, SLURM_RESTART_COUNT=1)
resumes in the same run folder and ends with the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tl_lightning.cli._slurm import REQUEUE_NOTE, is_requeued_run, requeued_checkpoint

TESTS = Path(__file__).resolve().parent


def test_requeued_run_needs_the_same_job_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (tmp_path / REQUEUE_NOTE).write_text("4242\n")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert not is_requeued_run(tmp_path), "the first start of a job is not a requeue"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert requeued_checkpoint(tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    monkeypatch.setenv("SLURM_JOB_ID", "999")
    assert requeued_checkpoint(tmp_path) is None, "another job's run folder"
    monkeypatch.delenv("SLURM_JOB_ID")
    assert requeued_checkpoint(tmp_path) is None


def tl_train(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {**os.environ, "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1", **env,
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "tl_lightning.cli.train", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=600)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_sigusr1_checkpoints_requeues_and_the_requeued_job_resumes_exactly(image_root: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls.txt"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    slurm = {"SLURM_JOB_ID": "4242", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    # 3 epochs of 3 steps; SLURM's warning (SIGUSR1) arrives after step 4, in the middle of epoch 1
    common = ["experiment=tiny_image", f"data.root={image_root}", "debug=limit", "trainer.max_epochs=3", "data.batch_size=4",
              "test=false", "extras.print_config=false", "callbacks.early_stopping=null"]
    signal_cb = ["+callbacks.signal._target_=_signal_at_step.SignalAtStep", "+callbacks.signal.step=4",
                 f"+callbacks.signal.signum={int(signal.SIGUSR1)}"]
    job = [*common, *signal_cb, "hydra.run.dir=run"]

    first = tl_train(job, tmp_path, slurm)
    assert first.returncode == 128 + signal.SIGUSR1, first.stderr[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    run = tmp_path / "run"
    assert (run / REQUEUE_NOTE).read_text().strip() == "4242"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["global_step"] == 4

    # SLURM runs the same command again, in a job with the same id
    again = tl_train(job, tmp_path, {**slurm, "SLURM_RESTART_COUNT": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert Path(summary["resumed_from"]).resolve() == (run / "checkpoints" / "last.ckpt").resolve()
    assert summary["global_step"] == 9 and summary.get("status", "completed") != "interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "run", "scontrol_calls.txt"], "the same run folder"

    reference = tl_train([*common, "hydra.run.dir=reference"], tmp_path, {})
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = weights(tmp_path / "reference")
    resumed = weights(run)
    assert set(resumed) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)
