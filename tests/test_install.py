"""A non-editable install (the wheel) carries the configs: tl-train runs from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    (built,) = out.glob("tl_lightning-*.whl")
    return built


def test_wheel_contains_the_config_tree(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(REPO).as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    assert shipped, "the repository has configs"
    assert {f"tl_lightning/{p}" for p in shipped} <= names
    assert "tl_lightning/conf/train.yaml" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "tl-train = tl_lightning.cli.train:main" in text and "tl-predict = tl_lightning.cli.predict:main" in text


def test_installed_tl_train_runs_from_another_directory(wheel: Path, tmp_path: Path) -> None:
    """Install the wheel (no dependencies: they are this environment's) into its own folder,
    put it first on the path, and run the installed console script far from the checkout."""
    from PIL import Image

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=600)
    work = tmp_path / "elsewhere"
    for label in ("a", "b"):
        (work / "imgs" / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), (60 * i, 0, 0) if label == "a" else (0, 0, 60 * i)).save(work / "imgs" / label / f"{i}.png")
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    probe = subprocess.run(
        [sys.executable, "-c", "import tl_lightning.cli as c; print(c.config_dir())"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()) == target / "tl_lightning" / "conf"
    script = target / "bin" / "tl-train"
    assert script.is_file()
    result = subprocess.run(
        [sys.executable, str(script), "experiment=tiny_image", "data.root=imgs", "trainer.fast_dev_run=true",
         "extras.print_config=false"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tl-train summary" in result.stdout
    runs = list((work / "outputs" / "tiny_image").glob("*/*/.hydra/config.yaml"))
    assert len(runs) == 1, "the run folder is created under the working directory"
