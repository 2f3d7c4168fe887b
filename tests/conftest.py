"""Shared test fixtures. Everything here is offline and tiny."""

from __future__ import annotations

import os
import string
from pathlib import Path

# Never touch the network from tests: the hub clients fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _write_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """Save a 2-layer BERT (hidden 32) with a small WordPiece vocab as a local HF folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    letters = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = ["the", "a", "good", "bad", "movie", "film", "great", "awful", "fun", "boring", "plot", "actor"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *("##" + c for c in letters), *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local Hugging Face folder with a tiny random BERT and its tokenizer (``hf:<folder>``)."""
    return _write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def _write_tiny_vit(folder: Path, seed: int = 0) -> Path:
    """Save a 2-layer ViT (hidden 32, 32 px, patch 8) with its image processor as a local HF folder."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local Hugging Face folder with a tiny random ViT and its image processor (``hf:<folder>``)."""
    return _write_tiny_vit(tmp_path_factory.mktemp("tiny_vit"))


@pytest.fixture(scope="session")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of 8 tiny PNGs whose colour gives the class away (``root/<class>/<i>.png``)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    colours = {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}
    for label, colour in colours.items():
        (root / label).mkdir()
        for i in range(8):
            shade = tuple(max(0, c - 8 * i) for c in colour)
            Image.new("RGB", (40, 40), shade).save(root / label / f"{i}.png")
    return root


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
