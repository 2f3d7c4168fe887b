"""``tl-rank``: which pretrained backbone for this data? Transferability scores on cached frozen features.

Examples:
    tl-rank 'candidates=[timm_efficientnet_lite0_asset,timm_efficientnet_lite1_asset]' data.root=/data/digits
    tl-rank 'candidates=[hf_minilm,{config: hf_minilm, pretrained: false}]' data=rotten_tomatoes
    tl-rank 'candidates=[timm:resnet50,timm:convnext_tiny]' data.root=/data/pets trainer=gpu data.cache_dir=~/.cache/tl

One run (``conf/rank.yaml``): build the data module (tl-train's ``data`` group) -> for each
candidate (a registry name, a backbone config of ``conf/backbone/``, or a mapping; see
:mod:`tl_lightning.advisor.candidates`): build it, compute or read its frozen features of the
train and val splits through the cached-feature path (eval mode, the trainer's device and
precision) and, where it has one, its source classifier's outputs -> score and rank them
(:func:`~tl_lightning.transferability.rank_candidates`: LogME, LEEP, NCE, H-score, linear probe)
-> write ``rank.md``, ``rank.json`` and ``rank.png`` into the run folder, print the table and
``ranking cost X s vs estimated Y s to fine-tune every candidate (Z%)``, and warn when that is
over the 5% budget.

The features are cached under ``data.cache_dir`` (default: ``feature_cache/`` in the run
folder): a shared folder lets a later ``tl-train finetune=feature_extraction`` (or ``lp_ft``) run
of the winner read them back. A bad option or candidate prints one line and exits with status 1
(``HYDRA_FULL_ERROR=1`` keeps the traceback). :func:`rank` is the same run as a function.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from tl_lightning.cli._config import config_dir, prepare_omegaconf
from tl_lightning.cli._errors import config_step, exit_on_user_error
from tl_lightning.errors import ConfigurationError

__all__ = ["RankResult", "backbone_config", "main", "rank"]


@dataclass
class RankResult:
    """What a ``tl-rank`` run computed and wrote.

    Attributes:
        ranking: The :class:`~tl_lightning.transferability.Ranking`.
        output_dir: The run folder holding ``rank.md``, ``rank.json``, ``rank.png``.
        files: The files written.
        candidates: Per candidate label: registry name, pretrained, source classifier, cache reuse, seconds.
        seconds: Wall time of the whole run (data set-up included).
    """

    ranking: Any
    output_dir: Path
    files: list[Path] = field(default_factory=list)
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def cost_line(self) -> str:
        """``ranking cost X s vs estimated Y s to fine-tune every candidate (Z%)``."""
        cost = self.ranking.cost
        if cost.fine_tune_seconds is None:
            return f"ranking cost {cost.seconds:.1f} s (no fine-tuning estimate: a candidate has no forward timing)"
        return (
            f"ranking cost {cost.seconds:.1f} s vs estimated {cost.fine_tune_seconds:.1f} s to fine-tune every "
            f"candidate ({100 * cost.fraction:.1f}%)"
        )


def backbone_config(name: str) -> dict[str, Any]:
    """The resolved ``backbone/<name>.yaml`` config (``name``, ``pretrained``, ``weights``, ``kwargs``).

    Composed through Hydra, so configs in ``--config-dir`` / ``hydra.searchpath`` folders count.

    Raises:
        UnknownNameError: No backbone config of that name (the closest ones are named).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    from tl_lightning.advisor.candidates import unknown_backbone_config

    def compose_group() -> Any:
        try:
            return compose(config_name=None, overrides=[f"+backbone={name}"])
        except MissingConfigException:
            known = GlobalHydra.instance().config_loader().get_group_options("backbone")
            raise unknown_backbone_config(name, known) from None

    prepare_omegaconf()
    if GlobalHydra.instance().is_initialized():
        cfg = compose_group()
    else:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            cfg = compose_group()
    return OmegaConf.to_container(cfg.backbone, resolve=True)  # type: ignore[return-value]


def _check_options(cfg: DictConfig) -> None:
    from tl_lightning._checks import check_choice, check_int
    from tl_lightning.transferability import SCORE_NAMES

    scores = cfg.scores
    if not OmegaConf.is_list(scores) or not scores:
        raise ConfigurationError(f"scores must be a non-empty list of {list(SCORE_NAMES)}, got {scores!r}")
    for score in scores:
        check_choice("scores", score, SCORE_NAMES)
    check_choice("primary", cfg.primary, SCORE_NAMES)
    check_int(
        "fine_tune_epochs", cfg.fine_tune_epochs, low=1, hint="the epochs the fine-tuning estimate assumes"
    )
    if cfg.get("batch_size") is not None:
        check_int("batch_size", cfg.batch_size, low=1)
    if cfg.get("num_threads") is not None:
        check_int("num_threads", cfg.num_threads, low=1)


def _trainer(cfg: DictConfig) -> Any:
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[])
    if int(trainer.world_size) > 1:
        raise ConfigurationError(
            f"tl-rank runs in one process, but the trainer has {trainer.world_size} processes (devices x num_nodes). "
            "Fix: trainer.devices=1 (one forward pass per sample is all the ranking needs)"
        )
    return trainer


