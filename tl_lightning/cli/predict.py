"""``tl-predict``: the Hydra app that writes class predictions of a checkpoint (conf/predict.yaml).

Examples:
    tl-predict ckpt_path=outputs/train/.../checkpoints/last.ckpt input=new_reviews.csv output=preds.csv
    tl-predict ckpt_path=best.ckpt input=/data/new_photos output=preds.csv on_bad_image=skip
    tl-predict ckpt_path=best.ckpt input=big.csv trainer=ddp trainer.precision=bf16-mixed

One run: check the options, the output path and the input (before anything is loaded) ->
load the model from the checkpoint alone -> read the input with the data module of its modality,
set up as the model was trained (the preprocessing and data settings stored in the checkpoint,
overridden by explicit options) -> ``Trainer.predict`` with
:class:`~tl_lightning.callbacks.prediction_writer.PredictionCSVWriter` (rows in input order on
any number of devices, written atomically) -> print what was used and what was written.

A bad option, path, checkpoint or input prints one line and exits with status 1
(``HYDRA_FULL_ERROR=1`` keeps the traceback). :func:`predict` is the same run as a function.
"""

from __future__ import annotations

import csv
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from tl_lightning.cli._config import config_dir, prepare_omegaconf
from tl_lightning.cli._errors import config_step, user_error_message
from tl_lightning.errors import ConfigurationError, DataError, did_you_mean

__all__ = ["PredictionSummary", "compose_predict_config", "main", "predict", "skipped_path"]

_TEXT_OPTIONS = ("text_column", "id_column", "max_length", "encoding", "separator")
_IMAGE_OPTIONS = ("image_size",)


