"""LoRA through PEFT: family-declared targets, frozen base, adapter-only checkpoints with a base digest,
load_from_checkpoint from the pretrained source, merge for export, exact resume, DDP, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import timm
import torch
from test_callbacks_models import BoringFT, trainer
from torch.utils.data import DataLoader, TensorDataset

from tl_lightning import TransferClassifier
from tl_lightning.backbones import create_backbone
from tl_lightning.callbacks import GradualUnfreezing, LayerwiseLRDecay
from tl_lightning.callbacks import LoRA as ExportedLoRA
from tl_lightning.errors import CheckpointError, ConfigurationError
from tl_lightning.finetune import LoRA, add_lora, merge_lora
from tl_lightning.finetune.lora import ADAPTER_KEY, get_adapter


def images(n: int = 8, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 3)
    return DataLoader(data, batch_size=4)


def fit(model: pl.LightningModule, folder: Path, callbacks: list, data: Any = None, **kw: Any) -> pl.Trainer:
    kw.setdefault("max_epochs", 1)
    t = pl.Trainer(
        default_root_dir=folder, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, callbacks=callbacks, **kw,
    )
    t.fit(model, data)
    return t


@pytest.fixture()
def vit_weights(tmp_path: Path) -> Path:
    """A "pretrained" tiny ViT: random weights saved to a local file (nothing can be downloaded)."""
    torch.manual_seed(1)
    path = tmp_path / "vit_base.pth"
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), path)
    return path


def vit_classifier(weights: Path) -> TransferClassifier:
    return TransferClassifier("timm:test_vit", num_classes=3, pretrained=True, weights=str(weights))


def randomize_adapter(model: torch.nn.Module) -> None:
    """LoRA's B starts at zero (the adapter adds nothing): give it values, as training would."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_exported_from_callbacks() -> None:
    assert ExportedLoRA is LoRA


def test_families_declare_attention_projections(tiny_bert_dir: Path) -> None:
    vit = create_backbone("timm:test_vit", pretrained=False)
    assert vit.adapter_targets()[:2] == ["model.blocks.0.attn.qkv", "model.blocks.0.attn.proj"]
    assert len(vit.adapter_targets()) == 12  # 6 blocks x (qkv, proj)
    bert = create_backbone(f"hf:{tiny_bert_dir}", pretrained=False)
    assert sorted({t.rsplit(".", 1)[1] for t in bert.adapter_targets()}) == ["key", "query", "value"]
    assert len(bert.adapter_targets()) == 6
    assert create_backbone("timm:test_resnet", pretrained=False).adapter_targets() == []


def test_cnn_without_targets_is_an_error_naming_target_modules() -> None:
    model = TransferClassifier("timm:test_resnet", num_classes=3, pretrained=False)
    with pytest.raises(ConfigurationError, match=r"target_modules=.*conv2.*layer1\.0\.conv1"):
        add_lora(model)
    with pytest.raises(ConfigurationError, match="matches no Linear / Conv layer"):
        add_lora(model, target_modules=["no_such_layer"])
    adapter = add_lora(model, r=2, target_modules=["conv2"])
    assert adapter.target_modules and all(t.endswith("conv2") for t in adapter.target_modules)


@pytest.mark.parametrize("bad", [{"r": 0}, {"alpha": 0.0}, {"dropout": 1.0}, {"target_modules": []}])
def test_bad_arguments_are_one_line_errors(bad: dict) -> None:
    with pytest.raises(ConfigurationError):
        LoRA(**bad)


def test_base_frozen_adapter_and_head_train_and_counts_are_logged(vit_weights: Path, tmp_path: Path) -> None:
    model = vit_classifier(vit_weights)
    base = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    head = model.head.fc.weight.detach().clone()
    t = fit(model, tmp_path, [LoRA(r=4, alpha=8)], images(), max_epochs=2)
    adapter = get_adapter(model)
    assert adapter is not None and adapter.root == "backbone.model"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    for name, p in model.backbone.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base[name.replace(".base_layer", "")]), name
    assert not torch.equal(model.head.fc.weight, head)
    assert any(float(p.abs().max()) > 0 for n, p in model.named_parameters() if "lora_B" in n)
    # the rebuilt layer groups cover the adapter, so the optimizer holds it
    in_opt = {id(p) for g in t.optimizers[0].param_groups for p in g["params"]}
    assert all(id(p) in in_opt for n, p in model.named_parameters() if "lora_" in n)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    assert float(t.callback_metrics["lora/trainable_params"]) == n_train
    assert float(t.callback_metrics["lora/trainable_share"]) == pytest.approx(n_train / n_all)


