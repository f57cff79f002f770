from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_metrics.py"


def _bundle(folder: Path, metrics: dict[str, float | None]) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "metadata.json").write_text(json.dumps({"eval_metrics": metrics}))
    return folder


def _compare(a: Path, b: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True, check=False
    )


def test_within_tolerance_passes_and_beyond_fails(tmp_path: Path) -> None:
    shipped = _bundle(tmp_path / "shipped", {"clip_f1": 0.95, "clip_n": 48, "clip_auc": None})
    close = _bundle(tmp_path / "close", {"clip_f1": 0.93, "clip_n": 48, "clip_auc": None})
    far = _bundle(tmp_path / "far", {"clip_f1": 0.90, "clip_n": 48, "clip_auc": None})
    recount = _bundle(tmp_path / "recount", {"clip_f1": 0.95, "clip_n": 47, "clip_auc": None})
    ok = _compare(close, shipped)
    assert ok.returncode == 0, ok.stdout
    assert "2 of 2 metrics reproduced" in ok.stdout
    bad = _compare(far, shipped)
    assert bad.returncode == 1
    assert "FAIL clip_f1" in bad.stdout
    assert _compare(recount, shipped).returncode == 1  # counts must match exactly
