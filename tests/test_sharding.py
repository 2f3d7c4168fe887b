"""Sharded training (FSDP2 through ModelParallelStrategy): the shard units, the refusals, and on 2 CPU
processes (gloo) a run through two unfreezes equal to a 1-process run, an exact resume from a sharded
checkpoint, and its conversion to a plain one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import _fsdp_script
import pytest
import torch
import torch.distributed as dist

from tl_lightning import GradualUnfreezing, TransferClassifier
from tl_lightning.errors import CheckpointError, ConfigurationError
from tl_lightning.sharding import (
    FSDP2Strategy,
    _main,
    check_sharded_unfreezing,
    consolidate_checkpoint,
    is_sharded,
    shard_classifier,
)

SCRIPT = Path(__file__).with_name("_fsdp_script.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_process_group():
    """A world of one process (gloo), so fully_shard runs inside the test process."""
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",))
    finally:
        dist.destroy_process_group()


def test_configure_model_is_a_no_op_without_a_device_mesh() -> None:
    model = TransferClassifier("timm:test_vit", num_classes=3, pretrained=False)
    before = [id(p) for p in model.parameters()]
    model.configure_model()
    assert [id(p) for p in model.parameters()] == before
    assert not is_sharded(model.backbone)


def test_one_unit_per_layer_group_plus_root_and_head(one_process_group) -> None:
    from torch.distributed.tensor import DTensor

    model = TransferClassifier("timm:test_vit", num_classes=3, pretrained=False)
    x = torch.randn(2, 3, 32, 32)
    expected = model(x).detach()
    names = [g.name for g in model.layer_groups()]
    model._device_mesh = one_process_group
    model.configure_model()
    units = model.shard_units
    assert [u.name for u in units] == [*names, "backbone", "head"]
    # every unit holds the parameters of one layer group only: frozen or trainable as a whole
    assert all(len(u.groups) == 1 for u in units)
    assert units[-2].groups == ("stem",), "the root unit holds the ViT's bare cls_token / pos_embed"
    assert sum(u.numel for u in units) == sum(p.numel() for p in model.parameters())
    assert all(isinstance(p, DTensor) for p in model.parameters())
    # the groups are looked up again: they hold the sharded parameters
    current = {id(p) for p in model.parameters()}
    assert all(id(p) in current for g in model.layer_groups() for p in g.parameters())
    torch.testing.assert_close(model(x), expected)
    model.configure_model()  # again for validate / test: nothing happens
    assert model.shard_units is units


def test_channels_last_image_backbone_is_made_contiguous(one_process_group) -> None:
    model = TransferClassifier("timm:test_resnet", num_classes=3, pretrained=False)
    assert any(not p.is_contiguous() for p in model.parameters())
    model._device_mesh = one_process_group
    model.configure_model()
    assert [u.name for u in model.shard_units][-2:] == ["backbone", "head"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_tensor_parallel_mesh_is_refused() -> None:
    model = TransferClassifier("timm:test_vit", num_classes=3, pretrained=False)
    tp = SimpleNamespace(size=lambda: 2)
    model._device_mesh = type("Mesh", (), {"mesh_dim_names": ("data_parallel", "tensor_parallel"),
                                           "__getitem__": lambda self, k: tp})()
    with pytest.raises(ConfigurationError, match="tensor_parallel size 2.*FSDP2Strategy"):
        shard_classifier(model)


def test_fsdp2_strategy_mixed_precision_choice() -> None:
    with pytest.raises(ConfigurationError, match="mixed_precision"):
        FSDP2Strategy(mixed_precision="bf17")  # type: ignore[arg-type]
    strategy = FSDP2Strategy()
    strategy.parallel_devices = [torch.device("cpu")]
    assert strategy.param_dtype() is None, "auto: full precision on CPU"
    bf16 = FSDP2Strategy(mixed_precision="bf16")
    bf16.parallel_devices = [torch.device("cpu")]
    assert bf16.param_dtype() is torch.bfloat16


def test_unfreezing_under_other_multi_process_strategies_is_refused() -> None:
    module = torch.nn.Linear(2, 2)
    trainer = SimpleNamespace(strategy=SimpleNamespace())
    with pytest.raises(ConfigurationError, match="SimpleNamespace.*strategy=ddp, or trainer=fsdp"):
        check_sharded_unfreezing(trainer, module, unfreezes=True)
    check_sharded_unfreezing(trainer, module, unfreezes=False)  # feature extraction: nothing to go wrong


def test_gradual_unfreezing_refuses_a_non_ddp_multi_process_strategy() -> None:
    model = TransferClassifier("timm:test_vit", num_classes=3, pretrained=False)
    cb = GradualUnfreezing(unfreeze_every=1)
    cb.resolve(model)
    optimizer = model.configure_optimizers()["optimizer"]
    trainer = SimpleNamespace(optimizers=[optimizer], strategy=SimpleNamespace(model=model), world_size=2, callbacks=[cb])
    cb._trainer = trainer
    with pytest.raises(ConfigurationError, match="unfreezes layer groups during training"):
        cb.on_fit_start(trainer, model)


def test_restore_best_is_refused_on_a_sharded_model(one_process_group) -> None:
    model = TransferClassifier("timm:test_vit", num_classes=3, pretrained=False)
    model._device_mesh = one_process_group
    model.configure_model()
    with pytest.raises(ConfigurationError, match=r"restore_best=True\) is not supported on a sharded model"):
        check_sharded_unfreezing(SimpleNamespace(strategy=FSDP2Strategy()), model, unfreezes=True, restore_best=True)
    check_sharded_unfreezing(SimpleNamespace(strategy=FSDP2Strategy()), model, unfreezes=True)


def test_finetune_callbacks_without_sharding_support_are_refused() -> None:
    from tl_lightning.sharding import _refuse_unsupported_callbacks

    regularizer = type("Regularizer", (), {"__module__": "tl_lightning.finetune.regularizer"})
    with pytest.raises(ConfigurationError, match="Regularizer does not support sharded training.*trainer=ddp"):
        _refuse_unsupported_callbacks([regularizer()], "FSDP2Strategy")
    regularizer.supports_sharding = True
    _refuse_unsupported_callbacks([regularizer(), GradualUnfreezing()], "FSDP2Strategy")


def test_consolidate_refuses_what_is_not_a_sharded_folder(tmp_path: Path) -> None:
    (tmp_path / "plain.ckpt").write_bytes(b"x")
    for path in (tmp_path / "plain.ckpt", tmp_path / "missing"):
        with pytest.raises(CheckpointError, match="not a sharded checkpoint folder"):
            consolidate_checkpoint(path, tmp_path / "out.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        _main([str(tmp_path / "missing"), str(tmp_path / "out.ckpt")])
    assert exit_info.value.code == 1


# ------------------------------------------------------------------ 2 processes
def _run_sharded(out: Path, resume: Path | None = None) -> dict[str, torch.Tensor]:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(SCRIPT), "2", str(out), *([str(resume)] if resume else [])]
    result = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    saved = torch.load(out / "weights.pt")
    assert saved["units"][-2:] == ["backbone", "head"]
    return saved["state"]


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fsdp2")
    _run_sharded(out)
    return out


@pytest.mark.slow
@pytest.mark.ddp
def test_sharded_run_through_unfreezes_equals_one_process(sharded_run: Path, tmp_path: Path) -> None:
    two = torch.load(sharded_run / "weights.pt")["state"]
    model, _ = _fsdp_script.build()
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    one = _fsdp_script.run(1, tmp_path)
    assert one is not None and set(one) == set(two)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    # the groups unfrozen at epochs 1 and 2 trained (were they not, both runs would still agree)
    for key in ("backbone.model.blocks.5.mlp.fc2.weight", "backbone.model.blocks.0.attn.qkv.weight",
                "backbone.model.pos_embed"):
        assert not torch.allclose(one[key], initial[key]), key


@pytest.mark.slow
@pytest.mark.ddp
def test_sharded_checkpoint_resumes_exactly(sharded_run: Path, tmp_path: Path) -> None:
    """Resumed between the two unfreezes: the optimizer state of the groups unfrozen then is kept."""
    uninterrupted = torch.load(sharded_run / "weights.pt")["state"]
    resumed = _run_sharded(tmp_path, resume=sharded_run / "checkpoints" / "epoch=1.ckpt")
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
@pytest.mark.ddp
def test_sharded_checkpoint_converts_to_a_plain_one(
    sharded_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = sharded_run / "checkpoints" / "epoch=2.ckpt"
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".distcp") == ["__0_0.distcp", "__1_0.distcp"]
    out = tmp_path / "plain.ckpt"
    _main([str(folder), str(out)])  # python -m tl_lightning.sharding <folder> <file>
    assert str(out) in capsys.readouterr().out
    model = TransferClassifier.load_from_checkpoint(out)
    weights = torch.load(sharded_run / "weights.pt")["state"]
    state = model.state_dict()
    assert set(state) == set(weights)
    for key, value in weights.items():
        torch.testing.assert_close(state[key].float(), value, rtol=0, atol=0, msg=key)
    assert model.labels == ["0", "1", "2"]


@pytest.mark.slow
@pytest.mark.ddp
def test_sharded_checkpoint_reads_for_resume_and_names_the_conversion_for_loading(sharded_run: Path) -> None:
    from tl_lightning.modules._checkpoint import read_checkpoint

    folder = sharded_run / "checkpoints" / "epoch=1.ckpt"
    meta = read_checkpoint(folder, sharded_ok=True)  # what tl-train --resume reads before the strategy loads
    assert meta["global_step"] == 4 and meta["state_dict"] == {} and meta["tl_lightning"]["labels"] == ["0", "1", "2"]
    with pytest.raises(CheckpointError, match=r"sharded checkpoint.*python -m tl_lightning.sharding"):
        TransferClassifier.load_from_checkpoint(folder)


def test_l2sp_and_lora_are_refused_under_fsdp2_until_they_support_it() -> None:
    from tl_lightning.sharding import _refuse_unsupported_callbacks

    finetune = pytest.importorskip("tl_lightning.finetune")
    for callback in (finetune.L2SP(), finetune.LoRA()):
        with pytest.raises(ConfigurationError, match=f"{type(callback).__name__} does not support sharded training"):
            _refuse_unsupported_callbacks([callback], "FSDP2Strategy")
