"""Sharded training (FSDP2) with one shard unit per layer group, plus the head.

FSDP2 (:func:`torch.distributed.fsdp.fully_shard`) keeps each parameter as a shard of a
``DTensor`` and all-gathers, frees and reduce-scatters the parameters of one *unit* (a module it
was applied to) together. Sharding each layer group as its own unit makes every unit uniformly
frozen or trainable, which is what transfer learning needs:

- a frozen unit gets no gradient, so nothing of it is reduce-scattered and its optimizer state
  stays empty: the head-only phase communicates only the head's gradients;
- unfreezing only flips ``requires_grad`` on the sharded parameters; FSDP2 copies the flag to the
  gathered parameter at every all-gather, so a group frozen when it was sharded trains once it is
  unfrozen (checked against a 1-process run in ``tests/test_sharding.py``);
- the parameters the groups' modules do not hold (a ViT's ``cls_token`` / ``pos_embed``) form the
  backbone's own root unit.

:func:`fully_shard` replaces every parameter by a new (sharded) ``Parameter`` object, so whatever
held the old objects must look them up again: :func:`shard_classifier` drops the backbone's cached
layer groups, and the fine-tuning callbacks resolve their targets again after
``configure_model``.

Use it through :class:`FSDP2Strategy` (``trainer=fsdp``): Lightning's ``ModelParallelStrategy``
set up for pure data parallelism (every process holds one shard; no tensor parallelism), with a
bf16 mixed-precision policy on GPUs. A sharded checkpoint is a folder (one file of shards per
process plus ``meta.pt``); :func:`consolidate_checkpoint` turns it into one plain file that
``TransferClassifier.load_from_checkpoint`` and ``tl-predict`` read.

Example:
    >>> from lightning.pytorch import Trainer
    >>> trainer = Trainer(accelerator="gpu", devices=4, strategy=FSDP2Strategy())  # doctest: +SKIP
    >>> trainer.fit(TransferClassifier("timm:vit_base_patch16_224", num_classes=10), dm)  # doctest: +SKIP
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from typing_extensions import override

from tl_lightning._checks import check_choice
from tl_lightning.backbones._base import LayerGroup
from tl_lightning.errors import CheckpointError, ConfigurationError

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import MixedPrecisionPolicy

__all__ = [
    "FSDP2Strategy",
    "ShardUnit",
    "check_sharded_unfreezing",
    "consolidate_checkpoint",
    "is_sharded",
    "shard_classifier",
    "shard_layer_groups",
]

MixedPrecision = Literal["auto", "bf16", "fp16", "none"]
_MIXED = ("auto", "bf16", "fp16", "none")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ShardUnit:
    """One FSDP2 unit: the layer group(s) whose parameters it holds.

    Attributes:
        name: The layer group's name, ``"head"``, or ``"backbone"`` for the root unit.
        modules: Qualified names of the modules ``fully_shard`` was applied to.
        groups: Names of the layer groups with parameters in this unit.
        numel: Scalar parameters in the unit.
    """

    name: str
    modules: tuple[str, ...]
    groups: tuple[str, ...]
    numel: int


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` for fully sharded data parallelism (FSDP2).

    Every process of every node is one data-parallel replica holding one shard of each
    parameter (``data_parallel_size`` = world size, no tensor parallelism; the parent's
    ``"auto"`` would put a node's processes in a tensor-parallel group instead). The module
    applies ``fully_shard`` in ``configure_model``: :class:`~tl_lightning.TransferClassifier`
    does, one unit per layer group plus the head (:func:`shard_classifier`).

    Args:
        mixed_precision: Parameter dtype of FSDP2's mixed-precision policy (gradients are
            reduced in float32): ``"auto"`` (bf16 on GPUs that support it, none on CPU),
            ``"bf16"``, ``"fp16"`` or ``"none"``. Keep ``trainer.precision=32-true``: the policy
            does the casting.
        reshard_after_forward: Free the gathered parameters after each unit's forward (less
            memory, one more all-gather in backward).
        save_distributed_checkpoint: Save checkpoints as folders of shards (each process writes
            its own); ``False`` gathers the full state on rank 0 into one file.
        process_group_backend: ``"nccl"`` / ``"gloo"``; default by device.
        timeout: Timeout of collective operations.
    """

    def __init__(
        self,
        mixed_precision: MixedPrecision = "auto",
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        check_choice("mixed_precision", mixed_precision, _MIXED)
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.mixed_precision: MixedPrecision = mixed_precision
        self.reshard_after_forward = bool(reshard_after_forward)

    @override
    def setup(self, trainer: Any) -> None:
        _refuse_unsupported_callbacks(trainer.callbacks, type(self).__name__)
        super().setup(trainer)

    @override
    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    @override
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        from lightning.fabric.strategies.model_parallel import _load_checkpoint
        from lightning.pytorch.trainer.states import TrainerFn

        path = Path(self.broadcast(checkpoint_path))
        module = self.lightning_module
        assert self.model is not None and module is not None
        trainer = module._trainer
        fitting = trainer is not None and trainer.state.fn == TrainerFn.FITTING
        # validate / test / predict after fit: the weights only (the optimizer of the fit may have
        # state for groups the checkpoint's optimizer had none for)
        optimizers = {f"optimizer_{i}": opt for i, opt in enumerate(self.optimizers)} if fitting else {}
        state: dict[str, Any] = {"state_dict": self.model, **optimizers}
        # The optimizer state is loaded into a structure built from the parameters that require grad
        # now, before the callbacks' state (what was unfrozen) is restored: make exactly the
        # parameters that had optimizer state when the checkpoint was saved trainable meanwhile, or
        # the state of the groups unfrozen then is dropped and the resumed run diverges.
        saved = _params_with_optimizer_state(path, self.model, len(optimizers))
        params = dict(self.model.named_parameters())
        before = {name: p.requires_grad for name, p in params.items()}
        try:
            if saved is not None:
                for name, p in params.items():
                    p.requires_grad_(name in saved)
            return _load_checkpoint(
                path=path, state=state, strict=module.strict_loading, optimizer_states_from_list=True,
                weights_only=weights_only,
            )
        finally:
            for name, p in params.items():
                p.requires_grad_(before[name])

    def param_dtype(self) -> torch.dtype | None:
        """The dtype parameters are gathered and computed in (``None``: their own)."""
        choice = self.mixed_precision
        if choice == "auto":
            device = self.root_device
            if device.type == "cuda" and torch.cuda.is_bf16_supported():
                return torch.bfloat16
            return None
        return _DTYPES.get(choice)


def _refuse_unsupported_callbacks(callbacks: Sequence[Any], strategy: str) -> None:
    """tl_lightning fine-tuning callbacks not (yet) checked on sharded models are refused, never run wrong.

    A callback declares support with a class attribute ``supports_sharding = True`` (it finds its
    parameters again after ``configure_model`` and keeps no per-rank shards in its checkpoint state).
    """
    for cb in callbacks:
        module = type(cb).__module__
        if module.startswith("tl_lightning.finetune") and not getattr(cb, "supports_sharding", False):
            raise ConfigurationError(
                f"{type(cb).__name__} does not support sharded training ({strategy}) yet: it holds parameters or "
                "reference weights that FSDP2 replaces by shards. Fix: train with DDP (trainer=ddp or "
                "trainer=ddp_sim), or drop the callback"
            )


def _params_with_optimizer_state(path: Path, module: nn.Module, n_optimizers: int) -> set[str] | None:
    """Names of the parameters with optimizer state in a checkpoint (``None``: no optimizer state saved)."""
    if not n_optimizers:
        return None
    names = [n for n, _ in module.named_parameters()]
    if path.is_dir():
        from torch.distributed.checkpoint import FileSystemReader

        keys = list(FileSystemReader(path).read_metadata().state_dict_metadata)
        prefixes = tuple(f"optimizer_{i}.state." for i in range(n_optimizers))
        stated = [k for k in keys if k.startswith(prefixes)]
        if not stated:
            return None
        return {n for n in names if any(k.split(".state.", 1)[1].startswith(n + ".") for k in stated)}
    from lightning.fabric.strategies.model_parallel import _rekey_optimizer_state_if_needed

    checkpoint = torch.load(path, mmap=True, map_location="cpu", weights_only=False)
    found: set[str] = set()
    for state in checkpoint.get("optimizer_states", [])[:n_optimizers]:
        if state.get("state"):
            found |= {str(k) for k in _rekey_optimizer_state_if_needed(state, module)["state"]}
    return found or None


def is_sharded(module: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``module`` (it is an FSDP2 ``FSDPModule``)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _policy(param_dtype: torch.dtype | None, output_dtype: torch.dtype | None = None) -> MixedPrecisionPolicy:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if param_dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, output_dtype=output_dtype)


def _inside(name: str, ancestor: str) -> bool:
    return ancestor == "" or name.startswith(ancestor + ".")


def _inner_first(
    planned: list[tuple[str, list[tuple[str, nn.Module]]]],
) -> list[tuple[str, list[tuple[str, nn.Module]]]]:
    """Order units so one nested in another is sharded first (FSDP2 works bottom-up); else keep the order."""
    left = list(planned)
    ordered = []
    while left:
        for i, (_, mods) in enumerate(left):
            # ready when no other pending unit has a module inside one of this unit's modules
            if not any(_inside(n, o) for j, (_, other) in enumerate(left) if j != i for n, _ in other for o, _ in mods):
                ordered.append(left.pop(i))
                break
        else:  # pragma: no cover - groups with modules nested both ways cannot be built
            raise ConfigurationError(f"layer groups {[g for g, _ in left]} nest in each other; they cannot be sharded apart")
    return ordered


def shard_layer_groups(
    root: nn.Module,
    groups: Sequence[LayerGroup],
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
    root_name: str = "backbone",
) -> list[ShardUnit]:
    """Apply ``fully_shard`` to each layer group's modules (one unit per group), then to ``root``.

    Works on any module whose layer groups were built from it (``LayerGroup.modules`` names are
    relative to ``root``): a :class:`~tl_lightning.backbones.Backbone` or a user's own network.
    The parameters no group module holds (bare parameters) are sharded with ``root``.

    Args:
        root: The module the groups cover.
        groups: Its layer groups (input -> output).
        mesh: The 1-d data-parallel device mesh.
        param_dtype: Mixed-precision parameter dtype (gradients reduced in float32), or ``None``.
        reshard_after_forward: See :class:`FSDP2Strategy`.
        root_name: Name of the root unit in the returned list.

    Returns:
        The units, innermost first, the root unit last.

    Raises:
        ConfigurationError: ``root`` is sharded already, or a group's module is shared with
            another group (it cannot be in two units).
    """
    from torch.distributed.fsdp import fully_shard

    if is_sharded(root):
        raise ConfigurationError(f"{type(root).__name__} is sharded already; shard_layer_groups runs once per model")
    owner: dict[int, str] = {id(p): g.name for g in groups for p in g.parameters()}
    names = {id(m): n for n, m in root.named_modules()}
    seen: dict[int, str] = {}
    planned: list[tuple[str, list[tuple[str, nn.Module]]]] = []  # (group, its outermost modules)
    for g in groups:
        mods: list[tuple[str, nn.Module]] = []
        for mname, mod in g.modules:
            if mod is root or not any(True for _ in mod.parameters()):
                continue
            if id(mod) in seen and seen[id(mod)] != g.name:
                raise ConfigurationError(
                    f"module {mname!r} belongs to layer groups {seen[id(mod)]!r} and {g.name!r}; a module can be in "
                    "one shard unit only. Fix: give each layer group its own modules (groups=...)"
                )
            seen[id(mod)] = g.name
            mods.append((names.get(id(mod), mname), mod))
        # a module nested in another module of the same group is covered by it
        outer = [(n, m) for n, m in mods if not any(_inside(n, o) for o, _ in mods if o != n)]
        if outer:
            planned.append((g.name, outer))
    units: list[ShardUnit] = []
    policy = _policy(param_dtype)
    for gname, mods in _inner_first(planned):
        held = [p for _, m in mods for p in m.parameters() if not _is_dtensor(p)]
        target = [m for _, m in mods] if len(mods) > 1 else mods[0][1]
        fully_shard(target, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
        units.append(ShardUnit(gname, tuple(n for n, _ in mods), tuple(sorted({owner.get(id(p), "?") for p in held})),
                               sum(p.numel() for p in held)))
    rest = [p for p in root.parameters() if not _is_dtensor(p)]
    fully_shard(root, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    units.append(ShardUnit(root_name, ("",), tuple(sorted({owner.get(id(p), "?") for p in rest})),
                           sum(p.numel() for p in rest)))
    return units


def _is_dtensor(p: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(p, DTensor)


def _data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ConfigurationError(
            f"TransferClassifier shards with FSDP2 over data parallelism only, but the device mesh has "
            f"tensor_parallel size {mesh['tensor_parallel'].size()}. Fix: use tl_lightning.sharding.FSDP2Strategy "
            "(trainer=fsdp), or ModelParallelStrategy(tensor_parallel_size=1, data_parallel_size=<world size>)"
        )
    return mesh["data_parallel"] if "data_parallel" in names else mesh


def shard_classifier(module: Any) -> list[ShardUnit]:
    """Shard a :class:`~tl_lightning.TransferClassifier` under ``ModelParallelStrategy`` (its ``configure_model``).

    One FSDP2 unit per backbone layer group, the backbone's root unit (bare parameters), and the
    head (its output cast back to float32 under a mixed-precision policy, so the loss is computed
    in float32). FSDP2 shards contiguous parameters only, so an image backbone leaves
    ``channels_last`` first. A no-op (returns ``[]``) without a device mesh (any other strategy) and when the
    model is sharded already (``configure_model`` runs again for validate / test after fit).

    Returns:
        The units created.
    """
    mesh = getattr(module, "_device_mesh", None)
    if mesh is None or is_sharded(module.backbone):
        return []
    from torch.distributed.fsdp import fully_shard

    dp_mesh = _data_parallel_mesh(mesh)
    trainer = getattr(module, "_trainer", None)
    strategy = getattr(trainer, "strategy", None)
    param_dtype = strategy.param_dtype() if isinstance(strategy, FSDP2Strategy) else None
    reshard = strategy.reshard_after_forward if isinstance(strategy, FSDP2Strategy) else True
    if getattr(module, "_channels_last", False):
        # FSDP2 shards contiguous parameters only; the inputs then stay contiguous too
        module.backbone.to(memory_format=torch.contiguous_format)
        module._channels_last = False
    groups = module.backbone.layer_groups()
    units = shard_layer_groups(
        module.backbone, groups, dp_mesh, param_dtype=param_dtype, reshard_after_forward=reshard, root_name="backbone"
    )
    head_numel = sum(p.numel() for p in module.head.parameters())
    fully_shard(module.head, mesh=dp_mesh, mp_policy=_policy(param_dtype, output_dtype=torch.float32 if param_dtype else None),
                reshard_after_forward=reshard)
    units.append(ShardUnit("head", ("head",), ("head",), head_numel))
    # the cached groups hold the replaced (unsharded) Parameter objects
    module.backbone.__dict__.pop("_layer_groups_cache", None)
    module.shard_units = units
    return units


def check_sharded_unfreezing(trainer: Any, pl_module: nn.Module, *, unfreezes: bool, restore_best: bool = False) -> None:
    """Refuse multi-process unfreezing that would silently train wrong (called by the fine-tuning callbacks).

    Under DDP the callbacks average the gradients DDP's reducer misses; under FSDP2 (a model
    sharded with ``fully_shard``) every gradient is reduce-scattered, frozen or not at sharding
    time. Other multi-process strategies (FSDP1's flat parameters, DeepSpeed) fix what trains when
    they wrap the model, so groups unfrozen later would not train, or not in sync: refused. So is
    ``restore_best`` under FSDP2: the kept best weights are each process's own shards, and the
    checkpoint (written by rank 0) would give rank 0's shards to every process on resume.

    Raises:
        ConfigurationError: With the strategy named and the fix.
    """
    name = type(trainer.strategy).__name__
    sharded = any(is_sharded(m) for m in pl_module.modules())
    if sharded and restore_best:
        raise ConfigurationError(
            f"GradualUnfreezing(restore_best=True) is not supported on a sharded model ({name}): the best weights "
            "would be kept per shard and a resumed run would restore rank 0's shards everywhere. Fix: set "
            "restore_best=False, or train with DDP (trainer=ddp)"
        )
    if unfreezes and not sharded:
        raise ConfigurationError(
            f"GradualUnfreezing unfreezes layer groups during training, which stays correct under DDP strategies and "
            f"FSDP2 only; {name} fixes what trains when it wraps the model, so the groups unfrozen later would not "
            "train or drift apart across processes. Fix: use strategy=ddp, or trainer=fsdp "
            "(tl_lightning.sharding.FSDP2Strategy)"
        )


def consolidate_checkpoint(folder: str | Path, output: str | Path) -> Path:
    """Turn a sharded checkpoint folder into one plain Lightning checkpoint file.

    The result holds the full (unsharded) ``state_dict`` and everything else the folder's
    ``meta.pt`` holds (hyperparameters, callback states, labels, preprocessing), so
    ``TransferClassifier.load_from_checkpoint(output)`` and ``tl-predict`` read it. The optimizer
    state is left out (it is for resuming, and a sharded run resumes from the folder).

    Args:
        folder: A checkpoint saved by :class:`FSDP2Strategy` (``save_distributed_checkpoint=True``).
        output: The file to write.

    Returns:
        ``output`` as a ``Path``.

    Example:
        >>> consolidate_checkpoint("run/checkpoints/last.ckpt", "run/last_full.ckpt")  # doctest: +SKIP
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    src = Path(folder)
    meta_file = src / "meta.pt"
    if not src.is_dir() or not meta_file.is_file() or not (src / ".metadata").is_file():
        raise CheckpointError(
            f"{str(src)!r} is not a sharded checkpoint folder (it needs meta.pt and .metadata). Fix: pass the "
            "folder FSDP2Strategy saved, e.g. run/checkpoints/last.ckpt"
        )
    state: dict[str, Any] = {}
    _load_state_dict(state, storage_reader=FileSystemReader(src), planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    checkpoint = torch.load(meta_file, map_location="cpu", weights_only=False)
    checkpoint["state_dict"] = {k: v for k, v in state.get("state_dict", {}).items()}
    checkpoint.pop("optimizer_states", None)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out)
    return out


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tl_lightning.sharding",
        description="Turn a sharded checkpoint folder (trainer=fsdp) into one plain checkpoint file.",
    )
    parser.add_argument("folder", help="the sharded checkpoint, e.g. <run>/checkpoints/last.ckpt")
    parser.add_argument("output", help="the plain checkpoint file to write")
    args = parser.parse_args(argv)
    try:
        out = consolidate_checkpoint(args.folder, args.output)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"wrote {out}")


if __name__ == "__main__":
    _main()
