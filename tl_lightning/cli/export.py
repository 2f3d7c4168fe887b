"""``tl-export``: the Hydra app that exports a trained checkpoint (conf/export.yaml).

Examples:
    tl-export ckpt_path=outputs/train/.../checkpoints/best.ckpt format=onnx output=exported/onnx
    tl-export ckpt_path=best.ckpt format=hf output=exported/hf
    tl-export ckpt_path=best.ckpt format=timm output=exported/timm overwrite=true

It prints the files written and the measured logit difference of the loaded-back artifact;
a bad argument, an unreadable checkpoint or a failed check prints one line and exits with
status 1 (``HYDRA_FULL_ERROR=1`` keeps the traceback). :func:`run_export` is the same as a
function of a composed config.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from tl_lightning.cli._config import config_dir, prepare_omegaconf
from tl_lightning.cli._errors import user_error_message
from tl_lightning.errors import ConfigurationError

__all__ = ["main", "run_export", "default_output"]


def default_output(ckpt_path: str | os.PathLike[str], fmt: str) -> Path:
    """Where an export goes when ``output`` is not given: ``<checkpoint dir>/<checkpoint name>_<format>``.

    Example:
        >>> default_output("run/checkpoints/best.ckpt", "onnx").as_posix()
        'run/checkpoints/best_onnx'
    """
    path = Path(ckpt_path).expanduser()
    return path.with_name(f"{path.stem}_{fmt}")


def run_export(cfg: DictConfig) -> Path:
    """Export ``cfg.ckpt_path`` in ``cfg.format`` to ``cfg.output``; print the files and the check.

    Returns:
        The output folder.
    """
    from tl_lightning.export import export, read_manifest

    if OmegaConf.is_missing(cfg, "ckpt_path") or cfg.ckpt_path is None:
        raise ConfigurationError(
            "ckpt_path is required: tl-export ckpt_path=<run>/checkpoints/best.ckpt format=onnx output=<folder>"
        )
    ckpt_path = str(cfg.ckpt_path)
    fmt = str(cfg.format)
    output = Path(str(cfg.output)).expanduser() if cfg.get("output") is not None else default_output(ckpt_path, fmt)
    folder = export(ckpt_path, output, format=fmt, overwrite=bool(cfg.overwrite), atol=cfg.atol)
    manifest = read_manifest(folder)
    check = manifest["check"]
    files = ", ".join(sorted(p.name for p in folder.iterdir() if p.is_file()))
    print(f"wrote {folder} ({fmt}): {files}")
    print(
        f"checked {'; '.join(check['loaders'])}: max |logits - module logits| = {check['max_abs_diff']:.3g} "
        f"(atol {check['atol']:g}) on batches of shape {check['batch_shapes']}"
    )
    return folder


def _task(cfg: DictConfig) -> None:
    try:
        run_export(cfg)
    except Exception as err:
        message = user_error_message(err)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"tl-export: {message}", file=sys.stderr)
        raise SystemExit(1) from None


def main() -> None:
    """Console entry point of ``tl-export`` (Hydra parses ``sys.argv``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    prepare_omegaconf()
    app = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="export")(_task)
    app()


if __name__ == "__main__":
    main()
