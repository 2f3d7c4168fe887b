"""One run, one folder: runs started in the same second get their own folders, a folder holding a
run is refused before Hydra writes into it (unless the run is resumed), and `--resume <folder>`
rebuilds the run's command line."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tl_lightning.cli._resume import expand_resume
from tl_lightning.cli._run_folder import CLAIM_FILE
from tl_lightning.cli.train import main
from tl_lightning.errors import ConfigurationError


def run_main(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["tl-train", *argv, "extras.print_config=false"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    GlobalHydra.instance().clear()
    try:
        main()
        code = 0
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def test_two_runs_started_in_the_same_second_get_their_own_folders(
    image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import datetime as dt

    import hydra.core.utils

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime(2030, 1, 2, 12, 0, 0)

    monkeypatch.setattr(hydra.core.utils, "datetime", Frozen)
    args = ["experiment=tiny_image", f"data.root={image_root}", "trainer.fast_dev_run=true", f"paths.log_dir={tmp_path}"]
    for lr in ("0.001", "0.002"):
        code, out = run_main([*args, f"model.lr={lr}"], monkeypatch, capsys)
        assert code == 0, out[-2000:]
    runs = sorted(p.parent for p in tmp_path.glob("tiny_image/*/*/summary.json"))
    assert [r.name for r in runs] == ["12-00-00", "12-00-00_1"], runs
    lrs = [OmegaConf.load(r / ".hydra" / "config.yaml").model.lr for r in runs]
    assert lrs == [0.001, 0.002], "each folder holds its own run"
    assert all(json.loads((r / "summary.json").read_text())["output_dir"] == str(r) for r in runs)


def test_a_folder_holding_a_run_is_refused_before_hydra_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- the original run\n")
    (run / "summary.json").write_text("{}\n")
    code, out = run_main(["experiment=tiny_image", "data.root=/nowhere", f"hydra.run.dir={run}"], monkeypatch, capsys)
    assert code == 1
    assert "already holds a run (summary.json)" in out and f"tl-train --resume {run}" in out
    assert "Traceback" not in out
    assert (run / ".hydra" / "overrides.yaml").read_text() == "- the original run\n", ".hydra/ left untouched"


def test_a_folder_in_use_by_a_live_run_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / CLAIM_FILE).write_text(f"{socket.gethostname()} {os.getppid()}\n")
    code, out = run_main(["experiment=tiny_image", "data.root=/nowhere", f"hydra.run.dir={run}"], monkeypatch, capsys)
    assert code == 1 and f"in use by a running tl-train (pid {os.getppid()})" in out


def test_a_stale_claim_does_not_block_a_folder(
    image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / CLAIM_FILE).write_text(f"{socket.gethostname()} 999999999\n")
    code, out = run_main(["experiment=tiny_image", f"data.root={image_root}", "trainer.fast_dev_run=true",
                          f"hydra.run.dir={run}"], monkeypatch, capsys)
    assert code == 0, out[-2000:]
    assert (run / CLAIM_FILE).read_text().split()[1] == str(os.getpid())


def fake_run(folder: Path) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (folder / ".hydra" / "overrides.yaml").write_text(
        "- experiment=tiny_image\n- data.root=/data/x\n- trainer.max_epochs=3\n- ckpt_path=/old/last.ckpt\n"
    )
    (folder / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  overrides:\n    hydra:\n    - hydra.run.dir=run\n    - hydra.job.chdir=false\n"
        "  runtime:\n    config_sources:\n    - path: pkg://tl_lightning\n      schema: pkg\n      provider: main\n"
        "    - path: /my/configs\n      schema: file\n      provider: command-line\n"
    )
    return folder


def test_resume_replays_the_run_with_new_overrides_last(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    argv = expand_resume(["--resume", str(run), "trainer.max_epochs=10"])
    assert argv == [
        "--config-dir", "/my/configs",
        "experiment=tiny_image", "data.root=/data/x", "hydra.job.chdir=false", "trainer.max_epochs=10",
        f"hydra.run.dir={run}", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"resume={run}",
    ]
    assert expand_resume([f"resume={run}", "trainer.max_epochs=10"]) == argv
    assert expand_resume(argv) == argv, "expanding twice (DDP ranks re-run the command) changes nothing"


def test_resume_refuses_what_is_not_a_resumable_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no such folder"):
        expand_resume(["--resume", str(tmp_path / "nope")])
    with pytest.raises(ConfigurationError, match="not a tl-train run folder"):
        expand_resume(["--resume", str(tmp_path)])
    run = fake_run(tmp_path / "run")
    (run / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(ConfigurationError, match="saved no checkpoint"):
        expand_resume(["--resume", str(run)])
    with pytest.raises(ConfigurationError, match="multirun"):
        expand_resume(["-m", "--resume", str(fake_run(tmp_path / "run2"))])


def test_resume_of_a_non_run_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    code, out = run_main(["--resume", str(tmp_path)], monkeypatch, capsys)
    assert code == 1 and "not a tl-train run folder" in out and "Traceback" not in out
