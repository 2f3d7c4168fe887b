"""Head-only phase: naive requires_grad=False vs tl_lightning's frozen trunk, side by side.

naive: trunk parameters requires_grad=False, whole model in train mode (BatchNorm computes batch
statistics and updates its running statistics), trunk called normally.
ours:  what GradualUnfreezing does: trunk frozen, its BatchNorm in eval mode, and the trunk call
wrapped in tl_lightning.callbacks.no_grad_if_frozen (what TransferClassifier should do).
Both train the same linear head with AdamW. Repeats alternate naive / ours; the median ratio is
printed.

    python bench/frozen_trunk.py --model resnet50 --size 224 --batch 32 --iters 5 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
from torch import nn

from tl_lightning.callbacks import no_grad_if_frozen
from tl_lightning.callbacks._freezing import set_norm_eval


def run(trunk: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int, ours: bool, dtype) -> float:
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    trunk.train()
    if ours:
        set_norm_eval(m for m in trunk.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    def step() -> None:
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            if ours:
                with no_grad_if_frozen(trunk):
                    feats = trunk(x)
            else:
                feats = trunk(x)
            loss = nn.functional.cross_entropy(head(feats.float()), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step()  # warm-up
    if x.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return iters * x.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    trunk = timm.create_model(args.model, pretrained=False, num_classes=0).to(dev)
    trunk.requires_grad_(False)
    if dev.type == "cuda":
        trunk = trunk.to(memory_format=torch.channels_last)
    head = nn.Linear(trunk.num_features, 10).to(dev)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    naive, ours = [], []
    for _ in range(args.repeats):
        naive.append(run(trunk, head, x, y, args.iters, False, dtype))
        ours.append(run(trunk, head, x, y, args.iters, True, dtype))
    ratios = [o / n for o, n in zip(ours, naive)]
    print(f"torch {torch.__version__} device={dev} model={args.model} size={args.size} batch={args.batch} "
          f"dtype={dtype} threads={torch.get_num_threads()}")
    print(f"naive img/s: {[round(v, 1) for v in naive]}")
    print(f"ours  img/s: {[round(v, 1) for v in ours]}")
    print(f"ratio ours/naive per repeat: {[round(r, 3) for r in ratios]}  median: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
