"""Cached features for frozen backbones: the key (one test per component), reuse, memory mapping,
the augmentation exclusion, cached == uncached training, the L-BFGS head fit, the eval crop of small
images, 2-process DDP, and tl-train finetune=feature_extraction end to end.

Tiny random-init models (timm ``test_resnet`` at 32 px, a 2-layer BERT) on tiny data in tmp_path.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

from tl_lightning import GradualUnfreezing, ImageFolderDataModule, TextClassificationDataModule, TransferClassifier
from tl_lightning.data._transforms import image_eval_transform
from tl_lightning.backbones import ImagePreprocess
from tl_lightning.errors import ConfigurationError
from tl_lightning.features import (
    CachedFeatureDataModule,
    FeatureCache,
    FeatureExtractor,
    LinearHeadFit,
    cached_features_datamodule,
    fit_logistic_regression,
    shard_indices,
)
from tl_lightning.features import extraction as extraction_module
from tl_lightning.modules.classifier import CACHED_FEATURES_KEY

COLOURS = {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}


def _images(root: Path, per_class: int = 8, size: int = 40) -> Path:
    """Class folders of noisy colour squares (the colour gives the class away)."""
    rng = np.random.default_rng(0)
    for label, colour in COLOURS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    return _images(tmp_path / "images")


def _texts(path: Path, flip: int | None = None) -> Path:
    rows = ["text,label"]
    for i in range(10):
        rows.append(f"a good fun great movie {i},{'neg' if flip == i else 'pos'}")
        rows.append(f"a bad boring awful film {i},neg")
    path.write_text("\n".join(rows) + "\n")
    return path


def _image_model(seed: int = 0, labels: list[str] | None = None, **kwargs: Any) -> TransferClassifier:
    torch.manual_seed(seed)
    return TransferClassifier("timm:test_resnet", labels=labels or sorted(COLOURS), pretrained=False, **kwargs)


def _image_dm(root: Path, **kwargs: Any) -> ImageFolderDataModule:
    options: dict[str, Any] = dict(image_size=32, batch_size=4, num_workers=0, val_fraction=0.25, test_fraction=0.25)
    options.update(kwargs)
    return ImageFolderDataModule(root=str(root), **options)


def _key(model: TransferClassifier, dm: Any, precision: str = "32-true", split: str = "train"):
    dm.set_preprocess(model.backbone.preprocess)
    trainer = SimpleNamespace(precision=precision)
    return FeatureExtractor(model, trainer=trainer).key(dm, split)


# --- the key: one test per component ------------------------------------------------------


def test_key_is_stable_for_the_same_inputs(images: Path) -> None:
    a = _key(_image_model(0), _image_dm(images))
    b = _key(_image_model(0), _image_dm(images))
    assert a == b and a.digest() == b.digest()


def test_key_component_weights(images: Path) -> None:
    a, b = _key(_image_model(0), _image_dm(images)), _key(_image_model(1), _image_dm(images))
    assert a.differences(b) == ["weights"] and a.digest() != b.digest()


def test_key_component_weights_covers_buffers(images: Path) -> None:
    model = _image_model(0)
    a = _key(model, _image_dm(images))
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean += 0.5  # BatchNorm statistics change eval-mode features too
    b = _key(model, _image_dm(images))  # a new extractor: the digest is computed once per extractor
    assert a.differences(b) == ["weights"]


def test_key_component_pooling(images: Path) -> None:
    a = _key(_image_model(0), _image_dm(images))
    b = _key(_image_model(0, backbone_kwargs={"global_pool": "max"}), _image_dm(images))
    assert a.differences(b) == ["pooling"]


def test_key_component_pooling_text(tmp_path: Path, tiny_bert_dir: Path) -> None:
    csv = _texts(tmp_path / "t.csv")
    keys = []
    for pooling in ("cls", "mean"):
        model = TransferClassifier(f"hf:{tiny_bert_dir}", labels=["neg", "pos"], backbone_kwargs={"pooling": pooling})
        keys.append(_key(model, TextClassificationDataModule(path=str(csv), batch_size=4)))
    assert keys[0].differences(keys[1]) == ["pooling"]


def test_key_component_eval_transform(images: Path) -> None:
    a = _key(_image_model(0), _image_dm(images, image_size=32))
    b = _key(_image_model(0), _image_dm(images, image_size=36))
    assert a.differences(b) == ["inputs"]


def test_key_component_tokenizer_settings(tmp_path: Path, tiny_bert_dir: Path) -> None:
    csv = _texts(tmp_path / "t.csv")
    model = TransferClassifier(f"hf:{tiny_bert_dir}", labels=["neg", "pos"])
    a = _key(model, TextClassificationDataModule(path=str(csv), batch_size=4, max_length=16))
    b = _key(model, TextClassificationDataModule(path=str(csv), batch_size=4, max_length=32))
    assert a.differences(b) == ["inputs"]
    # another vocabulary with the same settings is another tokenizer
    other = tmp_path / "bert2"
    shutil.copytree(tiny_bert_dir, other)
    vocab = (other / "vocab.txt").read_text().splitlines()
    (other / "vocab.txt").write_text("\n".join([*vocab, "popcorn"]) + "\n")
    (other / "tokenizer.json").unlink(missing_ok=True)
    model2 = TransferClassifier(f"hf:{other}", labels=["neg", "pos"])
    model2.backbone.load_state_dict(model.backbone.state_dict())
    c = _key(model2, TextClassificationDataModule(path=str(csv), batch_size=4, max_length=16))
    assert "inputs" in a.differences(c)


def test_key_component_data_files(images: Path) -> None:
    a = _key(_image_model(0), _image_dm(images))
    dm = _image_dm(images)
    dm.set_preprocess(_image_model(0).backbone.preprocess)
    first = Path(dm.feature_dataset("train").samples[0][0])
    Image.new("RGB", (40, 40), (0, 0, 0)).save(first)  # same path, new content
    b = _key(_image_model(0), _image_dm(images))
    assert a.differences(b) == ["data"]


def test_key_component_labels(tmp_path: Path, tiny_bert_dir: Path) -> None:
    model = TransferClassifier(f"hf:{tiny_bert_dir}", labels=["neg", "pos"])
    a = _key(model, TextClassificationDataModule(path=str(_texts(tmp_path / "a.csv")), batch_size=4, seed=0))
    # the same texts in the same split, one of them labelled differently (val/test fractions 0: all in train)
    dm_a = TextClassificationDataModule(path=str(_texts(tmp_path / "a.csv")), val_fraction=0.0, test_fraction=0.0)
    dm_b = TextClassificationDataModule(path=str(_texts(tmp_path / "b.csv", flip=3)), val_fraction=0.0, test_fraction=0.0)
    ka, kb = _key(model, dm_a), _key(model, dm_b)
    assert ka.differences(kb) == ["labels"]
    assert a.digest() != ka.digest()  # another split is other data


def test_key_component_precision(images: Path) -> None:
    a = _key(_image_model(0), _image_dm(images), precision="32-true")
    b = _key(_image_model(0), _image_dm(images), precision="bf16-mixed")
    assert a.differences(b) == ["precision"]


def test_changed_key_recomputes(images: Path, tmp_path: Path) -> None:
    """A cache holding one key's features has nothing for a key that differs in one component."""
    cache = FeatureCache(tmp_path / "cache")
    a = _key(_image_model(0), _image_dm(images))
    b = _key(_image_model(0), _image_dm(images), precision="16-mixed")
    cache.save(a, np.ones((3, 4), np.float32), np.arange(3), split="train")
    assert cache.load(a) is not None and cache.load(b) is None


