"""Head-only phase: naive requires_grad=False vs tl_lightning's frozen trunk, side by side.

naive:    trunk parameters requires_grad=False, whole model in train mode (BatchNorm computes
          batch statistics and updates its running statistics), trunk called normally.
ours:     what GradualUnfreezing + TransferClassifier do: trunk frozen, its BatchNorm in eval
          mode, the trunk call wrapped in tl_lightning.freezing.no_grad_if_frozen; same memory
          layout as naive, so this ratio is what freezing correctly buys.
ours+cl:  the same in channels_last memory format (TransferClassifier's default for image
          backbones); this ratio is what a user of the library gets over the naive loop.
All train the same linear head with AdamW. Single steps of the variants alternate (the order
rotates every round), so machine-load drift hits all alike; median per-round ratios are printed.

    python bench/frozen_trunk.py --model resnet50 --size 224 --batch 32 --rounds 12
"""

from __future__ import annotations

import argparse
import copy
import statistics

import timm
import torch
from torch import nn

from _side_by_side import alternate
from tl_lightning.freezing import no_grad_if_frozen
from tl_lightning.freezing import set_norm_eval


def make_step(trunk: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor, ours: bool, dtype):
    head = copy.deepcopy(head)
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
    ap.add_argument("--rounds", type=int, default=12, help="rounds of one step per variant")
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
    trunk_cl = copy.deepcopy(trunk).to(memory_format=torch.channels_last)
    head = nn.Linear(trunk.num_features, 10).to(dev)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    x_cl = x.contiguous(memory_format=torch.channels_last)
    naive, ours, ours_cl = alternate(
        make_step(trunk, head, x, y, False, dtype),
        make_step(trunk, head, x, y, True, dtype),
        make_step(trunk_cl, head, x_cl, y, True, dtype),
        rounds=args.rounds,
        device=dev,
    )
    print(f"torch {torch.__version__} device={dev} model={args.model} size={args.size} batch={args.batch} "
          f"dtype={dtype} threads={torch.get_num_threads()} rounds={args.rounds}")
    for name, times in (("naive   (requires_grad=False, train-mode BN)", naive),
                        ("ours    (frozen BN eval + no_grad_if_frozen)", ours),
                        ("ours+cl (the same, channels_last)", ours_cl)):
        print(f"{name}: median {args.batch / statistics.median(times):.1f} img/s")
    for name, times in (("ours/naive", ours), ("ours+cl/naive", ours_cl)):
        ratios = [n / o for n, o in zip(naive, times)]
        print(f"per-round speed-up {name}: median {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")

if __name__ == "__main__":
    main()
