"""Optuna sweeps (the shipped tl_optuna sweeper, Optuna >= 4): the search space, storage URLs, per-trial
seeding; end to end, two concurrent processes filling one SQLite study, a rigged bad trial pruned, and a
2-process DDP trial training one set of parameters on both ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", minversion="4", reason="needs the `sweeps` extra (optuna>=4)")

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from tl_lightning.errors import ConfigurationError  # noqa: E402
from tl_lightning.sweeps import open_storage, search_space, storage_url  # noqa: E402
from tl_lightning.sweeps._sampler import TrialSeededSampler  # noqa: E402

TESTS = Path(__file__).resolve().parent


# ------------------------------------------------------------------ the pieces
def test_search_space_from_hydra_sweeps() -> None:
    space = search_space(
        {"model.lr": "tag(log, interval(1e-5, 1e-2))", "model.layer_decay": "interval(0.5, 1.0)",
         "data.batch_size": "choice(16, 32, 64)", "model.head": "choice(linear, mlp)", "trainer.max_epochs": "3"},
        ["+model.head_dropout=range(0.0, 0.3, 0.1)", "data.num_workers=tag(int, interval(0, 4))",
         "model.layer_decay=0.9", "experiment=tiny_image"],
    )
    d = space.distributions
    assert d["model.lr"] == FloatDistribution(1e-5, 1e-2, log=True)
    assert d["data.batch_size"] == CategoricalDistribution([16, 32, 64])
    assert d["model.head"] == CategoricalDistribution(["linear", "mlp"])
    assert d["+model.head_dropout"] == FloatDistribution(0.0, 0.2, step=0.1), "Hydra's range excludes stop"
    assert d["data.num_workers"] == IntDistribution(0, 4)
    assert "model.layer_decay" not in d, "a fixed value on the command line wins over the config's sweep"
    assert space.fixed == ["trainer.max_epochs=3", "model.layer_decay=0.9", "experiment=tiny_image"]
    overrides = space.overrides({"model.lr": 3e-4, "data.batch_size": 32, "model.head": "mlp"})
    assert overrides[-3:] == ["model.lr=0.0003", "data.batch_size=32", "model.head=mlp"]


@pytest.mark.parametrize(
    ("sweep", "match"),
    [("tag(loq, interval(1, 2))", "unknown tag.*'loq'.*valid tags"),
     ("choice([1, 2], [3])", "choice values must be numbers, strings"),
     ("interval(2, 1)", r"interval\(2.0, 1.0\) needs low < high")],
)
def test_search_space_errors_name_the_key(sweep: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=f"search space model.lr: {match}"):
        search_space({"model.lr": sweep}, [])


def test_storage_urls_are_absolute_and_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage_url("sqlite:///studies/s.db") == f"sqlite:///{tmp_path}/studies/s.db"
    assert storage_url("journal:s.journal") == f"journal:{tmp_path}/s.journal"
    assert storage_url(None, default_journal="sweep/optuna.journal") == f"journal:{tmp_path}/sweep/optuna.journal"
    assert storage_url("postgresql://u:p@db/optuna") == "postgresql://u:p@db/optuna"
    for url in (storage_url("sqlite:///studies/s.db"), storage_url("journal:s.journal")):
        study = optuna.create_study(study_name="s", storage=open_storage(url))
        study.tell(study.ask({"x": FloatDistribution(0, 1)}), 1.0)
        assert len(optuna.load_study(study_name="s", storage=open_storage(url)).trials) == 1
    with pytest.raises(ConfigurationError, match="unknown study storage 'redis://x'.*journal:<file>"):
        open_storage("redis://x")


def test_trial_seeded_sampler_never_repeats_across_processes(tmp_path: Path) -> None:
    """Two sweep processes with the same seed on one study: distinct trials, reproducible per trial number."""
    from functools import partial

    url = storage_url(f"journal:{tmp_path / 's.journal'}")
    space = {"lr": FloatDistribution(1e-5, 1e-2, log=True), "bs": CategoricalDistribution([16, 32, 64])}

    def process() -> optuna.Study:
        sampler = TrialSeededSampler(partial(optuna.samplers.TPESampler, n_startup_trials=5), seed=7)
        return optuna.create_study(study_name="s", storage=open_storage(url), sampler=sampler, load_if_exists=True)

    a, b = process(), process()
    asked = []
    for study in (a, b, a, b):
        trial = study.ask(space)
        asked.append((trial.number, trial.params["lr"]))
        study.tell(trial, trial.params["lr"])
    assert [n for n, _ in asked] == [0, 1, 2, 3]
    assert len({lr for _, lr in asked}) == 4
    # the same seed and trial number draw the same parameters (a sweep is reproducible)
    again = optuna.create_study(
        sampler=TrialSeededSampler(partial(optuna.samplers.TPESampler, n_startup_trials=5), seed=7)
    )
    assert again.ask(space).params["lr"] == asked[0][1]


def test_sweeper_refuses_to_start_on_a_secondary_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra_plugins.tl_optuna_sweeper.tl_optuna_sweeper import TLOptunaSweeper

    monkeypatch.setenv("SLURM_PROCID", "1")
    with pytest.raises(ConfigurationError, match=r"secondary rank.*\(SLURM_PROCID=1\).*outside srun"):
        TLOptunaSweeper().setup(hydra_context=None, task_function=None, config=None)  # type: ignore[arg-type]


def test_sweeper_arguments_are_checked() -> None:
    from hydra_plugins.tl_optuna_sweeper.tl_optuna_sweeper import TLOptunaSweeper

    with pytest.raises(ConfigurationError, match="hydra.sweeper.direction"):
        TLOptunaSweeper(direction="maximise")
    with pytest.raises(ConfigurationError, match="hydra.sweeper.n_trials"):
        TLOptunaSweeper(n_trials=0)


# ------------------------------------------------------------------ end to end
def tl_train(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "tl_lightning.cli.train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    return out + err


def sweep_args(image_root: Path, *extra: str, epochs: int = 1) -> list[str]:
    # data.batch_size fixed on the command line: it leaves the search space
    return ["-m", "hparams_search=optuna", "experiment=tiny_image", f"data.root={image_root}", "debug=limit",
            f"trainer.max_epochs={epochs}", "test=false", "extras.print_config=false", "data.batch_size=8", *extra]


@pytest.mark.slow
def test_two_processes_fill_one_sqlite_study(image_root: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    common = sweep_args(image_root, "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={url}",
                        "hydra.sweeper.study_name=shared")
    procs = [tl_train([*common, f"hydra.sweep.dir={name}"], tmp_path) for name in ("a", "b")]
    for proc in procs:
        finish(proc)
    study = optuna.load_study(study_name="shared", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert len({(t.params["model.lr"], t.params["model.layer_decay"]) for t in study.trials}) == 4
    # the job folders carry the trial numbers, across the two sweep folders
    jobs = sorted(p.name for name in ("a", "b") for p in (tmp_path / name).iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]
    for t in study.trials:
        assert t.intermediate_values, "the pruning callback reported the epoch's val/acc"
        assert Path(t.user_attrs["tl_job_dir"], "csv", "metrics.csv").is_file()
    results = [OmegaConf.to_container(OmegaConf.load(tmp_path / name / "optimization_results.yaml")) for name in "ab"]
    for r in results:
        assert r["study_name"] == "shared" and r["storage"] == url
        assert set(r["best_params"]) == {"model.lr", "model.layer_decay"}
    # the process that finished last saw the whole study
    finals = [r for r in results if r["trials"] == {"complete": 4}]
    assert finals, [r["trials"] for r in results]
    final = finals[-1]
    assert final["best_trial"] == study.best_trial.number and final["best_value"] == study.best_value
    assert set(final["param_importances"]) == {"model.lr", "model.layer_decay"}
    assert (tmp_path / "a" / "trials.csv").read_text().count("\n") >= 3


@pytest.mark.slow
def test_a_rigged_bad_trial_is_pruned(image_root: Path, tmp_path: Path) -> None:
    """Two good learning rates first, then one that learns nothing: the median pruner stops it after epoch 0."""
    args = sweep_args(
        image_root, "hydra.sweeper.n_trials=3", "optimized_metric=val/loss",
        "hydra.sweeper.direction=minimize", "hydra.sweeper.pruner.n_startup_trials=2",
        "hydra.sweeper.pruner.n_warmup_steps=0", "hydra.sweeper.enqueue=[{model.lr:0.01},{model.lr:0.003},{model.lr:1e-9}]",
        "model.layer_decay=1.0", "hydra.sweep.dir=sweep", epochs=3,
    )
    finish(tl_train(args, tmp_path))
    study = optuna.load_study(study_name="debug", storage=open_storage(f"journal:{tmp_path / 'sweep' / 'optuna.journal'}"))
    good, other, bad = study.trials
    assert bad.params["model.lr"] == 1e-9
    assert (good.state, other.state, bad.state) == (TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED)
    assert sorted(good.intermediate_values) == [0, 1, 2]
    assert sorted(bad.intermediate_values) == [0], "pruned after its first epoch"
    assert bad.user_attrs["tl_pruned_at_epoch"] == 0
    summary = json.loads((tmp_path / "sweep" / "2" / "summary.json").read_text())
    assert summary["epochs"] == 1, "the pruned run stopped after one of its three epochs"
    results = OmegaConf.to_container(OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml"))
    assert results["trials"] == {"complete": 2, "pruned": 1}


@pytest.mark.slow
@pytest.mark.ddp
def test_a_ddp_trial_trains_one_set_of_parameters(image_root: Path, tmp_path: Path) -> None:
    """trainer=ddp_sim with Lightning's script launcher (strategy=ddp, as on GPUs): rank 1 is a new process that
    runs the trial's job, with the trial's parameters; it never asks the study (lightning-hydra-template 639)."""
    probe = ["+callbacks.rank_probe._target_=_rank_probe.RankProbe", "+callbacks.rank_probe.out=${paths.output_dir}",
             "+callbacks.rank_probe.seen.layer_decay=${model.layer_decay}"]
    args = sweep_args(image_root, "trainer=ddp_sim", "trainer.strategy=ddp", "hydra.sweeper.n_trials=1",
                      "hydra.sweep.dir=sweep", *probe)
    finish(tl_train(args, tmp_path))
    study = optuna.load_study(study_name="debug", storage=open_storage(f"journal:{tmp_path / 'sweep' / 'optuna.journal'}"))
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and trial.intermediate_values
    ranks = [json.loads((tmp_path / "sweep" / "0" / "rank_probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["pid"] != ranks[1]["pid"]
    for rank in ranks:
        assert rank["lr"] == trial.params["model.lr"]
        assert rank["seen"]["layer_decay"] == trial.params["model.layer_decay"]