@dataclass
class PredictionSummary:
    """What a ``tl-predict`` run read, used and wrote.

    Attributes:
        output: The predictions CSV.
        rows: Rows written (one per input that was predicted).
        inputs: Inputs found (``rows`` plus the skipped ones).
        modality: ``"text"`` or ``"image"``.
        settings: ``{name: (value, source)}`` for every setting that shaped the inputs; source
            is ``"checkpoint"`` (as trained), ``"option"`` (given on the command line) or
            ``"default"``.
        skipped: ``(id, reason)`` of the unreadable images left out (``on_bad_image=skip``).
        skipped_file: The CSV listing them (``<output stem>.skipped.csv``), when any.
        label_counts: Predicted label -> number of rows (multi-label: each ``|``-joined label set).
        nonfinite_rows: Rows whose probabilities are NaN / inf (their ``label`` is empty).
        devices: ``"<processes> x <device type>, <precision>"``.
        seconds: Wall time of the run.
    """

    output: Path
    rows: int
    inputs: int
    modality: str
    settings: dict[str, tuple[Any, str]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_file: Path | None = None
    label_counts: dict[str, int] = field(default_factory=dict)
    nonfinite_rows: int = 0
    devices: str = ""
    seconds: float = 0.0

    def format(self) -> str:
        """The lines ``tl-predict`` prints: settings used, then what was written."""
        used = ", ".join(f"{k}={v!r} ({source})" for k, (v, source) in self.settings.items())
        counts = ", ".join(
            f"{label or '(none)'} {n}"
            for label, n in sorted(self.label_counts.items(), key=lambda kv: -kv[1])
        )
        what = "rows" if self.modality == "text" else "images"
        lines = [f"read {self.inputs} {what} with {used}; predicted on {self.devices}"]
        line = (
            f"wrote {self.output}: {self.rows} predictions in {self.seconds:.1f}s (labels: {counts or '-'})"
        )
        if self.skipped:
            line += f"; skipped {len(self.skipped)} unreadable image(s), listed in {self.skipped_file}"
        lines.append(line)
        if self.nonfinite_rows:
            lines.append(
                f"warning: {self.nonfinite_rows} row(s) have NaN / inf probabilities and an empty label; "
                "try trainer.precision=32-true"
            )
        return "\n".join(lines)


def skipped_path(output: str | os.PathLike[str]) -> Path:
    """Where unreadable images are listed: ``<output stem>.skipped.csv`` next to ``output``.

    Example:
        >>> skipped_path("out/preds.csv").as_posix()
        'out/preds.skipped.csv'
    """
    path = Path(output).expanduser()
    return path.with_name(f"{path.stem}.skipped.csv")


def compose_predict_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/predict.yaml`` with command-line style ``overrides`` (``["trainer=ddp_sim"]``).

    Works inside another Hydra app too (its global state is restored afterwards).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    prepare_omegaconf()
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            return compose("predict", overrides=list(overrides))
    finally:
        if backup is not None:
            restore_gh_from_backup(backup)


def _with_options(cfg: DictConfig | Mapping[str, Any] | None, options: Mapping[str, Any]) -> DictConfig:
    if cfg is not None and not isinstance(cfg, DictConfig):
        options, cfg = {**dict(cfg), **options}, None
    base = compose_predict_config() if cfg is None else cfg
    if not options:
        return base
    known = [str(k) for k in base]
    unknown = [k for k in options if k not in known]
    if unknown:
        raise ConfigurationError(
            f"unknown tl-predict option {unknown[0]!r}{did_you_mean(unknown[0], known)} Options: {known}"
        )
    # top-level keys are checked above; trainer={...} may add any Trainer argument (checked
    # against Trainer's signature before it is built), like +trainer.<key>= on the command line
    merged = OmegaConf.merge(base, {})
    OmegaConf.set_struct(merged, False)
    merged = OmegaConf.merge(merged, dict(options))
    OmegaConf.set_struct(merged, True)
    return merged  # type: ignore[return-value]


def _required(cfg: DictConfig, key: str, example: str) -> str:
    if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
        raise ConfigurationError(f"{key} is required: tl-predict {example}")
    return str(cfg[key])


def _check_options(cfg: DictConfig) -> None:
    from tl_lightning._checks import check_choice, check_int, check_number

    check_number("threshold", cfg.threshold, low=0.0, high=1.0, hint="e.g. threshold=0.5")
    check_int("batch_size", cfg.batch_size, low=1, hint="e.g. batch_size=32")
    check_int("num_workers", cfg.num_workers, low=0)
    check_choice("on_bad_image", cfg.on_bad_image, ["error", "skip"])
    for name in ("max_length", "image_size"):
        if cfg.get(name) is not None:
            check_int(name, cfg[name], low=1)


def _check_input(source: Path, modality: str, ckpt_path: str) -> None:
    if modality == "text" and source.is_dir():
        raise DataError(
            f"{ckpt_path!r} is a text model but input {str(source)!r} is a folder; "
            "pass input=<.csv / .tsv / .jsonl file with a text column>"
        )
    if modality == "image" and not source.is_dir():
        raise DataError(
            f"{ckpt_path!r} is an image model but input {str(source)!r} is a file; pass input=<folder of images>"
        )


def _check_modality_options(cfg: DictConfig, modality: str) -> None:
    """Options of the other modality are refused, not silently ignored."""
    wrong = _IMAGE_OPTIONS if modality == "text" else _TEXT_OPTIONS
    given = [name for name in wrong if cfg.get(name) is not None]
    if modality == "text" and cfg.on_bad_image == "skip":
        given.append("on_bad_image")
    if given:
        raise ConfigurationError(
            f"{given} apply to {'image' if modality == 'text' else 'text'} models, and this checkpoint is a {modality} "
            f"model. Fix: remove {', '.join(f'{g}=...' for g in given)}"
        )


def _setting(option: Any, stored: Any, default: Any) -> tuple[Any, str]:
    if option is not None:
        return option, "option"
    if stored is not None:
        return stored, "checkpoint"
    return default, "default"


def _datamodule(
    cfg: DictConfig, model: Any, source: Path, trained_preprocess: bool
) -> tuple[Any, dict[str, tuple[Any, str]]]:
    """The predict data module for ``model``'s modality, set up as trained; and the settings used.

    ``trained_preprocess``: the checkpoint stored the preprocessing it was trained with (older
    checkpoints did not; the backbone's defaults are used then, and said so).
    """
    stored = dict(model.data_settings or {})
    common = {
        "batch_size": int(cfg.batch_size),
        "num_workers": int(cfg.num_workers),
        "model_labels": list(model.labels),
    }
    preprocess_source = "checkpoint" if trained_preprocess else "backbone default"
    if model.preprocess.modality == "text":
        from tl_lightning.data import TextClassificationDataModule

        settings = {
            "text_column": _setting(cfg.text_column, stored.get("text_column"), "text"),
            "max_length": (cfg.max_length, "option")
            if cfg.max_length is not None
            else (int(model.preprocess.max_length), preprocess_source),
            "encoding": _setting(cfg.encoding, stored.get("encoding"), "utf-8"),
            "separator": _setting(cfg.separator, stored.get("separator"), None),
        }
        dm = TextClassificationDataModule(
            predict_path=str(source),
            text_column=settings["text_column"][0],
            id_column=cfg.id_column,
            # None: the model's preprocess as restored from the checkpoint
            max_length=cfg.max_length,
            encoding=settings["encoding"][0],
            separator=settings["separator"][0],
            **common,
        )
        dm.set_preprocess(model.preprocess)  # refuses a max_length beyond the model's positions
        settings["id_column"] = (
            (cfg.id_column, "option") if cfg.id_column is not None else ("row number", "default")
        )
    else:
        from tl_lightning.data import ImageFolderDataModule

        dm = ImageFolderDataModule(
            predict_dir=str(source), image_size=cfg.image_size, on_bad_image=str(cfg.on_bad_image), **common
        )
        dm.set_preprocess(model.preprocess)
        h, w = dm.effective_preprocess().image_size
        settings = {
            "image_size": (
                h if h == w else [h, w],
                "option" if cfg.image_size is not None else preprocess_source,
            ),
            "on_bad_image": (str(cfg.on_bad_image), "option" if cfg.on_bad_image != "error" else "default"),
        }
    return dm, settings


def _skipped(dm: Any, source: Path, channels: int) -> list[tuple[str, str]]:
    """``(relative path, reason)`` of the images the data module left out."""
    from tl_lightning.data import decode_image

    found: list[tuple[str, str]] = []
    for name in getattr(dm, "skipped_files", {}).get("predict", []):
        path = Path(name)
        try:
            decode_image(path, channels)
            reason = "unreadable"
        except Exception as err:  # noqa: BLE001 - the reason is reported, whatever it is
            reason = " ".join(str(err).split())
        try:
            relative = path.relative_to(source).as_posix()
        except ValueError:
            relative = str(path)
        found.append((relative, reason))
    return found


def _read_back(output: Path) -> tuple[int, dict[str, int], int]:
    """Rows, label counts and rows with non-finite probabilities of the written CSV."""
    counts: Counter[str] = Counter()
    rows = nonfinite = 0
    with output.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)
        for row in reader:
            rows += 1
            counts[row[1]] += 1
            if any(value in ("nan", "inf", "-inf") for value in row[2:]):
                nonfinite += 1
    return rows, dict(counts), nonfinite