def test_checkpoint_holds_adapter_head_and_digest_and_loads_from_the_pretrained_source(
    vit_weights: Path, tmp_path: Path
) -> None:
    model = vit_classifier(vit_weights)
    t = fit(model, tmp_path, [LoRA(r=4, alpha=8)], images())
    ckpt = tmp_path / "lora.ckpt"
    t.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)
    keys = set(saved["state_dict"])
    assert keys and all("lora_" in k or k.startswith("head.") for k in keys), sorted(keys)[:8]
    record = saved[ADAPTER_KEY]
    assert len(record["base_digest"]) == 64 and not record["base_stored"]
    assert ckpt.stat().st_size < 0.3 * sum(p.numel() * 4 for p in model.parameters())

    # in a Trainer (resume / validate / test with ckpt_path): a fresh model, rebuilt with its pretrained base
    fresh = vit_classifier(vit_weights)
    pl.Trainer(callbacks=[LoRA(r=4, alpha=8)], logger=False, enable_progress_bar=False,
               enable_model_summary=False, default_root_dir=tmp_path).validate(fresh, images(), ckpt_path=ckpt)
    trained = model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in fresh.state_dict().items())

    loaded = TransferClassifier.load_from_checkpoint(ckpt)
    x = next(iter(images()))[0]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.backbone.pretrained_source == str(vit_weights)

    # another base (another seed) under the same file name: refused, both digests named
    torch.manual_seed(2)
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), vit_weights)
    other = vit_classifier(vit_weights)
    add_lora(other, r=4, alpha=8)
    other_digest = get_adapter(other).base_digest  # type: ignore[union-attr]
    with pytest.raises(CheckpointError, match=f"{record['base_digest'][:16]}.*{other_digest[:16]}"):
        TransferClassifier.load_from_checkpoint(ckpt)


# (a random-init timm ResNet zeroes the last BatchNorm of each residual branch: adapt the shortcut convs too)
@pytest.mark.parametrize("arch, targets", [("timm:test_vit", None), ("timm:test_resnet", ["conv1", "downsample.1"])])
def test_merged_and_unmerged_logits_agree(arch: str, targets: list[str] | None) -> None:
    model = TransferClassifier(arch, num_classes=3, pretrained=False).eval()
    add_lora(model, r=4, alpha=8, target_modules=targets)
    randomize_adapter(model)
    x = next(iter(images()))[0]
    with torch.no_grad():
        plain = TransferClassifier(arch, num_classes=3, pretrained=False).eval()
        plain.load_state_dict({k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k})
        unmerged = model(x)
        merge_lora(model)
        merged = model(x)
    assert float((unmerged - plain(x)).abs().max()) > 1e-3, "the adapter changes the logits"
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=0)
    assert get_adapter(model) is None
    assert not any("lora_" in n or "base_layer" in n for n, _ in model.named_parameters())
    assert set(model.state_dict()) == set(plain.state_dict())
    model.backbone.layer_groups()  # the contract holds again (covers every parameter)


def test_adapter_init_is_seeded_not_drawn_from_the_global_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """DDP / FSDP processes build the same adapter whatever each consumed from the global RNG before."""

    def lora_a(seed: int | None, draws: int) -> dict[str, torch.Tensor]:
        model = BoringFT()
        torch.manual_seed(123)
        torch.rand(draws)  # a process that consumed more random numbers before setup
        add_lora(model, r=2, alpha=4, target_modules=["0"], groups="model", seed=seed)
        after = torch.rand(1)
        torch.manual_seed(123)
        torch.rand(draws)
        assert torch.equal(after, torch.rand(1)), "the global stream was left as it was"
        return {k: v.clone() for k, v in model.state_dict().items() if "lora_A" in k}

    a, b = lora_a(5, 0), lora_a(5, 1000)
    assert a and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], lora_a(6, 0)[k]) for k in a)
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")  # seed_everything(5): the run's seed is the default
    c = lora_a(None, 7)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_gradual_unfreezing_is_refused(tmp_path: Path) -> None:
    model = BoringFT()
    with pytest.raises(ConfigurationError, match="GradualUnfreezing.*unfreeze"):
        fit(model, tmp_path, [LoRA(target_modules=["0"], groups="model"), GradualUnfreezing(unfreeze_every=1)],
            max_steps=1)