# --- training on cached features ----------------------------------------------------------


def _trainer(root: Path, callbacks: list, max_epochs: int = 2, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        callbacks=callbacks,
        **kwargs,
    )


def _fit(images: Path, root: Path, cached: bool, head_fit: bool = False, memmap_bytes: int = 1 << 30, **dm_kwargs: Any):
    pl.seed_everything(0)
    dm: Any = _image_dm(images, **{"augment": None if cached else False, **dm_kwargs})
    model = _image_model(0)
    dm.set_preprocess(model.backbone.preprocess)
    if cached:
        dm = CachedFeatureDataModule(dm, memmap_bytes=memmap_bytes)
    callbacks: list = [GradualUnfreezing(preset="all_frozen")] + ([LinearHeadFit()] if head_fit else [])
    trainer = _trainer(root, callbacks)
    trainer.fit(model, dm)
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    test = trainer.test(model, dm, verbose=False)[0]
    return model, dm, val, test


def test_cached_training_matches_uncached(images: Path, tmp_path: Path) -> None:
    cached, cdm, val_c, test_c = _fit(images, tmp_path / "a", cached=True)
    plain, _, val_p, test_p = _fit(images, tmp_path / "b", cached=False)
    assert set(cdm.splits) == {"train", "val", "test"}
    assert val_c.keys() == val_p.keys() and test_c.keys() == test_p.keys()
    for k in val_c:
        assert val_c[k] == pytest.approx(val_p[k], abs=1e-5), k
    for k in test_c:
        assert test_c[k] == pytest.approx(test_p[k], abs=1e-5), k
    torch.testing.assert_close(cached.head.fc.weight, plain.head.fc.weight, atol=1e-5, rtol=1e-5)
    # the backbone never trained, and its cached features are what it computes in eval mode
    torch.testing.assert_close(cached.backbone.state_dict(), plain.backbone.state_dict())


