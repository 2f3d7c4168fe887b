"""finetune=auto: the rule table on given measurements, the race (successive halving on Optuna trials),
the domain-shift measures, measuring tiny data, and tl-train runs that choose, race and record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from test_train_app import compose_run
from torch import nn

from tl_lightning.advisor import (
    Measurements,
    RuleThresholds,
    batchnorm_shift,
    choose_strategy,
    successive_halving,
    tokenizer_fertility,
)
from tl_lightning.advisor.domain import gaussian_kl
from tl_lightning.cli import config_dir
from tl_lightning.errors import ConfigurationError, DataError, UnknownNameError

CONF = config_dir()


def m(**fields: Any) -> Measurements:
    """Measurements of a 10-class problem, 400 per class, a 4M-parameter CNN; override any field."""
    base: dict[str, Any] = {
        "n_train": 4000,
        "num_classes": 10,
        "min_class_count": 400,
        "backbone_params": 4_000_000,
        "probe_accuracy": 0.85,
        "chance_accuracy": 0.1,
        "random_probe_accuracy": 0.6,
        "logme": 1.0,
        "shift": 0.05,
    }
    base.update(fields)
    return Measurements(**base)


# --- the rule table -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "strategy", "rule"),
    [
        ({"pretrained": False}, "scratch", "R0"),
        ({"probe_accuracy": 0.61, "random_probe_accuracy": 0.6}, "scratch", "R1"),
        ({"probe_accuracy": 0.61, "random_probe_accuracy": 0.6, "random_logme": 1.2}, "scratch", "R1"),
        # notebook 04 at 32 px: the probe on 60 samples is one sample short, LogME is far ahead: no R1
        (
            {"n_train": 480, "min_class_count": 48, "probe_accuracy": 0.733, "random_probe_accuracy": 0.75,
             "logme": 1.45, "random_logme": -0.05, "shift": 0.5},
            "lp_ft",
            "R4b",
        ),
        ({"probe_accuracy": 0.99}, "feature_extraction", "R2"),
        ({"n_train": 500, "min_class_count": 50, "probe_accuracy": 0.9}, "feature_extraction", "R3"),
        (
            {"n_train": 500, "min_class_count": 50, "probe_accuracy": 0.5, "random_probe_accuracy": 0.3},
            "lp_ft",
            "R3b",
        ),
        # the same headroom with a model far too large for 500 examples: stay frozen
        (
            {
                "n_train": 500,
                "min_class_count": 50,
                "probe_accuracy": 0.5,
                "random_probe_accuracy": 0.3,
                "backbone_params": 100_000_000,
            },
            "feature_extraction",
            "R3",
        ),
        ({"n_train": 500, "min_class_count": 50, "shift": 0.4, "probe_accuracy": 0.5, "random_probe_accuracy": 0.3}, "top_n", "R4"),
        # a different domain whose frozen features already transfer (kappa 0.83): the probe overrides the seed
        ({"n_train": 500, "min_class_count": 50, "shift": 0.4}, "lp_ft", "R4b"),
        (
            {"n_train": 500, "min_class_count": 50, "shift": 0.4, "backbone_params": 100_000_000},
            "feature_extraction",
            "R4b",
        ),
        ({"n_train": 20000, "min_class_count": 2000}, "full", "R5"),
        ({"n_train": 20000, "min_class_count": 2000, "shift": 0.4}, "llrd", "R6"),
        ({}, "full", "R7"),
        ({"backbone_params": 500_000_000}, "l2sp", "R7"),
        ({"shift": 0.4}, "llrd", "R8"),
    ],
)
def test_rule_table(fields: dict[str, Any], strategy: str, rule: str) -> None:
    decision = choose_strategy(m(**fields))
    assert decision.strategy == strategy, decision.format()
    assert decision.rule.split()[0] == rule
    assert decision.shortlist[0] == strategy and len(set(decision.shortlist)) == len(decision.shortlist)


def test_similarity_falls_back_from_shift_to_tokenizer_to_gain() -> None:
    text = m(shift=None, tokens_per_word=1.2, unknown_rate=0.0)
    assert choose_strategy(text).strategy == "full"
    assert "tokenizer" in choose_strategy(text).similarity
    jargon = m(shift=None, tokens_per_word=2.4, unknown_rate=0.0)
    assert choose_strategy(jargon).strategy == "llrd"
    # no shift statistics: the probe gain over random init decides (0.625 >= 0.3: similar)
    vit = m(shift=None)
    assert choose_strategy(vit).strategy == "full" and "gain" in choose_strategy(vit).similarity
    assert choose_strategy(m(shift=None, probe_accuracy=0.7, random_probe_accuracy=0.6)).strategy == "llrd"


def test_the_demo_numbers_choose_full_fine_tuning() -> None:
    """The demo (MiniLM, 1,000 Rotten Tomatoes snippets): the seed's '< 1K: feature extraction' would lose
    9 points (BENCHMARKS.md: 0.690 vs 0.777); 500 per class is medium data, English text is similar."""
    demo = Measurements(
        n_train=1000,
        num_classes=2,
        min_class_count=496,
        backbone_params=22_700_000,
        probe_accuracy=0.69,
        chance_accuracy=0.5,
        random_probe_accuracy=0.6,
        tokens_per_word=1.2,
        unknown_rate=0.0,
    )
    assert choose_strategy(demo).strategy == "full"


def test_thresholds_change_the_decision_and_are_checked() -> None:
    assert choose_strategy(m(), RuleThresholds(large_per_class=300)).strategy == "full"
    assert choose_strategy(m(), RuleThresholds(large_per_class=300)).rule.startswith("R5")
    assert choose_strategy(m(), RuleThresholds(solved_kappa=0.5)).strategy == "feature_extraction"
    with pytest.raises(
        ConfigurationError, match="unknown rule threshold finetune.rules.large_per_clas; did you mean"
    ):
        RuleThresholds.from_mapping({"large_per_clas": 10})
    with pytest.raises(ConfigurationError, match="must be below large_per_class"):
        RuleThresholds(small_per_class=500, large_per_class=100)


def test_auto_yaml_documents_the_default_thresholds() -> None:
    yaml = OmegaConf.load(CONF / "finetune" / "auto.yaml")
    assert RuleThresholds.from_mapping(yaml.finetune.rules) == RuleThresholds()


def test_decision_prints_the_numbers_and_the_rule() -> None:
    text = choose_strategy(m(shift=0.4)).format()
    assert "4000 training examples, 10 classes, 400 per class" in text
    assert "accuracy 0.850" in text and "random init: probe accuracy 0.600" in text
    assert "BatchNorm-statistics shift from the pretraining data: 0.400" in text
    assert "rule R8 medium-different (extension)" in text and text.endswith("-> finetune=llrd")
    record = choose_strategy(m()).to_json()
    assert json.loads(json.dumps(record))["measurements"]["probe_kappa"] == pytest.approx(0.75 / 0.9)
    assert Measurements.from_json(record["measurements"]) == m()


# --- the race -------------------------------------------------------------------------------------


def test_successive_halving_keeps_the_best_and_trains_losers_less() -> None:
    quality = {"feature_extraction": 0.5, "lp_ft": 0.8, "full": 0.9, "llrd": 0.7}
    calls: list[tuple[str, int]] = []

    def evaluate(name: str, epochs: int) -> float:
        calls.append((name, epochs))
        return quality[name] + 0.01 * epochs

    result = successive_halving(list(quality), evaluate, min_epochs=1, max_epochs=8)
    assert result.winner == "full"
    assert [(r.epochs, r.kept) for r in result.rungs] == [(1, ("full", "lp_ft")), (2, ("full",))]
    assert calls == [
        ("feature_extraction", 1),
        ("lp_ft", 1),
        ("full", 1),
        ("llrd", 1),
        ("full", 2),
        ("lp_ft", 2),
    ]
    assert result.epochs_trained == 4 + 4
    states = {t.params["finetune"]: t.state.name for t in result.study.trials}
    assert states == {"feature_extraction": "PRUNED", "lp_ft": "PRUNED", "full": "COMPLETE", "llrd": "PRUNED"}
    assert result.study.best_trial.params == {"finetune": "full"}
    assert result.study.trials[2].intermediate_values == {1: pytest.approx(0.91), 2: pytest.approx(0.92)}
    assert "full (winner)" in result.format()


def test_race_budget_is_capped_and_ties_go_to_the_rule_choice() -> None:
    result = successive_halving(
        ["llrd", "full", "lp_ft"], lambda name, epochs: 0.5, min_epochs=2, max_epochs=2
    )
    assert result.winner == "llrd" and [r.epochs for r in result.rungs] == [2]
    result = successive_halving(
        ["a", "b"], lambda name, epochs: {"a": 1.0, "b": 0.5}[name], direction="minimize"
    )
    assert result.winner == "b"


def test_a_failing_candidate_leaves_the_race_and_all_failing_raises() -> None:
    def evaluate(name: str, epochs: int) -> float:
        if name == "lora":
            raise ConfigurationError("a CNN has no attention projections")
        return {"full": 0.7, "llrd": 0.8}[name]

    result = successive_halving(["lora", "full", "llrd"], evaluate, max_epochs=2)
    assert result.winner == "llrd" and "a CNN has no attention" in result.errors["lora"]
    assert {t.params["finetune"]: t.state.name for t in result.study.trials}["lora"] == "FAIL"

    def broken(name: str, epochs: int) -> float:
        raise DataError(f"{name} broke")

    with pytest.raises(DataError, match="a broke"):
        successive_halving(["a", "b"], broken)
    with pytest.raises(ConfigurationError, match="distinct candidate strategies"):
        successive_halving(["a", "a"], broken)


# --- domain shift -----------------------------------------------------------------------------------


def test_gaussian_kl() -> None:
    zero = gaussian_kl(torch.zeros(2), torch.ones(2), torch.zeros(2), torch.ones(2))
    assert torch.allclose(zero, torch.zeros(2))
    # KL(N(1, 1) || N(0, 1)) = 1/2; KL(N(0, 4) || N(0, 1)) = (4 - 1 - log 4) / 2
    got = gaussian_kl(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 4.0]), torch.zeros(2), torch.ones(2))
    assert torch.allclose(got, torch.tensor([0.5, (3 - np.log(4)) / 2], dtype=got.dtype))


def test_batchnorm_shift_is_zero_on_the_source_statistics_and_grows_with_the_shift() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 4), nn.BatchNorm1d(4))
    source = torch.randn(4096, 4) * 2 + 3
    net.train()
    net[0].momentum = None  # cumulative average: running stats = the source's statistics
    net[2].momentum = None
    with torch.no_grad():
        net(source)
    same = batchnorm_shift(net, [source[:2048]], max_samples=2048)
    moved = batchnorm_shift(net, [source[:2048] + 3], max_samples=2048)
    assert same is not None and moved is not None
    assert same.shift < 0.01 < moved.shift
    assert [name for name, _ in moved.per_layer] == ["0", "2"] and moved.samples == 2048
    assert net.training, "the network's mode is restored"
    assert batchnorm_shift(nn.Linear(4, 4), [source]) is None
    with pytest.raises(DataError, match="no target batches"):
        batchnorm_shift(net, [])


def test_tokenizer_fertility(tiny_bert_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    known = tokenizer_fertility(tokenizer, ["a good movie", "the bad film"])
    assert known.tokens_per_word == pytest.approx(1.0) and known.unknown_rate == 0.0
    foreign = tokenizer_fertility(tokenizer, ["zebra quixotic", "ééé"])
    assert foreign.tokens_per_word > 3
    with pytest.raises(DataError, match="no words"):
        tokenizer_fertility(tokenizer, ["", "  "])


# --- measuring and running through tl-train -------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A timm test_resnet state dict standing in for pretrained weights (loaded with a key map dropping fc)."""
    import timm

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=5).state_dict(), path)
    return path


