"""``finetune=auto``: measure, choose a strategy by the rule table (or race a shortlist), then run it.

``tl-train`` calls :func:`resolve_auto_finetune` at the start of a run whose ``finetune.name`` is
``auto`` (``conf/finetune/auto.yaml``):

1. **Measure** (:func:`tl_lightning.advisor.measure`) on frozen features computed once through the
   feature cache, with the run's backbone, data, device and precision: examples per class, a
   linear probe and LogME of the pretrained features, the same probe on random-init features of
   the same architecture, the BatchNorm-statistics shift (image CNNs) or tokenizer fertility
   (text), parameters per example.
2. **Choose** (:func:`tl_lightning.advisor.choose_strategy`): the rule table, printed with the
   numbers and the rule that decided.
3. **Race** (``finetune.search=true``): the first ``search_candidates`` strategies of the rule's
   shortlist train for a short budget by successive halving on the validation metric
   (:func:`tl_lightning.advisor.successive_halving`, an Optuna study; each race run is a
   ``tl-train`` run of that strategy with ``trainer.max_epochs`` set to the rung's budget, no
   checkpoints and no test, in ``<run folder>/auto_search/<strategy>-<epochs>ep``); the winner is kept.
4. **Run** the chosen strategy: the config is composed again, through Hydra, with the run's own
   overrides and ``finetune=<choice>``, so the run is exactly the ``finetune=<choice>`` run
   (experiment and command-line settings still win over the strategy's defaults).

The decision (measurements, rule, race) is written to ``<run folder>/auto_finetune.json``. A run
that finds that file in its folder (a resumed or requeued run, the extra DDP processes started
for ranks > 0) keeps the recorded strategy without measuring again.

The race runs in this process on one device: it is refused for multi-process trainers
(``trainer.devices=1`` for the race, then ``finetune=<winner> trainer=ddp``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from tl_lightning._checks import check_int
from tl_lightning.errors import ConfigurationError, UnknownNameError, did_you_mean

__all__ = [
    "DECISION_FILE",
    "AutoOptions",
    "compose_with_finetune",
    "decide_strategy",
    "resolve_auto_finetune",
]

#: the decision of ``finetune=auto``, in the run folder
DECISION_FILE = "auto_finetune.json"
_OVERRIDE_KEY = re.compile(r"^[~+]*([\w.\-/@]+)")


@dataclass(frozen=True)
class AutoOptions:
    """The options of ``conf/finetune/auto.yaml`` (``finetune.<name>``)."""

    search: bool = False
    search_candidates: int | tuple[str, ...] = 4
    search_min_epochs: int = 1
    search_max_epochs: int = 10
    search_reduction_factor: int = 2
    random_reference: bool = True
    shift_samples: int = 256
    rules: dict[str, float] | None = None

    @classmethod
    def from_config(cls, node: Any) -> AutoOptions:
        """Read and check ``cfg.finetune``; an unknown key is an error naming the known ones."""
        values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
        values.pop("name", None)
        known = list(cls.__dataclass_fields__)
        for key in values:
            if key not in known:
                raise ConfigurationError(
                    f"unknown option finetune.{key} for finetune=auto{did_you_mean(str(key), known)} Options: {known}"
                )
        for key in ("search", "random_reference"):
            if key in values and not isinstance(values[key], bool):
                raise ConfigurationError(f"finetune.{key} must be true or false, got {values[key]!r}")
        candidates = values.get("search_candidates", 4)
        if isinstance(candidates, (list, tuple)):
            names = tuple(str(c) for c in candidates)
            if not names or len(set(names)) != len(names) or "auto" in names:
                raise ConfigurationError(
                    f"finetune.search_candidates must list distinct finetune options other than auto, got {list(names)}"
                )
            values["search_candidates"] = names
        else:
            values["search_candidates"] = check_int("finetune.search_candidates", candidates, low=2)
        for key in ("search_min_epochs", "search_max_epochs", "shift_samples"):
            if key in values:
                values[key] = check_int(f"finetune.{key}", values[key], low=1)
        if "search_reduction_factor" in values:
            values["search_reduction_factor"] = check_int(
                "finetune.search_reduction_factor", values["search_reduction_factor"], low=2
            )
        return cls(**values)


# -- composing the run's config with another strategy ------------------------------------------
def _key(override: str) -> str:
    match = _OVERRIDE_KEY.match(str(override))
    return match.group(1) if match else str(override)


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    from tl_lightning.cli._config import config_dir

    def run() -> DictConfig:
        try:
            return compose(config_name=config_name, overrides=overrides)
        except MissingConfigException as err:
            strategy = next(
                (o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("finetune=")), "?"
            )
            known = GlobalHydra.instance().config_loader().get_group_options("finetune")
            raise UnknownNameError(
                f"finetune option {strategy!r} does not exist{did_you_mean(strategy, known)} Options: {sorted(known)}"
            ) from err

    if GlobalHydra.instance().is_initialized():
        return run()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return run()


def compose_with_finetune(cfg: DictConfig, strategy: str, extra: Sequence[str] = ()) -> DictConfig:
    """The run's config composed again with ``finetune=<strategy>`` (and ``extra`` overrides last).

    The run's own overrides are replayed (``HydraConfig``): experiment and command-line settings
    keep winning over the strategy's defaults, as in a ``finetune=<strategy>`` run. Overrides of
    ``finetune.<key>`` are dropped: they were ``finetune=auto``'s options (the chosen strategy runs
    with its own defaults). The run folder (``paths.output_dir``) and ``extras`` are carried over.

    Raises:
        ConfigurationError: The config was not composed by Hydra (no ``HydraConfig``).
        UnknownNameError: ``strategy`` is not a ``finetune`` option.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise ConfigurationError(
            "finetune=auto composes the run's config again with the chosen strategy, which needs the config as Hydra "
            "composed it: run tl-train, or compose(..., return_hydra_config=True) and HydraConfig().set_config(cfg) "
            "before train(cfg); or pick a strategy yourself (finetune=full, ...)"
        )
    hydra_cfg = HydraConfig.get()
    task = [str(o) for o in hydra_cfg.overrides.task]
    search_path = [str(o) for o in hydra_cfg.overrides.hydra if _key(str(o)).startswith("hydra.searchpath")]
    config_name = str(hydra_cfg.job.config_name or "train")
    kept = [o for o in task if not (_key(o) == "finetune" or _key(o).startswith("finetune."))]
    composed = _compose(config_name, [*search_path, *kept, f"finetune={strategy}", *extra])
    with open_dict(composed):
        # the run folder as this run resolved it (tl-train: Hydra's; tests and notebooks: set by hand)
        output_dir = OmegaConf.select(cfg, "paths.output_dir", throw_on_resolution_failure=False)
        if output_dir is not None:
            composed.paths.output_dir = str(output_dir)
        if "extras" in cfg:
            composed.extras = cfg.extras
    return composed