def test_cached_batches_skip_the_backbone(images: Path, tmp_path: Path) -> None:
    model, dm, _, _ = _fit(images, tmp_path, cached=True)
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    batch = next(iter(dm.test_dataloader()))
    assert set(batch[0]) == {CACHED_FEATURES_KEY} and batch[0][CACHED_FEATURES_KEY].shape[1] == model.backbone.feature_dim
    model.eval()
    logits = model(batch[0])
    assert not calls, "the head alone ran"
    # the same logits as the whole model on the images of that batch
    images_batch = next(iter(dm.datamodule.test_dataloader()))[0]
    torch.testing.assert_close(logits, model(images_batch), atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigurationError, match="do not fit"):
        model({CACHED_FEATURES_KEY: torch.zeros(2, 5)})


def test_second_run_reuses_the_cache(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "shared_cache"
    _, first, _, _ = _fit(images, tmp_path / "run1", cached=True, cache_dir=str(cache))
    assert not any(s.reused for s in first.splits.values())
    assert len(list(cache.glob("features-*"))) == 3 and not list(cache.glob(".tmp-*"))

    def no_extraction(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(extraction_module, "extract_features", no_extraction)
    _, second, _, test = _fit(images, tmp_path / "run2", cached=True, cache_dir=str(cache))
    assert all(s.reused for s in second.splits.values()) and set(second.splits) == {"train", "val", "test"}
    np.testing.assert_array_equal(second.splits["train"].features, first.splits["train"].features)
    assert "test/acc" in test


def test_cache_defaults_to_the_run_folder(images: Path, tmp_path: Path) -> None:
    _, dm, _, _ = _fit(images, tmp_path / "run", cached=True)
    assert all(s.path is not None and s.path.parent == tmp_path / "run" / "feature_cache" for s in dm.splits.values())


def test_large_sets_are_memory_mapped(images: Path, tmp_path: Path) -> None:
    _, dm, _, test = _fit(images, tmp_path, cached=True, memmap_bytes=0)
    assert all(s.memmapped for s in dm.splits.values())
    _, small, _, test_small = _fit(images, tmp_path / "again", cached=True)
    assert not any(s.memmapped for s in small.splits.values())
    assert test["test/acc"] == pytest.approx(test_small["test/acc"])


def test_augmentation_and_cache_exclude_each_other(images: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"data\.augment=true .*finetune\.cached_features=true"):
        CachedFeatureDataModule(_image_dm(images, augment=True))
    CachedFeatureDataModule(_image_dm(images, augment=False))
    # the default (None): augmentation on for plain training, off for cached features
    dm = _image_dm(images)
    dm.set_preprocess(_image_model().backbone.preprocess)
    assert "RandomResizedCrop" in repr(dm._dataset("train").transform)
    assert "RandomResizedCrop" not in repr(dm.feature_dataset("train").transform)
    wrapped = cached_features_datamodule(dm, {"cached_features": True})
    assert isinstance(wrapped, CachedFeatureDataModule) and cached_features_datamodule(dm, {}) is dm
    with pytest.raises(ConfigurationError, match="cached_features must be true or false"):
        cached_features_datamodule(dm, {"cached_features": "yes"})


def test_unfrozen_backbone_is_refused(images: Path, tmp_path: Path) -> None:
    dm = _image_dm(images)
    model = _image_model()
    dm.set_preprocess(model.backbone.preprocess)
    with pytest.raises(ConfigurationError, match="need a frozen backbone"):
        _trainer(tmp_path, []).fit(model, CachedFeatureDataModule(dm))


def test_checkpoint_of_a_cached_run_is_the_full_model(images: Path, tmp_path: Path) -> None:
    pl.seed_everything(0)
    dm = _image_dm(images)
    model = _image_model()
    dm.set_preprocess(model.backbone.preprocess)
    trainer = _trainer(tmp_path, [GradualUnfreezing(preset="all_frozen"), LinearHeadFit()], max_epochs=1)
    trainer.fit(model, CachedFeatureDataModule(dm))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = TransferClassifier.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.preprocess == dm.effective_preprocess()
    x, _ = next(iter(dm.test_dataloader()))
    model.eval()
    torch.testing.assert_close(loaded(x), model(x))


def test_text_features_cached(tmp_path: Path, tiny_bert_dir: Path) -> None:
    pl.seed_everything(0)
    dm = TextClassificationDataModule(path=str(_texts(tmp_path / "t.csv")), batch_size=4, max_length=16)
    model = TransferClassifier(f"hf:{tiny_bert_dir}", labels=dm.labels)
    dm.set_preprocess(model.backbone.preprocess)
    cdm = CachedFeatureDataModule(dm)
    trainer = _trainer(tmp_path, [GradualUnfreezing(preset="all_frozen"), LinearHeadFit()], max_epochs=1)
    trainer.fit(model, cdm)
    train = cdm.splits["train"]
    assert train.features.shape == (len(dm.feature_dataset("train")), 32)
    # eval mode (no dropout): the cache equals the backbone's features computed directly
    tokens, _ = next(iter(dm.feature_loader("train", batch_size=4)))
    model.eval()
    with torch.no_grad():
        direct = model.features(tokens).numpy()
    np.testing.assert_allclose(train.features[:4], direct, atol=1e-5)


# --- the head fit -------------------------------------------------------------------------


def test_fit_logistic_regression_folds_the_scaling_into_raw_weights() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    x = rng.normal(size=(200, 6)) * [1, 10, 100, 0.1, 1, 5] + 20 * np.eye(3, 6)[y] + 50
    for scale in ("per_dim", "global"):
        fit = fit_logistic_regression(x, y, num_classes=3, scale=scale)
        z = (x - fit.mean) / fit.std
        # logits on raw features == logits of the standardised problem the solver saw
        w_std = fit.weight * fit.std  # (C, d)
        b_std = fit.bias + fit.weight @ fit.mean
        np.testing.assert_allclose(fit.logits(x), z @ w_std.T + b_std, rtol=1e-9, atol=1e-9)
        assert fit.accuracy > 0.7
    with pytest.raises(ConfigurationError, match="scale"):
        fit_logistic_regression(x, y, scale="none")  # type: ignore[arg-type]


def test_fit_logistic_regression_is_the_regularised_optimum() -> None:
    """At the solution the gradient of mean CE + l2/2 ||W_scaled||^2 vanishes (multiclass and multilabel)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 5))
    y = (x[:, 0] + 0.5 * rng.normal(size=120) > 0).astype(np.int64) + (x[:, 1] > 0.5)
    multi = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0, x[:, 3] > 1], axis=1).astype(np.float64)
    for task, targets, classes in (("multiclass", y, 3), ("multilabel", multi, 3)):
        fit = fit_logistic_regression(x, targets, num_classes=classes, task=task, l2_grid=[0.01], dtype="float64",
                                      val_features=x, val_targets=targets, max_iter=500)
        z = torch.tensor((x - fit.mean) / fit.std)
        w = torch.tensor(fit.weight * fit.std, requires_grad=True)
        b = torch.tensor(fit.bias + fit.weight @ fit.mean, requires_grad=True)
        logits = z @ w.T + b
        if task == "multiclass":
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor(targets))
        else:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor(targets))
        (loss + 0.005 * (w**2).sum()).backward()
        assert float(w.grad.abs().max()) < 1e-5 and float(b.grad.abs().max()) < 1e-5, task


def test_head_fit_writes_the_lbfgs_solution(images: Path, tmp_path: Path) -> None:
    pl.seed_everything(0)
    dm = _image_dm(images)
    model = _image_model()
    dm.set_preprocess(model.backbone.preprocess)
    cdm = CachedFeatureDataModule(dm)
    head_fit = LinearHeadFit(l2_grid=[1e-2, 1e-1])
    trainer = _trainer(tmp_path, [GradualUnfreezing(preset="all_frozen"), head_fit], max_epochs=0)
    trainer.fit(model, cdm)
    train, val = cdm.splits["train"], cdm.splits["val"]
    expected = fit_logistic_regression(train.features, train.targets, num_classes=3, val_features=val.features,
                                       val_targets=val.targets, l2_grid=[1e-2, 1e-1], max_iter=200, scale="global")
    np.testing.assert_allclose(model.head.fc.weight.detach().numpy(), expected.weight, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.head.fc.bias.detach().numpy(), expected.bias, rtol=1e-5, atol=1e-6)
    assert head_fit.state_dict()["fitted"] and head_fit.fit is not None and head_fit.fit.l2 == expected.l2
    # a resumed run keeps its head: the fit is done once
    again = LinearHeadFit()
    again.load_state_dict(head_fit.state_dict())
    before = model.head.fc.weight.detach().clone()
    with torch.no_grad():
        model.head.fc.weight.add_(1.0)
    again.on_fit_start(trainer, model)
    torch.testing.assert_close(model.head.fc.weight.detach(), before + 1.0)


def test_head_fit_without_a_validation_split_holds_out_and_refits(images: Path, tmp_path: Path) -> None:
    dm = _image_dm(images, val_fraction=0.0)
    model = _image_model()
    dm.set_preprocess(model.backbone.preprocess)
    head_fit = LinearHeadFit(val_fraction=0.25)
    _trainer(tmp_path, [GradualUnfreezing(preset="all_frozen"), head_fit], max_epochs=0).fit(model, dm)
    assert head_fit.fit is not None and head_fit.fit.held_out
    assert head_fit.fit.n_fit == len(dm.feature_dataset("train")), "the chosen strength is refitted on all of train"


def test_head_fit_needs_a_linear_head(images: Path, tmp_path: Path) -> None:
    dm = _image_dm(images)
    model = _image_model(head="mlp", head_hidden=[8])
    dm.set_preprocess(model.backbone.preprocess)
    trainer = _trainer(tmp_path, [GradualUnfreezing(preset="all_frozen"), LinearHeadFit()])
    with pytest.raises(ConfigurationError, match="model.head=linear"):
        trainer.fit(model, CachedFeatureDataModule(dm))


# --- the eval crop of images smaller than the crop ----------------------------------------


def test_small_images_are_not_cropped_at_eval() -> None:
    p = ImagePreprocess(input_size=(3, 32, 32), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=0.5)
    img = Image.new("RGB", (16, 16), (255, 255, 255))
    img.paste((255, 0, 0), (0, 0, 16, 2))  # a red band along the top edge
    whole = image_eval_transform(p)(img)
    cropped = image_eval_transform(p, crop_small=True)(img)
    assert whole.shape == cropped.shape == (3, 32, 32)
    assert float(whole[1, 0].mean()) < 0.1, "the top band is kept"
    assert float(cropped[1, 0].mean()) > 0.9, "the pretrained resize-then-crop cuts it off"
    big = Image.new("RGB", (80, 80), (255, 255, 255))
    big.paste((255, 0, 0), (0, 0, 80, 2))
    assert float(image_eval_transform(p)(big)[1, 0].mean()) > 0.9, "larger images are cropped as before"
    assert "images_smaller_than_crop=not cropped" in repr(image_eval_transform(p))


# --- shards --------------------------------------------------------------------------------


def test_shards_cover_every_sample_in_equal_parts() -> None:
    for n in (1, 5, 8, 13):
        for world in (1, 2, 3):
            shards = [shard_indices(n, r, world) for r in range(world)]
            assert len({len(s) for s in shards}) == 1
            assert sorted(set(i for s in shards for i in s)) == list(range(n))


# --- tl-train ------------------------------------------------------------------------------


def test_tl_train_feature_extraction_end_to_end(images: Path, tmp_path: Path) -> None:
    from test_train_app import compose_run

    from tl_lightning.cli.train import train

    run = tmp_path / "run"
    cfg = compose_run(["experiment=tiny_image", f"data.root={images}", "finetune=feature_extraction",
                       "trainer.max_epochs=2"], run)
    assert cfg.finetune.cached_features is True and cfg.data.augment is None
    summary = train(cfg)
    assert 0.0 <= summary.test_metrics["test/acc"] <= 1.0
    assert len(list((run / "feature_cache").glob("features-*"))) == 3  # train, val, test: computed once each
    # the checkpoint is the whole model: it predicts on images
    model = TransferClassifier.load_from_checkpoint(summary.best_checkpoint)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_tl_train_augmentation_with_cached_features_is_one_error(images: Path, tmp_path: Path) -> None:
    from test_train_app import compose_run

    from tl_lightning.cli.train import train

    cfg = compose_run(["experiment=tiny_image", f"data.root={images}", "finetune=feature_extraction",
                       "data.augment=true"], tmp_path)
    with pytest.raises(Exception, match=r"data\.augment=true.*finetune\.cached_features=true.*Fix") as info:
        train(cfg)
    assert isinstance(info.value.__cause__, ConfigurationError)
    # recomputing the frozen trunk every epoch allows augmentation
    cfg = compose_run(["experiment=tiny_image", f"data.root={images}", "finetune=feature_extraction",
                       "data.augment=true", "finetune.cached_features=false", "trainer.fast_dev_run=true"], tmp_path / "b")
    assert "test/acc" in train(cfg).test_metrics


# --- DDP -----------------------------------------------------------------------------------


def _head_fit_run(images: Path, root: Path, devices: int) -> TransferClassifier:
    pl.seed_everything(0)
    dm = _image_dm(images, batch_size=3)
    model = _image_model()
    dm.set_preprocess(model.backbone.preprocess)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=0,  # on_fit_start fits the head; nothing trains after it
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        callbacks=[GradualUnfreezing(preset="all_frozen"), LinearHeadFit(l2_grid=[1e-2, 1e-1])],
    )
    trainer.fit(model, CachedFeatureDataModule(dm))
    return model


@pytest.mark.ddp
def test_ddp_ranks_cache_their_shards_and_match_one_process(tmp_path: Path) -> None:
    """2 processes (9 training images: uneven shards, padded) store the same features as 1 process."""
    odd = _images(tmp_path / "odd", per_class=7)  # 3 train images per class
    one = _head_fit_run(odd, tmp_path / "one", devices=1)
    two = _head_fit_run(odd, tmp_path / "two", devices=2)
    folders = {name: sorted((tmp_path / name / "feature_cache").glob("features-*")) for name in ("one", "two")}
    assert [f.name for f in folders["one"]] == [f.name for f in folders["two"]] and len(folders["one"]) == 2
    for a, b in zip(folders["one"], folders["two"]):
        np.testing.assert_allclose(np.load(a / "features.npy"), np.load(b / "features.npy"), atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(np.load(a / "targets.npy"), np.load(b / "targets.npy"))
    torch.testing.assert_close(one.head.fc.weight, two.head.fc.weight, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(one.head.fc.bias, two.head.fc.bias, atol=1e-4, rtol=1e-4)
