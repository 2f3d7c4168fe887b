"""``tl-groups``: the layer groups a ``tl-train`` config will train, before training.

Composes the same config as ``tl-train`` (same overrides, same ``--config-dir``), builds the
model (architecture only: pretrained weights are not needed to see the groups) and prints, input
-> output, each layer group with its parameter count, whether it trains at the start, its LR and
its norm layers, then what the fine-tuning recipe (``finetune=...``) will unfreeze and when.
Nothing is written: no run folder, no logs.

Examples::

    tl-groups backbone=timm_resnet50 finetune=gradual
    tl-groups experiment=demo finetune=ulmfit
    tl-groups --config-dir /my/configs experiment=mine
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from tl_lightning.errors import TLError

__all__ = ["main", "describe_config"]


def describe_config(overrides: Sequence[str], config_dir: str | None = None) -> str:
    """The text ``tl-groups`` prints for these overrides (see the module docstring)."""
    import hydra
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from tl_lightning.callbacks import GradualUnfreezing
    from tl_lightning.cli._config import config_dir as shipped_config_dir
    from tl_lightning.cli._config import prepare_omegaconf
    from tl_lightning.describe import describe_layer_groups

    prepare_omegaconf()
    GlobalHydra.instance().clear()
    overrides = list(overrides)
    if config_dir is not None:
        overrides.append(f"hydra.searchpath=[file://{os.path.abspath(config_dir)}]")
    with initialize_config_dir(version_base="1.3", config_dir=str(shipped_config_dir())):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.model.pretrained = False  # the groups do not depend on the weights; nothing is downloaded
        cfg.model.weights = None
    model = hydra.utils.instantiate(cfg.model, labels=["class_a", "class_b"], num_classes=2, _convert_="all")
    lines = [f"backbone {cfg.backbone.name} (architecture only), finetune={cfg.get('finetune', {}).get('name', '?')}"]
    unfreeze = None
    for name, entry in (cfg.get("callbacks") or {}).items():
        if entry is not None and str(entry.get("_target_", "")).endswith("GradualUnfreezing"):
            unfreeze = hydra.utils.instantiate(entry, _convert_="all")
            lines[0] += f", unfreezing from callbacks.{name}"
    if isinstance(unfreeze, GradualUnfreezing):
        unfreeze.resolve(model)
    lines.append(str(describe_layer_groups(model)))
    if isinstance(unfreeze, GradualUnfreezing):
        lines.append("plan:")
        lines.extend(f"  {line}" for line in unfreeze.plan_summary())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``tl-groups``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "help"):
        print(__doc__)
        return
    config_dir = None
    if "--config-dir" in args:
        i = args.index("--config-dir")
        if i + 1 >= len(args):
            print("tl-groups: --config-dir needs a folder", file=sys.stderr)
            raise SystemExit(1)
        config_dir = args[i + 1]
        del args[i : i + 2]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        print(describe_config(args, config_dir))
    except Exception as err:  # noqa: BLE001 - reported as one line, re-raised on request
        from tl_lightning.cli._errors import user_error_message

        message = user_error_message(err)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or (message is None and not _is_hydra_error(err)):
            raise
        print(f"tl-groups: {message or err}", file=sys.stderr)
        raise SystemExit(1) from None


def _is_hydra_error(err: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(err, (HydraException, OmegaConfBaseException, TLError))


if __name__ == "__main__":
    main()
