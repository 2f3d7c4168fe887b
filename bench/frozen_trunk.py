"""Head-only phase: naive requires_grad=False vs tl_lightning's frozen trunk, side by side.

naive: trunk parameters requires_grad=False, whole model in train mode (BatchNorm computes batch
statistics and updates its running statistics), trunk called normally.
ours:  what GradualUnfreezing does: trunk frozen, its BatchNorm in eval mode, and the trunk call
wrapped in tl_lightning.callbacks.no_grad_if_frozen (what TransferClassifier should do).
Both train the same linear head with AdamW. Single steps alternate naive / ours (and who goes
first), so machine-load drift hits both; the median per-round speed-up is printed.

    python bench/frozen_trunk.py --model resnet50 --size 224 --batch 32 --rounds 12
"""

from __future__ import annotations

import argparse
import statistics

import timm
import torch
from torch import nn

from _side_by_side import alternate
from tl_lightning.callbacks import no_grad_if_frozen
from tl_lightning.callbacks._freezing import set_norm_eval


def make_step(trunk: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor, ours: bool, dtype):
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    bns = [m for m in trunk.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def step() -> None:
        trunk.train()  # what Lightning leaves the module in; ours then puts frozen BN in eval
        if ours:
            set_norm_eval(bns)
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

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=12, help="rounds of one naive + one ours step")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
    naive_step = make_step(trunk, head, x, y, False, dtype)
    ours_step = make_step(trunk, head, x, y, True, dtype)
    naive, ours = alternate(naive_step, ours_step, args.rounds, dev)
    ratios = [n / o for n, o in zip(naive, ours)]
    med_n, med_o = statistics.median(naive), statistics.median(ours)
    print(f"torch {torch.__version__} device={dev} model={args.model} size={args.size} batch={args.batch} "
          f"dtype={dtype} threads={torch.get_num_threads()} rounds={args.rounds}")
    print(f"naive (requires_grad=False, train-mode BN): median {args.batch / med_n:.1f} img/s")
    print(f"ours  (frozen BN eval + no_grad_if_frozen): median {args.batch / med_o:.1f} img/s")
    print(f"per-round speed-up ours/naive: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