def predict(cfg: DictConfig | Mapping[str, Any] | None = None, /, **options: Any) -> PredictionSummary:
    """Write the predictions of ``ckpt_path`` for ``input`` to ``output`` (the ``tl-predict`` run).

    Args:
        cfg: A composed ``predict.yaml`` config (:func:`compose_predict_config`, or the one
            ``tl-predict`` gets), or a mapping merged onto the defaults; ``None``: the defaults.
        **options: Top-level options merged on top (``ckpt_path=...``, ``input=...``,
            ``trainer={"accelerator": "gpu"}``).

    Returns:
        What was read, used and written (also printed on rank 0).

    Raises:
        ConfigurationError: A bad option or output path (checked before anything is loaded).
        CheckpointError: ``ckpt_path`` is missing or not a readable checkpoint.
        DataError: The input is missing, of the wrong kind for the model, or unreadable.

    Example:
        >>> summary = predict(ckpt_path="run/checkpoints/last.ckpt", input="new.csv", output="preds.csv")  # doctest: +SKIP
        >>> summary.rows  # doctest: +SKIP
        120
    """
    # imported here: `tl-predict --help` and option errors answer without loading torch models
    from tl_lightning.callbacks.prediction_writer import (
        PredictionCSVWriter,
        check_output_path,
        write_csv_atomically,
    )
    from tl_lightning.cli._preflight import check_accelerator, check_target_arguments
    from tl_lightning.modules._checkpoint import read_checkpoint
    from tl_lightning.modules.classifier import CHECKPOINT_KEY, TransferClassifier

    start = time.perf_counter()
    cfg = _with_options(cfg, options)
    ckpt_path = _required(cfg, "ckpt_path", "ckpt_path=<run>/checkpoints/last.ckpt input=<file or folder>")
    source = Path(
        _required(cfg, "input", f"ckpt_path={ckpt_path} input=<csv/tsv/jsonl file or image folder>")
    ).expanduser()
    output = Path(str(cfg.output)).expanduser()
    overwrite = bool(cfg.overwrite)

    # everything that can be checked without the model is checked before it is loaded. Library
    # errors propagate as they are (they name the file or option); config_step("trainer") labels
    # Lightning's own errors about trainer arguments
    _check_options(cfg)
    if not source.exists():
        raise DataError(
            f"input {str(source)!r} does not exist. Fix: pass input=<csv/tsv/jsonl file or image folder> "
            f"(relative paths start at {Path.cwd()})"
        )
    protected = [("input", source), ("checkpoint", Path(ckpt_path))]
    check_output_path(output, overwrite=overwrite, protected=protected)
    if cfg.on_bad_image == "skip":
        check_output_path(skipped_path(output), overwrite=overwrite, protected=protected)
    with config_step("trainer"):
        check_accelerator(cfg.trainer)
        check_target_arguments(cfg.trainer, "trainer")

    saved = read_checkpoint(ckpt_path).get(CHECKPOINT_KEY) or {}
    # a checkpoint moved out of its run folder predicts the same: only what it holds is used
    modality = saved.get("modality")
    if modality in ("text", "image"):
        _check_input(source, modality, ckpt_path)
        _check_modality_options(cfg, modality)
    model = TransferClassifier.load_from_checkpoint(ckpt_path, map_location="cpu")
    modality = model.preprocess.modality
    _check_input(source, modality, ckpt_path)
    _check_modality_options(cfg, modality)

    dm, settings = _datamodule(cfg, model, source, trained_preprocess=bool(saved.get("preprocess")))
    dm.setup("predict")  # here, not in the workers: a bad column or file fails in this process
    ids = list(dm.predict_ids)
    skipped = _skipped(dm, source, int(model.preprocess.input_size[0])) if modality == "image" else []

    writer = PredictionCSVWriter(
        output,
        labels=model.labels,
        ids=ids,
        multilabel=model.task == "multilabel",
        threshold=float(cfg.threshold),
        overwrite=overwrite,
    )
    with config_step("trainer"):
        trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[writer])
    trainer.predict(model, datamodule=dm, return_predictions=False)

    devices = f"{trainer.world_size} x {trainer.strategy.root_device.type}, precision {trainer.precision}"
    summary = PredictionSummary(
        output=output,
        rows=len(ids),
        inputs=len(ids) + len(skipped),
        modality=modality,
        settings=settings,
        skipped=skipped,
        devices=devices,
    )
    if not trainer.is_global_zero:
        return summary
    summary.rows, summary.label_counts, summary.nonfinite_rows = _read_back(output)
    if summary.rows != len(ids):
        raise DataError(f"{str(output)!r} has {summary.rows} rows but {len(ids)} inputs were predicted")
    stale = skipped_path(output)
    if skipped:
        summary.skipped_file = write_csv_atomically(stale, ["id", "reason"], skipped, overwrite=overwrite)
        for name, reason in skipped:
            print(f"tl-predict: skipped unreadable image {name}: {reason}", file=sys.stderr)
    elif overwrite and stale.exists() and cfg.on_bad_image == "skip":
        stale.unlink()  # an old list would describe another run
    summary.seconds = time.perf_counter() - start
    print(summary.format(), flush=True)
    return summary