def auto_overrides(image_root: Path, weights: Path, *extra: str) -> list[str]:
    return [
        "experiment=tiny_image",
        f"data.root={image_root}",
        "finetune=auto",
        "backbone.pretrained=true",
        f"backbone.weights={weights}",
        "+backbone.kwargs.key_map=[['^fc[.]', null]]",
        "callbacks.progress_bar=null",
        *extra,
    ]


def test_measure_on_tiny_data(image_root: Path, pretrained_file: Path, tmp_path: Path) -> None:
    from tl_lightning.finetune.auto import decide_strategy

    cfg = compose_run(auto_overrides(image_root, pretrained_file), tmp_path)
    decision = decide_strategy(cfg)
    got = decision.measurements
    assert (got.n_train, got.num_classes, got.min_class_count) == (12, 3, 4)  # 24 images, val/test 0.25 each
    assert got.pretrained and got.backbone_params == sum(
        p.numel() for p in __import__("timm").create_model("test_resnet", num_classes=0).parameters()
    )
    assert (
        0.0 <= got.probe_accuracy <= 1.0
        and got.probe_val_samples == 6
        and got.chance_accuracy == pytest.approx(1 / 3)
    )
    assert got.random_probe_accuracy is not None and got.logme is not None and got.random_logme is not None
    assert got.shift is not None and got.shift > 0 and got.tokens_per_word is None
    assert decision.strategy in ("feature_extraction", "lp_ft", "top_n", "scratch")  # 4 per class: small data
    # the pretrained features went through the cache of the run folder
    assert any((tmp_path / "feature_cache").iterdir())


