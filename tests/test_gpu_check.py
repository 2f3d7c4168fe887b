"""bench/gpu_check.py in its CPU smoke mode: it runs, measures the library against the hand loop and the
naive head-only loop, and writes its table and JSON (the GPU numbers come from a GPU machine)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_gpu_check_quick_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_check

    out = tmp_path / "gpu_check.json"
    code = gpu_check.main(["--device", "cpu", "--quick", "--models", "tiny ResNet (timm test_resnet)",
                           "--recipes", "head only,full", "--warmup", "1", "--steps", "1", "--no-sharded",
                           "--json", str(out), "--markdown"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["machine"].startswith("CPU") and "torch" in result["machine"]
    rows = {r["recipe"]: r for r in result["rows"]}
    assert set(rows) == {"head only", "full"}
    for row in rows.values():
        assert row["library"]["samples_per_s"] > 0 and row["hand"]["samples_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["library"]["samples_per_s"] / row["hand"]["samples_per_s"])
    head = result["head_only"]
    assert head["naive"] > 0 and head["library"] == rows["head only"]["library"]["samples_per_s"]
    printed = capsys.readouterr().out
    assert "| model | recipe | library samples/s | hand loop samples/s | library / hand |" in printed
    assert "| head-only phase | naive img/s |" in printed
    sys.modules.pop("gpu_check", None)