_SPAWNED_ERROR = re.compile(r"^tl_lightning\.errors\.(\w+): (.*)$", re.MULTILINE)


def _message(err: BaseException) -> str | None:
    """A one-line message for a user error, also when it was raised in a spawned worker process."""
    message = user_error_message(err)
    if message is not None:
        return message
    # ddp_spawn re-raises a worker's error as a ProcessRaisedException holding its traceback text
    current: BaseException | None = err
    while current is not None:
        if type(current).__name__ == "ProcessRaisedException":
            found = _SPAWNED_ERROR.findall(str(current))
            if found:
                name, text = found[-1]
                return f"error in a prediction process: {name}: {text.strip()}"
        current = current.__cause__ or current.__context__
    return None


def _task(cfg: DictConfig) -> None:
    try:
        predict(cfg)
    except Exception as err:
        message = _message(err)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"tl-predict: {message}", file=sys.stderr)
        raise SystemExit(1) from None


_OVERRIDE = re.compile(r"^([A-Za-z_]\w*)(?:\.[\w.]+)?=")


def _check_arguments(argv: Sequence[str]) -> None:
    """A misspelt option is one line naming the closest ones, not Hydra's "not in struct" report."""
    if any(
        arg.split("=")[0] in ("--config-name", "-cn", "--config-dir", "-cd", "--config-path", "-cp")
        for arg in argv
    ):
        return  # another config may have other keys: Hydra checks them
    config = OmegaConf.load(config_dir() / "predict.yaml")
    known = [str(k) for k in config if k not in ("defaults", "hydra")]
    for arg in argv:
        match = _OVERRIDE.match(arg)  # plain `key=value` (not +key, ~key, --flags or hydra.*)
        if match is None or match.group(1) in (*known, "hydra"):
            continue
        key = match.group(1)
        raise ConfigurationError(
            f"unknown option {key!r}{did_you_mean(key, known)} Options: {', '.join(known)} (tl-predict --help)"
        )


def main() -> None:
    """Console entry point of ``tl-predict`` (Hydra parses ``sys.argv``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    prepare_omegaconf()
    try:
        _check_arguments(sys.argv[1:])
    except ConfigurationError as err:
        print(f"tl-predict: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    app = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")(_task)
    app()


if __name__ == "__main__":
    main()