# -- measuring and choosing ---------------------------------------------------------------------
def _say(text: str) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    rank_zero_only(lambda: print(text, flush=True))()


def _measurement_trainer(cfg: DictConfig) -> Any:
    """The run's trainer settings on one device (its accelerator and precision): what features are computed with."""
    import hydra

    return hydra.utils.instantiate(
        cfg.trainer,
        devices=1,
        num_nodes=1,
        strategy="auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[],
    )


def decide_strategy(cfg: DictConfig, options: AutoOptions | None = None) -> Any:
    """Measure (:func:`~tl_lightning.advisor.measure`) and apply the rule table to the run described by ``cfg``.

    Returns:
        The :class:`~tl_lightning.advisor.Decision`.
    """
    import hydra
    import torch

    from tl_lightning.advisor import Measurements, RuleThresholds, choose_strategy, measure
    from tl_lightning.cli._errors import config_step

    options = options or AutoOptions.from_config(cfg.finetune)
    thresholds = RuleThresholds.from_mapping(options.rules)
    with config_step("data"):
        datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
        labels = [str(label) for label in datamodule.labels]
    if getattr(datamodule, "multilabel", False):
        raise ConfigurationError(
            "finetune=auto measures single-label (multiclass) data; this data is multi-label. Pick a strategy yourself "
            "(finetune=full, llrd, lp_ft ...)"
        )

    def build(pretrained: bool) -> Any:
        overrides: dict[str, Any] = {} if pretrained else {"pretrained": False, "weights": None}
        torch.manual_seed(int(cfg.seed))
        return hydra.utils.instantiate(
            cfg.model, labels=labels, num_classes=len(labels), _convert_="all", **overrides
        )

    with config_step(f"model (backbone.name={cfg.backbone.name!r})"):
        model = build(pretrained=True)
    with config_step("data"):
        datamodule.set_preprocess(model.backbone.preprocess)
    pretrained = bool(cfg.model.get("pretrained", True))
    if not pretrained:
        from tl_lightning.features.key import dataset_targets

        datamodule.setup("fit")
        targets = [int(t) for t in dataset_targets(datamodule.feature_dataset("train"))]
        counts = [targets.count(c) for c in sorted(set(targets))]
        measurements = Measurements(
            n_train=len(targets),
            num_classes=len(counts),
            min_class_count=min(counts),
            backbone_params=sum(p.numel() for p in model.backbone.parameters()),
            pretrained=False,
        )
    else:
        with config_step("trainer"):
            trainer = _measurement_trainer(cfg)
        with config_step("finetune=auto (measuring frozen features)"):
            measurements = measure(
                model,
                datamodule,
                random_model=(lambda: build(pretrained=False)) if options.random_reference else None,
                trainer=trainer,
                shift_samples=options.shift_samples,
                seed=int(cfg.seed),
            )
    return choose_strategy(measurements, thresholds)