def test_composes_with_layerwise_lr_decay(vit_weights: Path, tmp_path: Path) -> None:
    model = vit_classifier(vit_weights)
    t = fit(model, tmp_path, [LoRA(r=2), LayerwiseLRDecay(0.5)], images(), max_steps=1)
    lr_of = {id(p): g["lr"] for g in t.optimizers[0].param_groups for p in g["params"]}
    qkv = {i: model.backbone.model.blocks[i].attn.qkv.lora_A["default"].weight for i in (0, 5)}
    assert lr_of[id(qkv[0])] == pytest.approx(lr_of[id(qkv[5])] * 0.5**5)


def test_hf_text_backbone_round_trip(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = TransferClassifier(f"hf:{tiny_bert_dir}", num_classes=2, pretrained=True)
    batch = model.backbone.preprocess(["a good movie", "a bad film"])
    data = DataLoader([(batch, torch.tensor([1, 0]))], batch_size=None)
    t = fit(model, tmp_path, [LoRA(r=2, alpha=4)], data, max_steps=2)
    ckpt = tmp_path / "bert.ckpt"
    t.save_checkpoint(ckpt)
    assert len(get_adapter(model).target_modules) == 6  # type: ignore[union-attr]
    loaded = TransferClassifier.load_from_checkpoint(ckpt)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), model(batch), rtol=0, atol=0)


# -- a user's own LightningModule: exact resume, another base, DDP --------------------------------


def _fit_boring(folder: Path, max_epochs: int, ckpt_path: Path | None = None, devices: int = 1,
                batch_size: int = 8, seed: int = 0) -> None:
    from test_ddp import SaveWeights

    folder.mkdir(parents=True, exist_ok=True)
    model = BoringFT(opt="sgd", lr=0.2, weight_decay=0.0, batch_size=batch_size, seed=seed)
    pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
        use_distributed_sampler=False, max_epochs=max_epochs, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=folder,
        callbacks=[LoRA(r=2, alpha=4, target_modules=["0"], groups="model"), SaveWeights(folder),
                   pl.callbacks.ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0)],
    ).fit(model, ckpt_path=ckpt_path)


def test_exact_resume_on_a_user_module_and_another_base_is_refused(tmp_path: Path) -> None:
    _fit_boring(tmp_path / "full", max_epochs=4)
    _fit_boring(tmp_path / "part", max_epochs=2)
    ckpt = tmp_path / "part" / "last.ckpt"
    keys = set(torch.load(ckpt, weights_only=True)["state_dict"])
    assert keys == {f"model.{b}.0.lora_{ab}.default.weight" for b in ("stem", "block1", "block2", "block3")
                    for ab in "AB"} | {"head.weight", "head.bias"}
    _fit_boring(tmp_path / "resumed", max_epochs=4, ckpt_path=ckpt)
    full = torch.load(tmp_path / "full" / "rank0.pt")
    resumed = torch.load(tmp_path / "resumed" / "rank0.pt")
    assert set(full) == set(resumed) and all(torch.equal(full[k], resumed[k]) for k in full)
    with pytest.raises(CheckpointError, match="digest"):
        _fit_boring(tmp_path / "other", max_epochs=4, ckpt_path=ckpt, seed=1)
    # a checkpoint of full fine-tuning is not silently half-loaded into a LoRA run
    full_ckpt = tmp_path / "plain.ckpt"
    t = trainer(tmp_path, [], max_steps=1)
    t.fit(BoringFT())
    t.save_checkpoint(full_ckpt)
    with pytest.raises(CheckpointError, match="no LoRA adapter"):
        _fit_boring(tmp_path / "mixed", max_epochs=4, ckpt_path=full_ckpt)


@pytest.mark.ddp
def test_ddp_ranks_identical_and_equal_to_one_process(tmp_path: Path) -> None:
    _fit_boring(tmp_path / "ddp", max_epochs=2, devices=2, batch_size=4)
    _fit_boring(tmp_path / "single", max_epochs=2, devices=1, batch_size=8)
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "single" / "rank0.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert max(float((r0[k] - single[k]).abs().max()) for k in r0) < 1e-5
    assert max(float(r0[k].abs().max()) for k in r0 if "lora_B" in k) > 1e-3, "the adapters trained"
