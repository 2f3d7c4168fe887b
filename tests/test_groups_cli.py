"""``tl-groups``: the layer groups and the unfreezing plan of a tl-train config, before training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tl_lightning.cli.groups import describe_config


def test_tl_groups_shows_groups_frozen_state_and_plan() -> None:
    text = describe_config(["backbone=timm_test_resnet", "finetune=gradual"])
    assert "layer4" in text and "frozen" in text
    lines = text.splitlines()
    assert any(line.strip().startswith("4  layer4") and "frozen" in line for line in lines)
    assert "  epoch 1: layer4 (1 group(s))" in lines and "  epoch 5: stem (1 group(s))" in lines


def test_tl_groups_top_n_and_full_need_no_data() -> None:
    text = describe_config(["backbone=timm_test_resnet", "finetune=top_n"])
    rows = {line.split()[1]: line for line in text.splitlines() if line.strip()[:1].isdigit()}
    assert "trainable" in rows["layer4"] and "trainable" in rows["layer3"] and "frozen" in rows["layer2"]
    assert "plan:" not in describe_config(["backbone=timm_test_resnet", "finetune=full"])


def test_tl_groups_cli_one_line_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tl_lightning.cli.groups", "backbone=timm_test_resnet", "finetune=gradul"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert out.returncode == 1 and "tl-groups:" in out.stderr and "gradul" in out.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written
