"""GPU check: bf16 fine-tuning with the library against hand-written PyTorch loops, in one run.

For a timm CNN (ResNet-50), a ViT (ViT-B/16) and a BERT-size encoder (BERT-base), random init (no
downloads), and each fine-tuning recipe (head only, top 2 groups, full, layer-wise LR decay, and
L2-SP / LoRA where installed), it measures:

- the library's training step (``TransferClassifier`` + its callbacks under ``Trainer.fit``)
  against a hand-written loop doing the same math on the same model and batch (forward, loss,
  backward, optimizer step under the same autocast): goal within 2%;
- peak GPU memory of each;
- the head-only phase against the naive loop (``requires_grad=False``, train-mode BatchNorm, no
  ``no_grad``) on ResNet-50. Anchor quoted in the issue (H200, ResNet-50 bf16): 15.4k img/s with
  the frozen trunk in eval mode under no_grad vs 10.1k naive;
- a sharded run (``FSDP2Strategy``, full fine-tuning) on every GPU present.

Every batch is already on the device and is reused, so data loading is not measured. It prints
tables (``--markdown`` for BENCHMARKS.md, with the GPU named) and takes under 5 minutes on one GPU:

    python bench/gpu_check.py                         # a GPU machine
    python bench/gpu_check.py --json gpu_check.json --markdown
    python bench/gpu_check.py --device cpu --quick    # smoke test: tiny models, a few steps, fp32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import string
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

SHARDED_TAG = "GPU_CHECK_SHARDED "


# ------------------------------------------------------------------ models and batches
@dataclass(frozen=True)
class ModelSpec:
    label: str
    backbone: str  # registry name; "hf:{bert}" is filled with a local random BERT folder
    kind: str  # "image" or "text"
    batch: int
    size: int  # image side or sequence length


FULL = [
    ModelSpec("ResNet-50 (timm)", "timm:resnet50", "image", 128, 224),
    ModelSpec("ViT-B/16 (timm)", "timm:vit_base_patch16_224", "image", 64, 224),
    ModelSpec("BERT-base encoder", "hf:{bert}", "text", 64, 128),
]
QUICK = [
    ModelSpec("tiny ResNet (timm test_resnet)", "timm:test_resnet", "image", 8, 32),
    ModelSpec("tiny ViT (timm test_vit)", "timm:test_vit", "image", 8, 32),
    ModelSpec("tiny BERT (2 layers)", "hf:{bert}", "text", 8, 16),
]


def write_bert(folder: Path, quick: bool) -> Path:
    """A random BERT (base size, or 2 layers of 32 for --quick) with a small WordPiece vocab."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    cfg = BertConfig(vocab_size=len(vocab))
    if quick:
        cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(folder)
    return folder


def make_batch(spec: ModelSpec, device: torch.device, num_classes: int = 10) -> tuple[Any, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, num_classes, (spec.batch,), generator=g).to(device)
    if spec.kind == "image":
        return torch.randn(spec.batch, 3, spec.size, spec.size, generator=g).to(device), y
    ids = torch.randint(5, 40, (spec.batch, spec.size), generator=g).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, y


class RepeatBatch:
    """The same (device) batch ``n`` times: a loader Lightning accepts, with nothing to load."""

    def __init__(self, batch: Any, n: int) -> None:
        self.batch, self.n = batch, n

    def __iter__(self) -> Iterator[Any]:
        return (self.batch for _ in range(self.n))

    def __len__(self) -> int:
        return self.n


# ------------------------------------------------------------------ recipes
def recipes(spec: ModelSpec) -> dict[str, tuple[dict[str, Any], Callable[[], list[Any]]]]:
    """name -> (TransferClassifier kwargs, callbacks factory) for one model."""
    from tl_lightning.callbacks import GradualUnfreezing

    out: dict[str, tuple[dict[str, Any], Callable[[], list[Any]]]] = {
        "head only": ({}, lambda: [GradualUnfreezing.feature_extraction()]),
        "top 2 groups": ({}, lambda: [GradualUnfreezing.top_n(2)]),
        "full": ({}, lambda: []),
        "LLRD 0.75": ({"layer_decay": 0.75}, lambda: []),
    }
    with contextlib.suppress(ImportError):
        from tl_lightning.finetune import L2SP, LoRA

        out["L2-SP"] = ({}, lambda: [L2SP()])
        if "resnet" not in spec.backbone:  # LoRA adapts attention projections
            out["LoRA r=8"] = ({}, lambda: [LoRA()])
    return out


