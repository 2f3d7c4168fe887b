"""``tl-predict``: class predictions from a trained checkpoint for a CSV of texts or a folder of images.

Usage::

    tl-predict ckpt_path=outputs/demo/.../checkpoints/epoch_002.ckpt input=reviews.csv output=preds.csv
    tl-predict ckpt_path=best.ckpt input=/data/new_photos output=preds.csv batch_size=64

Arguments are ``key=value`` pairs (``--key value`` works too):

* ``ckpt_path`` (required): a checkpoint written by ``tl-train`` (or any
  :class:`~tl_lightning.TransferClassifier` checkpoint).
* ``input`` (required): a CSV/TSV/JSONL file with a text column (text backbones), or a folder of
  images, searched recursively (image backbones).
* ``output``: the CSV to write (default ``predictions.csv``): one row per input with ``id``,
  ``label`` (the predicted class; for multilabel models the classes over ``threshold`` joined by
  ``|``) and ``prob_<class>`` for every class.
* ``text_column``, ``id_column``, ``max_length``, ``image_size``: default to the training run's
  config when the checkpoint sits in a ``tl-train`` run folder (``<run>/checkpoints/``), else to
  ``text``, the row number, the backbone's defaults.
* ``batch_size`` (32), ``device`` (``cpu``, ``cuda``, ``auto``), ``threshold`` (0.5, multilabel).
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tl_lightning.data.image_folder import IMAGE_EXTENSIONS, _is_image
from tl_lightning.data.text import read_table
from tl_lightning.errors import ConfigurationError, DataError, TLError, did_you_mean

__all__ = ["PredictConfig", "main", "predict", "IMAGE_EXTENSIONS"]



@dataclass
class PredictConfig:
    """Arguments of ``tl-predict`` (see the module docstring)."""

    ckpt_path: str
    input: str
    output: str = "predictions.csv"
    text_column: str | None = None
    id_column: str | None = None
    max_length: int | None = None
    image_size: int | None = None
    batch_size: int = 32
    device: str = "cpu"
    threshold: float = 0.5


def _run_config(ckpt_path: Path) -> dict[str, Any]:
    """The resolved config of the tl-train run that wrote ``ckpt_path``, or ``{}``."""
    config_file = ckpt_path.resolve().parent.parent / ".hydra" / "config.yaml"
    if not config_file.is_file():
        return {}
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(config_file)
    data = cfg.get("data") or {}
    return {k: data.get(k) for k in ("text_column", "max_length", "image_size") if k in data}


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _text_inputs(cfg: PredictConfig, model: Any) -> tuple[list[str], Iterator[Any]]:
    table = read_table(Path(cfg.input))
    column = cfg.text_column or "text"
    if column not in table.columns:
        raise DataError(
            f"text column {column!r} not found in {cfg.input!r}{did_you_mean(column, map(str, table.columns))} "
            f"Columns: {list(map(str, table.columns))}; pass text_column=<name>."
        )
    if cfg.id_column is not None and cfg.id_column not in table.columns:
        raise DataError(
            f"id column {cfg.id_column!r} not found in {cfg.input!r}; columns: {list(map(str, table.columns))}"
        )
    texts = table[column].fillna("").astype(str).tolist()
    ids = table[cfg.id_column].astype(str).tolist() if cfg.id_column else [str(i) for i in range(len(texts))]
    preprocess = model.backbone.preprocess
    if cfg.max_length:
        preprocess = preprocess.with_max_length(int(cfg.max_length))
    return ids, (preprocess(chunk) for chunk in _batches(texts, cfg.batch_size))


def _image_inputs(cfg: PredictConfig, model: Any) -> tuple[list[str], Iterator[Any]]:
    import torch
    from PIL import Image

    root = Path(cfg.input)
    files = sorted(p for p in root.rglob("*") if _is_image(p))
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {str(root)!r}")
    preprocess = model.backbone.preprocess
    if cfg.image_size:
        preprocess = preprocess.with_size(int(cfg.image_size))
    from tl_lightning.data import image_eval_transform

    transform = image_eval_transform(preprocess)
    channels = preprocess.input_size[0]

    def load(path: Path) -> Any:
        try:
            with Image.open(path) as image:
                return transform(image.convert("L" if channels == 1 else "RGB"))
        except Exception as err:  # PIL raises several types for broken files
            raise DataError(f"cannot read image {str(path)!r}: {err}") from err

    ids = [p.relative_to(root).as_posix() for p in files]
    return ids, (torch.stack([load(p) for p in chunk]) for chunk in _batches(files, cfg.batch_size))


def _to_device(batch: Any, device: Any) -> Any:
    if isinstance(batch, dict):
        return {k: v.to(device) for k, v in batch.items()}
    return batch.to(device)


def predict(cfg: PredictConfig) -> Path:
    """Write predictions for ``cfg.input`` to ``cfg.output``; returns the output path.

    Example:
        >>> predict(PredictConfig(ckpt_path="run/checkpoints/last.ckpt", input="texts.csv"))  # doctest: +SKIP
        PosixPath('predictions.csv')
    """
    import torch

    from tl_lightning import TransferClassifier

    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        raise ConfigurationError(f"ckpt_path {str(ckpt_path)!r} is not a file; pass ckpt_path=<run>/checkpoints/<name>.ckpt")
    source = Path(cfg.input)
    if not source.exists():
        raise DataError(f"input {str(source)!r} does not exist; pass input=<csv file or image folder>")
    for key, value in _run_config(ckpt_path).items():
        if getattr(cfg, key) is None and value is not None:
            setattr(cfg, key, value)

    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    model = TransferClassifier.load_from_checkpoint(str(ckpt_path), map_location="cpu").to(device).eval()
    modality = getattr(model.backbone.preprocess, "modality", "image")
    if modality == "text":
        if source.is_dir():
            raise DataError(f"{cfg.ckpt_path!r} is a text model; input must be a CSV/TSV/JSONL file, got a folder")
        ids, batches = _text_inputs(cfg, model)
    else:
        if not source.is_dir():
            raise DataError(f"{cfg.ckpt_path!r} is an image model; input must be a folder of images, got a file")
        ids, batches = _image_inputs(cfg, model)

    probabilities: list[list[float]] = []
    with torch.inference_mode():
        for index, batch in enumerate(batches):
            probs = model.predict_step(_to_device(batch, device), index)
            probabilities.extend(probs.float().cpu().tolist())

    labels = list(model.labels)
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label", *(f"prob_{label}" for label in labels)])
        for row_id, probs in zip(ids, probabilities):
            if model.task == "multilabel":
                predicted = "|".join(label for label, p in zip(labels, probs) if p >= cfg.threshold)
            else:
                predicted = labels[max(range(len(probs)), key=probs.__getitem__)]
            writer.writerow([row_id, predicted, *(f"{p:.6f}" for p in probs)])
    return output


def parse_args(argv: Sequence[str]) -> PredictConfig:
    """Parse ``key=value`` / ``--key value`` arguments into a :class:`PredictConfig`."""
    known = {f.name: f for f in fields(PredictConfig)}
    values: dict[str, str] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("--"):
            key = arg[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            elif args:
                value = args.pop(0)
            else:
                raise ConfigurationError(f"option {arg!r} needs a value")
        elif "=" in arg:
            key, value = arg.split("=", 1)
        else:
            raise ConfigurationError(f"arguments look like key=value, got {arg!r}; see `tl-predict --help`")
        if key not in known:
            raise ConfigurationError(f"unknown argument {key!r}{did_you_mean(key, known)} Known: {sorted(known)}")
        values[key] = value
    missing = [k for k in ("ckpt_path", "input") if k not in values]
    if missing:
        raise ConfigurationError(f"missing required argument(s) {missing}; e.g. tl-predict ckpt_path=best.ckpt input=texts.csv")
    converted: dict[str, Any] = {}
    for key, value in values.items():
        if value.lower() in ("null", "none", ""):
            converted[key] = None
        elif key in ("max_length", "image_size", "batch_size"):
            try:
                converted[key] = int(value)
            except ValueError:
                raise ConfigurationError(f"{key} must be an integer, got {value!r}") from None
        elif key == "threshold":
            try:
                converted[key] = float(value)
            except ValueError:
                raise ConfigurationError(f"threshold must be a number in [0, 1], got {value!r}") from None
        else:
            converted[key] = value
    if converted.get("batch_size") is not None and converted["batch_size"] < 1:
        raise ConfigurationError(f"batch_size must be >= 1, got {converted['batch_size']}")
    if converted.get("threshold") is not None and not 0.0 <= converted["threshold"] <= 1.0:
        raise ConfigurationError(f"threshold must be in [0, 1], got {converted['threshold']}")
    return PredictConfig(**converted)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``tl-predict``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        output = predict(parse_args(argv))
    except TLError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("TL_FULL_ERROR") == "1":
            raise
        print(f"tl-predict: {type(err).__name__}: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
