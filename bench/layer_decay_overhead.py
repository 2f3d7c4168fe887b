"""Step time with layer-wise param groups (2 per layer group + head) vs two param groups.

Same model, same data, same AdamW hyperparameters; only the partition of the parameters into
param groups differs: "two" = decay / no-decay, "layerwise" = what LayerwiseLRDecay builds
(one decay and one no-decay group per timm layer group plus the head). Repeats alternate; the
median ratio of step times is printed.

    python bench/layer_decay_overhead.py --model resnet50 --size 128 --batch 16 --iters 5 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
from torch import nn

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


def timed(model, opt, x, y, iters: int, device) -> float:
    def step():
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=10).to(dev)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    two, lw = make_opt(model, False, None), make_opt(model, True, None)
    print(f"torch {torch.__version__} device={dev} model={args.model} param groups: two={len(two.param_groups)} "
          f"layerwise={len(lw.param_groups)} ({[g['name'] for g in lw.param_groups]})")
    t_two, t_lw = [], []
    for _ in range(args.repeats):
        t_two.append(timed(model, two, x, y, args.iters, dev))
        t_lw.append(timed(model, lw, x, y, args.iters, dev))
    ratios = [b / a for a, b in zip(t_two, t_lw)]
    print(f"two groups  s/step: {[round(v, 4) for v in t_two]}")
    print(f"layerwise   s/step: {[round(v, 4) for v in t_lw]}")
    print(f"ratio layerwise/two per repeat: {[round(r, 4) for r in ratios]}  median: {statistics.median(ratios):.4f}")


if __name__ == "__main__":
    main()