def build(spec: ModelSpec, bert: Path | None, kwargs: dict[str, Any], device: torch.device) -> Any:
    from tl_lightning import TransferClassifier

    torch.manual_seed(0)
    model = TransferClassifier(spec.backbone.format(bert=bert), num_classes=10, pretrained=False, scheduler=None, **kwargs)
    return model.to(device)


# ------------------------------------------------------------------ timing
@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Lightning's and the library's progress messages off (the tables are the output)."""
    import io
    import logging

    loggers = [logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "lightning.fabric", "tl_lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


@dataclass
class Measured:
    samples_per_s: float | None = None
    peak_mib: float | None = None
    error: str | None = None


def lightning_run(spec: ModelSpec, bert: Path | None, recipe: tuple, batch: Any, device: torch.device,
                  precision: str, warmup: int, steps: int) -> Measured:
    """The library: TransferClassifier + the recipe's callbacks under Trainer.fit."""
    import lightning as L

    kwargs, callbacks = recipe
    model = build(spec, bert, kwargs, device)
    timer: dict[str, float] = {}

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == warmup:
                sync(device)
                timer["t0"] = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == warmup + steps - 1:
                sync(device)
                timer["t1"] = time.perf_counter()

    trainer = L.Trainer(
        accelerator=device.type, devices=1, precision=precision, max_steps=warmup + steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, callbacks=[*callbacks(), StepTimer()],
    )
    reset_peak(device)
    trainer.fit(model, train_dataloaders=RepeatBatch(batch, warmup + steps))
    return Measured(spec.batch * steps / (timer["t1"] - timer["t0"]), peak_mib(device))


def hand_step(model: Any, batch: Any, device: torch.device, dtype: torch.dtype, recipe: tuple) -> Callable[[], None]:
    """The same math without Lightning: the recipe's freezing, forward, loss, backward, optimizer step."""
    from tl_lightning.freezing import frozen_norm_modules, set_norm_eval

    _, callbacks = recipe
    norms: list[nn.Module] = []
    for cb in callbacks():
        if hasattr(cb, "resolve"):  # GradualUnfreezing: its initial freezing
            cb.resolve(model)
            targets = cb.targets
            frozen = [g for g in targets.groups if g.name not in cb.unfrozen_groups]
            norms = frozen_norm_modules(model, frozen)
    optimizer = model.configure_optimizers()["optimizer"]
    x, y = batch

    def step() -> None:
        model.train()
        set_norm_eval(norms)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def naive_head_step(model: Any, batch: Any, device: torch.device, dtype: torch.dtype) -> Callable[[], None]:
    """The head-only loop as usually written: requires_grad=False, whole model in train mode, no no_grad."""
    model.backbone.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=1e-3)
    x, y = batch
    if model._channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        model.train()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = nn.functional.cross_entropy(model.head(model.backbone(x)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def loop_run(step: Callable[[], None], n: int, device: torch.device, warmup: int, steps: int) -> Measured:
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return Measured(n * steps / (time.perf_counter() - t0), peak_mib(device))


# ------------------------------------------------------------------ sharded run
def sharded_worker(args: argparse.Namespace) -> None:
    """One process of the sharded run (Lightning starts the others with this command line)."""
    import lightning as L

    from tl_lightning.sharding import FSDP2Strategy

    device = torch.device(args.device)
    spec = next(s for s in (QUICK if args.quick else FULL) if s.label == args.model)
    bert = Path(args.bert) if args.bert else None
    model = build(spec, bert, {}, torch.device("cpu"))
    batch = make_batch(spec, device if device.type == "cpu" else torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))))
    timer: dict[str, float] = {}
    warmup, steps = args.warmup, args.steps

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == warmup:
                sync(device)
                timer["t0"] = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == warmup + steps - 1:
                sync(device)
                timer["t1"] = time.perf_counter()

    trainer = L.Trainer(
        accelerator=device.type, devices=args.devices, strategy=FSDP2Strategy(), precision="32-true",
        max_steps=warmup + steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[StepTimer()],
        use_distributed_sampler=False,
    )
    reset_peak(device)
    trainer.fit(model, train_dataloaders=RepeatBatch(batch, warmup + steps))
    if trainer.is_global_zero:
        result = {
            "devices": trainer.world_size,
            "samples_per_s": trainer.world_size * spec.batch * steps / (timer["t1"] - timer["t0"]),
            "peak_mib_rank0": peak_mib(device),
            "units": len(getattr(model, "shard_units", [])),
            "param_dtype": str(trainer.strategy.param_dtype()),
        }
        print(SHARDED_TAG + json.dumps(result), flush=True)


