"""``tl-train -m ... trainer=ddp_sim``: one output folder per job, holding its metrics and checkpoint,
with every rank of a job configured identically (lightning-hydra-template issue 393: with Lightning's
script launcher each extra rank ran the whole sweep again, in folders of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ddp]

TESTS = Path(__file__).resolve().parent


def run_tl_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "tl_lightning.cli.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


#: every rank writes <job folder>/rank_probe/rank<r>.json with what its config resolved to
PROBE = [
    "+callbacks.rank_probe._target_=_rank_probe.RankProbe",
    "+callbacks.rank_probe.out=${paths.output_dir}",
    "+callbacks.rank_probe.seen.lr=${model.lr}",
    "+callbacks.rank_probe.seen.seed=${seed}",
    "+callbacks.rank_probe.seen.output_dir=${hydra:runtime.output_dir}",
    "+callbacks.rank_probe.seen.batch_size=${data.batch_size}",
]


def probes(job: Path) -> list[dict]:
    return [json.loads((job / "rank_probe" / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp"], ids=["spawned", "relaunched"])
def test_multirun_with_two_processes_gives_one_folder_per_job(strategy: str, image_root: Path, tmp_path: Path) -> None:
    """ddp_sim as shipped (spawned processes) and with Lightning's script launcher (strategy=ddp, as on GPUs)."""
    logs = tmp_path / "logs"
    result = run_tl_train(["-m", "experiment=tiny_image", f"data.root={image_root}", "trainer=ddp_sim",
                           f"trainer.strategy={strategy}", "debug=limit", "trainer.max_epochs=1", "test=false",
                           "model.lr=0.001,0.01", f"paths.log_dir={logs}", "extras.print_config=false", *PROBE],
                          tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    # the timestamped sweep folder is the only thing written, with one folder per job
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]
    (sweep,) = logs.glob("*/multirun/*/*")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert result.stdout.count("tl-train summary") == 2, "rank 0 of each job prints one summary"
    pids = []
    for job, lr in ((sweep / "0", 0.001), (sweep / "1", 0.01)):
        assert (job / "csv" / "metrics.csv").is_file() and (job / "checkpoints" / "last.ckpt").is_file()
        assert (job / ".hydra" / "config.yaml").is_file()
        rank0, rank1 = probes(job)
        assert (rank0["rank"], rank1["rank"]) == (0, 1)
        for key in ("seen", "out", "lr", "root_dir", "checkpoint_dir"):
            assert rank0[key] == rank1[key], key
        assert rank0["lr"] == lr and rank0["seen"]["output_dir"] == str(job.resolve())
        assert rank0["checkpoint_dir"] == str((job / "checkpoints").resolve())
        pids.append(rank1["pid"])
    # each job starts its own rank 1 (a relaunched rank 1 that ran the whole sweep would serve both jobs)
    assert pids[0] != pids[1]
    assert result.stderr.count("Launching 2 jobs") + result.stdout.count("Launching 2 jobs") == 1