def rank(cfg: DictConfig) -> RankResult:
    """Rank ``cfg.candidates`` on ``cfg.data`` (the ``tl-rank`` run, see the module docstring).

    Args:
        cfg: A composed ``rank.yaml`` config; ``cfg.paths.output_dir`` must resolve (inside the
            app: the run folder).

    Returns:
        The :class:`RankResult` (its files are written, the table printed).
    """
    start = time.perf_counter()
    _check_options(cfg)
    if OmegaConf.is_missing(cfg, "candidates"):
        raise ConfigurationError(
            "candidates is required: tl-rank 'candidates=[timm_efficientnet_lite0_asset,{config: "
            "timm_efficientnet_lite0_asset, pretrained: false}]' data.root=<image folder>"
        )
    with _thread_limit(cfg.get("num_threads")):
        return _rank(cfg, start)


@contextlib.contextmanager
def _thread_limit(threads: int | None) -> Iterator[None]:
    """torch's threads, and numpy's BLAS threads when threadpoolctl is installed (the scores run in numpy)."""
    import torch

    if not threads:
        yield
        return
    torch.set_num_threads(int(threads))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=int(threads)):
        yield


def _rank(cfg: DictConfig, start: float) -> RankResult:
    import lightning as L

    from tl_lightning.advisor.candidates import candidate_features, parse_candidates
    from tl_lightning.transferability import COST_BUDGET, rank_candidates

    with config_step("candidates"):
        candidates = parse_candidates(cfg.candidates, backbone_config)
    L.seed_everything(cfg.seed, verbose=False)
    output_dir = Path(cfg.paths.output_dir)
    with config_step("trainer"):
        trainer = _trainer(cfg)
    with config_step("data"):
        datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
        labels = datamodule.labels

    results: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    for i, candidate in enumerate(candidates):
        with config_step(f"candidates[{i}] ({candidate.label})"):
            run = candidate_features(
                candidate,
                datamodule,
                trainer=trainer,
                batch_size=cfg.get("batch_size"),
                seed=int(cfg.seed),
            )
        results[candidate.label] = run.features
        info[candidate.label] = {
            "name": candidate.name,
            "pretrained": candidate.pretrained,
            "weights": candidate.weights,
            "source_classifier": run.source if run.features.source_probs is not None else None,
            "no_source_classifier": None if run.features.source_probs is not None else run.source,
            "features_reused": run.reused,
            "backbone_params": run.params,
            "seconds": run.seconds,
        }
        print(
            f"[tl-rank] {candidate.label}: features {'read from the cache' if run.reused else 'computed'} in "
            f"{run.seconds['features']:.1f} s; source classifier: {run.source}",
            flush=True,
        )
    with config_step("scores"):
        ranking = rank_candidates(
            results,
            primary=str(cfg.primary),
            scores=[str(s) for s in cfg.scores],
            fine_tune_epochs=int(cfg.fine_tune_epochs),
            seed=int(cfg.seed),
        )

    result = RankResult(ranking=ranking, output_dir=output_dir, candidates=info)
    first = next(iter(results.values()))
    header = (
        f"# tl-rank: {len(candidates)} candidates on {len(first.train_labels)} training samples, {len(labels)} classes"
        + (f", {len(first.val_labels)} validation samples" if first.val_labels is not None else "")
        + "\n\n"
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = header + ranking.to_markdown()
    (output_dir / "rank.md").write_text(markdown)
    result.seconds = time.perf_counter() - start
    payload = {**ranking.to_json(), "run": {"candidates": info, "labels": labels, "seconds": result.seconds}}
    (output_dir / "rank.json").write_text(json.dumps(payload, indent=2) + "\n")
    result.files = [output_dir / "rank.md", output_dir / "rank.json"]
    try:
        result.files.append(ranking.plot(output_dir / "rank.png"))
    except ConfigurationError as err:  # no matplotlib: the table and the JSON are still written
        print(f"[tl-rank] no chart: {err}", file=sys.stderr)

    print(markdown, flush=True)
    print(result.cost_line(), flush=True)
    fraction = ranking.cost.fraction
    if fraction is not None and fraction >= COST_BUDGET:
        print(
            f"warning: the ranking cost {100 * fraction:.1f}% of the fine-tuning estimate, over the "
            f"{100 * COST_BUDGET:g}% budget (small data or a short fine_tune_epochs make the estimate small; cached "
            "features make a second ranking cheap: data.cache_dir=<shared folder>)",
            file=sys.stderr,
            flush=True,
        )
    print(f"wrote {', '.join(str(p) for p in result.files)}", flush=True)
    return result


def _task(cfg: DictConfig) -> None:
    try:
        rank(cfg)
    except Exception as err:
        exit_on_user_error(err)
        raise


def main() -> None:
    """Console entry point of ``tl-rank`` (Hydra parses ``sys.argv``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    prepare_omegaconf()
    app = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="rank")(_task)
    app()


if __name__ == "__main__":
    main()