def sharded_run(args: argparse.Namespace, spec: ModelSpec, bert: Path | None) -> dict[str, Any]:
    devices = torch.cuda.device_count() if args.device == "cuda" else 1
    cmd = [sys.executable, os.path.abspath(__file__), "--sharded-worker", "--model", spec.label, "--device",
           args.device, "--devices", str(devices), "--warmup", str(args.warmup), "--steps", str(args.steps)]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--bert", str(bert)] if bert else []
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    for line in done.stdout.splitlines():
        if line.startswith(SHARDED_TAG):
            return {"model": spec.label, **json.loads(line[len(SHARDED_TAG):])}
    return {"model": spec.label, "devices": devices, "error": (done.stderr or done.stdout).strip().splitlines()[-1:]}


# ------------------------------------------------------------------ report
@dataclass
class Row:
    model: str
    recipe: str
    library: Measured = field(default_factory=Measured)
    hand: Measured = field(default_factory=Measured)

    @property
    def ratio(self) -> float | None:
        if self.library.samples_per_s and self.hand.samples_per_s:
            return self.library.samples_per_s / self.hand.samples_per_s
        return None


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def tables(rows: list[Row], head: dict[str, Any], sharded: dict[str, Any], markdown: bool) -> str:
    sep = " | "
    lines = []

    def table(header: list[str], body: list[list[str]]) -> None:
        if markdown:
            lines.append("| " + sep.join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines.extend("| " + sep.join(r) + " |" for r in body)
        else:
            widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
            lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
            lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body)
        lines.append("")

    table(
        ["model", "recipe", "library samples/s", "hand loop samples/s", "library / hand", "within 2%",
         "peak MiB library", "peak MiB hand"],
        [[r.model, r.recipe, fmt(r.library.samples_per_s), fmt(r.hand.samples_per_s), fmt(r.ratio, ".3f"),
          "-" if r.ratio is None else ("yes" if r.ratio >= 0.98 else "no"), fmt(r.library.peak_mib),
          fmt(r.hand.peak_mib)] if not r.library.error else [r.model, r.recipe, f"error: {r.library.error}", "", "", "", "", ""]
         for r in rows],
    )
    if head:
        table(["head-only phase", "naive img/s", "library img/s", "library / naive", "peak MiB naive", "peak MiB library"],
              [[head["model"], fmt(head["naive"]), fmt(head["library"]), fmt(head["ratio"], ".2f"),
                fmt(head.get("naive_peak")), fmt(head.get("library_peak"))]])
    if sharded:
        table(["sharded (FSDP2Strategy, full)", "devices", "samples/s", "peak MiB rank 0", "units", "param dtype"],
              [[sharded["model"], str(sharded.get("devices")), fmt(sharded.get("samples_per_s")),
                fmt(sharded.get("peak_mib_rank0")), str(sharded.get("units", "-")),
                sharded.get("param_dtype", str(sharded.get("error", "")))]])
    return "\n".join(lines)