def test_auto_runs_the_chosen_strategy_and_records_why(
    image_root: Path, pretrained_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tl_lightning.cli.train import train

    # solved_kappa=-1: rule R2 (the frozen features solve the task) whatever the probe says
    cfg = compose_run(
        auto_overrides(
            image_root,
            pretrained_file,
            "finetune.rules.solved_kappa=-1",
            "trainer.fast_dev_run=true",
            "model.lr=0.0123",
        ),
        tmp_path,
    )
    summary = train(cfg)
    out = capsys.readouterr().out
    assert "finetune=auto measured:" in out and "rule R2 solved-by-frozen-features" in out
    assert "-> finetune=feature_extraction" in out
    record = json.loads((tmp_path / "auto_finetune.json").read_text())
    assert record["strategy"] == "feature_extraction" and record["rule"].startswith("R2")
    assert record["measurements"]["n_train"] == 12
    # the run is the feature_extraction run: only the head trains
    head = 3 * 96 + 3  # test_resnet features: 96; 3 classes
    assert summary.trainable_params == head
    assert summary.test_metrics


def test_a_resumed_run_keeps_the_recorded_choice(
    image_root: Path, pretrained_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tl_lightning.finetune import auto

    (tmp_path / auto.DECISION_FILE).write_text(json.dumps({"strategy": "top_n"}))
    monkeypatch.setattr(auto, "decide_strategy", lambda *a, **k: pytest.fail("measured again"))
    cfg = compose_run(
        auto_overrides(image_root, pretrained_file, "model.lr=0.0123", "finetune.search=true"), tmp_path
    )
    chosen = auto.resolve_auto_finetune(cfg)
    assert chosen.finetune.name == "top_n" and chosen.finetune.n == 2
    assert chosen.callbacks.unfreeze.preset == "top_n_unfrozen"
    assert chosen.model.lr == 0.0123, "command-line settings still win over the strategy's"
    assert chosen.paths.output_dir == str(tmp_path)


def test_compose_with_finetune_drops_auto_options_and_needs_hydra(
    image_root: Path, pretrained_file: Path, tmp_path: Path
) -> None:
    from tl_lightning.finetune.auto import compose_with_finetune

    cfg = compose_run(
        auto_overrides(image_root, pretrained_file, "finetune.search=true", "finetune.rules.min_gain=0.2"),
        tmp_path,
    )
    full = compose_with_finetune(cfg, "full")
    assert full.finetune.name == "full" and "search" not in full.finetune
    with pytest.raises(UnknownNameError, match="finetune option 'ful' does not exist; did you mean 'full'"):
        compose_with_finetune(cfg, "ful")
    HydraConfig.instance().cfg = None  # a config composed by hand, outside Hydra
    with pytest.raises(ConfigurationError, match="needs the config as Hydra composed it"):
        compose_with_finetune(cfg, "full")


def test_auto_option_errors(image_root: Path, pretrained_file: Path, tmp_path: Path) -> None:
    from tl_lightning.finetune.auto import AutoOptions

    with pytest.raises(
        ConfigurationError, match="unknown option finetune.serach for finetune=auto; did you mean 'search'"
    ):
        AutoOptions.from_config({"name": "auto", "serach": True})
    with pytest.raises(ConfigurationError, match="other than auto"):
        AutoOptions.from_config({"search_candidates": ["full", "auto"]})
    with pytest.raises(ConfigurationError, match="finetune.search must be true or false"):
        AutoOptions.from_config({"search": "yes"})
    with pytest.raises(ConfigurationError, match="search_candidates must be an integer >= 2"):
        AutoOptions.from_config({"search_candidates": 1})


def test_search_races_the_shortlist_and_keeps_the_rigged_winner(
    image_root: Path, pretrained_file: Path, tmp_path: Path
) -> None:
    """The race's wiring, rigged: each race run is a tl-train run of one strategy for the rung's epochs (no
    test, no checkpoints, in auto_search/); the fake scores make lp_ft win; the real run then trains lp_ft."""
    from tl_lightning.cli._summary import RunSummary
    from tl_lightning.cli.train import train as real_train

    rigged = {"feature_extraction": 0.2, "lp_ft": 0.9, "top_n": 0.5}
    seen: list[dict[str, Any]] = []

    def fake_train(run_cfg: DictConfig) -> RunSummary:
        seen.append(
            {
                "finetune": run_cfg.finetune.name,
                "epochs": run_cfg.trainer.max_epochs,
                "test": run_cfg.test,
                "dir": run_cfg.paths.output_dir,
                "lr": run_cfg.model.lr,
                "checkpoint": run_cfg.callbacks.model_checkpoint,
                "cache": run_cfg.data.cache_dir,
            }
        )
        return RunSummary(
            task_name="race",
            output_dir=run_cfg.paths.output_dir,
            val_metrics={"val/acc": rigged[run_cfg.finetune.name] + 0.01 * run_cfg.trainer.max_epochs},
        )

    cfg = compose_run(
        auto_overrides(
            image_root,
            pretrained_file,
            "finetune.search=true",
            "finetune.rules.solved_kappa=-1",
            "trainer.max_epochs=4",
            "model.lr=0.0123",
            "finetune.search_candidates=3",
        ),
        tmp_path,
    )
    from tl_lightning.finetune.auto import resolve_auto_finetune

    chosen = resolve_auto_finetune(cfg, run=fake_train)
    assert chosen.finetune.name == "lp_ft"
    assert [(s["finetune"], s["epochs"]) for s in seen] == [
        ("feature_extraction", 1),
        ("lp_ft", 1),
        ("top_n", 1),
        ("lp_ft", 2),
        ("top_n", 2),
    ]
    assert all(s["test"] is False and s["checkpoint"] is None and s["lr"] == 0.0123 for s in seen)
    assert seen[0]["dir"] == str(tmp_path / "auto_search" / "feature_extraction-1ep")
    assert seen[0]["cache"] == str(tmp_path / "feature_cache"), "race runs share the run's feature cache"
    record = json.loads((tmp_path / "auto_finetune.json").read_text())
    assert record["rule_strategy"] == "feature_extraction" and record["strategy"] == "lp_ft"
    assert record["race"]["winner"] == "lp_ft" and len(record["race"]["rungs"]) == 2
    # the kept strategy runs for real
    with open_dict(chosen):
        chosen.trainer.fast_dev_run = True
    summary = real_train(chosen)
    assert summary.test_metrics


@pytest.mark.slow
def test_search_trains_for_real_and_keeps_the_strategy_that_learns(
    pretrained_file: Path, tmp_path: Path
) -> None:
    """Real race runs on learnable colours: full fine-tuning at a good LR against two rigged options that
    cannot learn (LR 1e-9); the race keeps full, whose run then trains."""
    from PIL import Image

    from tl_lightning.cli.train import train

    root = tmp_path / "colours"
    rng = np.random.default_rng(0)
    for label, colour in {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}.items():
        (root / label).mkdir(parents=True)
        for i in range(16):
            pixel = np.clip(np.array(colour) + rng.integers(-40, 40, 3), 0, 255).astype(np.uint8)
            Image.fromarray(np.tile(pixel, (32, 32, 1))).save(root / label / f"{i}.png")
    configs = tmp_path / "configs" / "finetune"
    configs.mkdir(parents=True)
    for name in ("frozen_a", "frozen_b"):
        (configs / f"{name}.yaml").write_text(
            f"# @package _global_\nfinetune:\n  name: {name}\nmodel:\n  lr: 1.0e-9\n  head_lr: 1.0e-9\n"
        )
    overrides = auto_overrides(
        root,
        pretrained_file,
        f"hydra.searchpath=[file://{tmp_path / 'configs'}]",
        "finetune.search=true",
        "finetune.search_candidates=[frozen_a,full,frozen_b]",
        "finetune.search_min_epochs=3",
        "trainer.max_epochs=3",
        "model.lr=3e-3",
        "scheduler=constant",
        "data.augment=false",
        "data.batch_size=4",
        "callbacks.early_stopping=null",
    )
    summary = train(compose_run(overrides, tmp_path / "run"))
    record = json.loads((tmp_path / "run" / "auto_finetune.json").read_text())
    scores = record["race"]["rungs"][0]["scores"]
    assert record["strategy"] == "full", scores
    assert scores["full"] > max(scores["frozen_a"], scores["frozen_b"]), scores
    assert summary.best_score is not None and summary.best_score > 0.5