def _race(
    cfg: DictConfig, shortlist: Sequence[str], options: AutoOptions, run: Callable[[DictConfig], Any]
) -> Any:
    from tl_lightning.advisor import successive_halving

    devices = cfg.trainer.get("devices", 1)
    single = (
        str(devices) == "1"
        or (OmegaConf.is_list(devices) and len(devices) == 1)
        or (str(devices) == "auto" and str(cfg.trainer.get("accelerator")) == "cpu")
    )
    if not single or int(cfg.trainer.get("num_nodes", 1) or 1) != 1:
        raise ConfigurationError(
            f"finetune.search=true races strategies in this process on one device, but trainer.devices="
            f"{cfg.trainer.devices}. Fix: trainer.devices=1 for the race, then finetune=<winner> with trainer=ddp"
        )
    metric = str(cfg.get("optimized_metric") or "val/acc")
    direction = "minimize" if metric.endswith("loss") else "maximize"
    output_dir = Path(cfg.paths.output_dir)
    shared_cache = cfg.data.get("cache_dir") or str(output_dir / "feature_cache")

    def evaluate(strategy: str, epochs: int) -> float:
        extra = [
            f"trainer.max_epochs={epochs}",
            "test=false",
            "ckpt_path=null",
            "++callbacks.model_checkpoint=null",
            "++trainer.enable_checkpointing=false",
        ]
        run_cfg = compose_with_finetune(cfg, strategy, extra)
        with open_dict(run_cfg):
            run_cfg.paths.output_dir = str(output_dir / "auto_search" / f"{strategy}-{epochs}ep")
            run_cfg.extras.print_config = False
            if "cache_dir" in run_cfg.data:
                run_cfg.data.cache_dir = shared_cache
        _say(f"[finetune=auto] race: finetune={strategy} for {epochs} epoch(s)")
        summary = run(run_cfg)
        value = summary.val_metrics.get(metric)
        if value is None:
            raise ConfigurationError(
                f"the race scores {metric!r} (optimized_metric), which finetune={strategy} did not log; logged: "
                f"{sorted(summary.val_metrics)}. Fix: optimized_metric=val/acc, or a validation split (data.val_fraction > 0)"
            )
        return float(value)

    return successive_halving(
        list(shortlist),
        evaluate,
        min_epochs=options.search_min_epochs,
        max_epochs=max(options.search_max_epochs, options.search_min_epochs),
        reduction_factor=options.search_reduction_factor,
        direction=direction,
    )


def resolve_auto_finetune(cfg: DictConfig, run: Callable[[DictConfig], Any] | None = None) -> DictConfig:
    """The config ``tl-train`` runs for ``finetune=auto``: measured, decided (and raced), composed with the choice.

    Prints the measurements, the rule and the choice (and the race); writes ``auto_finetune.json``
    into the run folder. See the module docstring.

    Args:
        cfg: The run's composed ``train.yaml`` config with ``finetune=auto``.
        run: Trains one race run from its config and returns its summary (``tl-train`` passes
            :func:`tl_lightning.cli.train.train`); needed for ``finetune.search=true``.
    """
    from lightning.pytorch.utilities import rank_zero_only

    options = AutoOptions.from_config(cfg.finetune)
    output_dir = Path(cfg.paths.output_dir)
    recorded = output_dir / DECISION_FILE
    if recorded.is_file():
        record = json.loads(recorded.read_text())
        strategy = str(record["strategy"])
        _say(
            f"[finetune=auto] continuing with finetune={strategy}, chosen when this run started ({recorded})"
        )
        return compose_with_finetune(cfg, strategy)

    start = time.perf_counter()
    decision = decide_strategy(cfg, options)
    record = decision.to_json()
    record["rule_strategy"] = decision.strategy
    record["measure_seconds"] = time.perf_counter() - start
    _say(decision.format())
    strategy = decision.strategy
    if options.search and decision.rule != "R0 no-pretrained-weights":
        if isinstance(options.search_candidates, tuple):
            shortlist = list(options.search_candidates)
        else:
            shortlist = list(decision.shortlist[: options.search_candidates])
        if len(shortlist) >= 2:
            if run is None:
                raise ConfigurationError(
                    "finetune.search=true trains race runs: pass run=tl_lightning.cli.train.train to resolve_auto_finetune"
                )
            t0 = time.perf_counter()
            race = _race(cfg, shortlist, options, run)
            _say(race.format(str(cfg.get("optimized_metric") or "val/acc")))
            strategy = race.winner
            record["race"] = {**race.to_json(), "seconds": time.perf_counter() - t0}
            if strategy != decision.strategy:
                _say(f"[finetune=auto] the race overrules the rule: {decision.strategy} -> {strategy}")
    record["strategy"] = strategy
    _say(f"[finetune=auto] running finetune={strategy}")

    @rank_zero_only
    def save() -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        recorded.write_text(json.dumps(record, indent=2) + "\n")

    save()
    return compose_with_finetune(cfg, strategy)
