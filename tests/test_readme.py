"""The README's recipes stay true: its Python blocks compile and import what exists, and every
command line it shows for the Hydra apps composes (config groups, options and keys all exist).

Recipes that need hub downloads or the user's own data cannot run here; what can go stale
without anyone noticing (a renamed option, a removed key, a moved class) is checked for every one.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tl_lightning.cli import config_dir
from tl_lightning.cli._config import prepare_omegaconf

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
# command -> (config name, extra overrides that command adds)
APPS = {
    "tl-train": ("train", []),
    "tl-groups": ("train", []),
    "tl-compare": ("train", ["compare=strategies"]),
    "tl-rank": ("rank", []),
    "tl-predict": ("predict", []),
}


def _python_blocks() -> list[str]:
    return [code for lang, code in BLOCKS if lang == "python"]


def _command_lines() -> list[list[str]]:
    """Every tl-* command of the bash blocks that names concrete values (no `...` or `<placeholder>`)."""
    lines: list[list[str]] = []
    for lang, code in BLOCKS:
        if lang != "bash":
            continue
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line.startswith(tuple(APPS)) or "..." in line or "<" in line:
                continue
            tokens = shlex.split(line)
            if tokens[1:2] in (["report"], ["--resume"]):  # a folder, not overrides
                continue
            if any(t.startswith(("--config-dir", "hydra.searchpath")) for t in tokens):  # the user's own configs
                continue
            lines.append(tokens)
    return lines


COMMANDS = _command_lines()


def test_the_readme_has_recipes_to_check() -> None:
    assert len(_python_blocks()) >= 5 and len(COMMANDS) >= 15


@pytest.mark.parametrize("code", _python_blocks(), ids=lambda c: c.strip().splitlines()[0][:40])
def test_python_blocks_compile_and_import_what_exists(code: str) -> None:
    tree = ast.parse(code)  # a SyntaxError names the line
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tl_lightning"):
            module = importlib.import_module(node.module)
            missing = [a.name for a in node.names if not hasattr(module, a.name)]
            assert not missing, f"README imports {missing} from {node.module}, which has no such name"


@pytest.mark.parametrize("tokens", COMMANDS, ids=lambda t: " ".join(t)[:60])
def test_command_lines_compose(tokens: list[str]) -> None:
    config_name, extra = APPS[tokens[0]]
    overrides = [t for t in tokens[1:] if t != "-m"]
    # a sweep (a=1,2 outside brackets) composes as its first value
    overrides = [
        re.sub(r"^([^=\[{]+=)([^,\[{]+),.*$", r"\1\2", o) if "," in o and not re.search(r"=[\[{'\"]", o) else o
        for o in overrides
    ]
    if any(o.startswith("hydra/launcher=") for o in overrides):
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the `sweeps` extra")
    if any(o.startswith("hparams_search=") for o in overrides):
        pytest.importorskip("optuna", reason="the `sweeps` extra")
    prepare_omegaconf()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            compose(config_name, overrides=[*overrides, *extra], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
