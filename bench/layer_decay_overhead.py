"""Step time with layer-wise param groups (2 per layer group + head) vs two param groups.

Same model, same data, same AdamW hyperparameters; only the partition of the parameters into
param groups differs: "two" = decay / no-decay, "layerwise" = what LayerwiseLRDecay builds
(one decay and one no-decay group per timm layer group plus the head). Single steps alternate
(and who goes first); the median per-round ratio of step times is printed.

    python bench/layer_decay_overhead.py --model resnet50 --size 128 --batch 16 --rounds 20
"""

from __future__ import annotations

import argparse
import statistics

import timm
import torch
from torch import nn

from _side_by_side import alternate
from tl_lightning.backbones._auto import layer_groups_for_module
from tl_lightning.optim._param_groups import is_no_decay_param
from tl_lightning.optim._repartition import apply_layerwise_lr_decay


def make_opt(model: nn.Module, layerwise: bool, foreach: bool | None) -> torch.optim.Optimizer:
    named = list(model.named_parameters())
    dec = [p for n, p in named if not is_no_decay_param(n, p)]
    nod = [p for n, p in named if is_no_decay_param(n, p)]
    opt = torch.optim.AdamW(
        [{"params": dec, "weight_decay": 0.05}, {"params": nod, "weight_decay": 0.0}], lr=1e-3, foreach=foreach
    )
    if layerwise:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, foreach=foreach)
        groups = layer_groups_for_module(model)
        apply_layerwise_lr_decay(opt, groups[:-1], decay=0.75, head=groups[-1].named_parameters())
    return opt


def make_step(model, opt, x, y):
    def step():
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=20, help="rounds of one step per partition")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=10).to(dev)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    two, lw = make_opt(model, False, None), make_opt(model, True, None)
    print(f"torch {torch.__version__} device={dev} model={args.model} param groups: two={len(two.param_groups)} "
          f"layerwise={len(lw.param_groups)} ({[g['name'] for g in lw.param_groups]})")
    step_two, step_lw = make_step(model, two, x, y), make_step(model, lw, x, y)
    t_two, t_lw = alternate(step_two, step_lw, rounds=args.rounds, device=dev)
    ratios = [b / a for a, b in zip(t_two, t_lw)]
    print(f"two groups: median {statistics.median(t_two) * 1e3:.1f} ms/step; "
          f"layerwise: median {statistics.median(t_lw) * 1e3:.1f} ms/step (threads={torch.get_num_threads()})")
    print(f"per-round step-time ratio layerwise/two: median {statistics.median(ratios):.4f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}); ratio of medians "
          f"{statistics.median(t_lw) / statistics.median(t_two):.4f}")


if __name__ == "__main__":
    main()