def machine(device: torch.device) -> str:
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    import lightning
    import timm

    return f"{name}, torch {torch.__version__}, lightning {lightning.__version__}, timm {timm.__version__}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    ap.add_argument("--quick", action="store_true", help="tiny models, a few steps (a smoke test, on CPU too)")
    ap.add_argument("--warmup", type=int, default=None, help="steps before timing (default 10; --quick 1)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 30; --quick 2)")
    ap.add_argument("--models", default=None, help="comma-separated model labels to run (default all)")
    ap.add_argument("--recipes", default=None, help="comma-separated recipes to run (default all)")
    ap.add_argument("--no-sharded", action="store_true", help="skip the sharded run")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1 with --device cpu, which "
                    "keeps a shared machine's timings stable)")
    ap.add_argument("--json", default=None, help="write the results to this file")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables (for BENCHMARKS.md)")
    ap.add_argument("--sharded-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--bert", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 10)
    args.steps = args.steps if args.steps is not None else (2 if args.quick else 30)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no GPU is visible; use --device cpu --quick for the smoke test")
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = torch.get_num_threads()
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    try:
        if args.sharded_worker:
            sharded_worker(args)
            return 0
        return _check(args)
    finally:
        torch.set_num_threads(threads)


def _check(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    precision = "bf16-mixed" if dtype == torch.bfloat16 else "32-true"
    specs = QUICK if args.quick else FULL
    if args.models:
        wanted = {m.strip() for m in args.models.split(",")}
        specs = [s for s in specs if s.label in wanted]
    rows: list[Row] = []
    head: dict[str, Any] = {}
    sharded: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        bert = write_bert(Path(tmp) / "bert", args.quick) if any(s.kind == "text" for s in specs) else None
        for spec in specs:
            batch = make_batch(spec, device)
            chosen = recipes(spec)
            if args.recipes:
                chosen = {k: v for k, v in chosen.items() if k in {r.strip() for r in args.recipes.split(",")}}
            for name, recipe in chosen.items():
                row = Row(spec.label, name)
                try:
                    with quiet():
                        row.library = lightning_run(spec, bert, recipe, batch, device, precision, args.warmup,
                                                    args.steps)
                        if name not in ("L2-SP", "LoRA r=8"):  # their math has no plain-loop twin here
                            model = build(spec, bert, recipe[0], device)
                            reset_peak(device)
                            row.hand = loop_run(hand_step(model, batch, device, dtype, recipe), spec.batch, device,
                                                args.warmup, args.steps)
                            del model
                except Exception as err:  # noqa: BLE001 - one failing recipe must not hide the others
                    row.library = Measured(error=f"{type(err).__name__}: {str(err).splitlines()[0][:80]}")
                rows.append(row)
                print(f"  {spec.label:34s} {name:14s} library {fmt(row.library.samples_per_s):>8s}/s  "
                      f"hand {fmt(row.hand.samples_per_s):>8s}/s  {row.library.error or ''}", flush=True)
        cnn = specs[0]
        batch = make_batch(cnn, device)
        with quiet():
            model = build(cnn, bert, {}, device)
            reset_peak(device)
            naive = loop_run(naive_head_step(model, batch, device, dtype), cnn.batch, device, args.warmup, args.steps)
        library = next((r.library for r in rows if r.model == cnn.label and r.recipe == "head only"), Measured())
        head = {"model": cnn.label, "naive": naive.samples_per_s, "library": library.samples_per_s,
                "ratio": (library.samples_per_s or 0) / naive.samples_per_s, "naive_peak": naive.peak_mib,
                "library_peak": library.peak_mib}
        del model
        if not args.no_sharded:
            sharded = sharded_run(args, cnn, bert)
    seconds = time.perf_counter() - start
    header = f"GPU check on {machine(device)}; {dtype} autocast; {args.warmup} warm-up + {args.steps} timed steps; " \
             f"{seconds:.0f} s"
    print("\n" + header + "\n")
    print(tables(rows, head, sharded, args.markdown))
    if args.json:
        payload = {"machine": machine(device), "seconds": seconds, "dtype": str(dtype),
                   "rows": [{**asdict(r), "ratio": r.ratio} for r in rows], "head_only": head, "sharded": sharded}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    failed = [r for r in rows if r.library.error]
    return 1 if failed or sharded.get("error") else 0


if __name__ == "__main__":
    raise SystemExit(main())
