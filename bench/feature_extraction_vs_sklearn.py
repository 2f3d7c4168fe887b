"""The 30-line baseline: frozen EfficientNet-Lite0 features computed once + scikit-learn logistic regression.

Uses the library's own backbone and eval transform, and the same seeded split as
``tl-train data.root=... seed=42`` (ImageFolderDataModule), so it scores the same test images:

    python bench/feature_extraction_vs_sklearn.py /tmp/mnist9 --val-fraction 0.1 --test-fraction 0.2
    # side by side (same split, same machine):
    tl-train backbone=timm_efficientnet_lite0_asset finetune=feature_extraction data.root=/tmp/mnist9 \
        data.val_fraction=0.1 data.test_fraction=0.2 trainer=cpu
"""

import argparse, time  # noqa: E401

import numpy as np, torch  # noqa: E401
from sklearn.linear_model import LogisticRegression

from tl_lightning import ImageFolderDataModule, create_backbone
from tl_lightning.assets import efficientnet_lite0_path
from tl_lightning.backbones.key_maps import efficientnet_lite_to_timm
from tl_lightning.data._transforms import image_eval_transform

ap = argparse.ArgumentParser()
ap.add_argument("root"), ap.add_argument("--val-fraction", type=float, default=0.1)
ap.add_argument("--test-fraction", type=float, default=0.2), ap.add_argument("--seed", type=int, default=42)
ap.add_argument("--crop-small", action="store_true", help="the pretrained resize-then-crop also for small images")
args = ap.parse_args()
t0 = time.perf_counter()
backbone = create_backbone("timm:tf_efficientnet_lite0", weights=str(efficientnet_lite0_path()),
                           key_map=efficientnet_lite_to_timm()).eval()
dm = ImageFolderDataModule(root=args.root, augment=False, batch_size=64, num_workers=0, seed=args.seed,
                           val_fraction=args.val_fraction, test_fraction=args.test_fraction)
dm.set_preprocess(backbone.preprocess)


def features(loader):  # the frozen trunk, once, in eval mode
    with torch.inference_mode():
        pairs = [(backbone(x).numpy(), y.numpy()) for x, y in loader]
    return np.concatenate([f for f, _ in pairs]), np.concatenate([y for _, y in pairs])


dm.setup("fit"), dm.setup("test")
if args.crop_small:  # what the eval transform did before small images were left uncropped
    for split in ("train", "test"):
        dm._datasets[split].transform = image_eval_transform(dm.effective_preprocess(), crop_small=True)
(x_train, y_train), (x_test, y_test) = features(dm.train_dataloader()), features(dm.test_dataloader())
t1 = time.perf_counter()
clf = LogisticRegression(max_iter=1000).fit(x_train, y_train)
acc = float((clf.predict(x_test) == y_test).mean())
t2 = time.perf_counter()
print(f"train {len(y_train)} test {len(y_test)}: test acc {acc:.3f}; features {t1 - t0:.1f} s, fit {t2 - t1:.1f} s, "
      f"total {t2 - t0:.1f} s (torch threads {torch.get_num_threads()})")
