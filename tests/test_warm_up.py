"""The warm-up a node runs before it listens: every enabled family on a simulated cine, and
nothing left behind."""

from __future__ import annotations

from pathlib import Path

from lus_pacs.pipeline import Models, warm_up
from lus_pacs.settings import Settings


def test_the_warm_up_runs_every_family_and_leaves_no_file(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    record = warm_up(Models.load(settings), settings)
    assert set(record.models) == set(settings.models)
    assert record.b_lines is not None
    assert record.severity is not None
    assert record.consolidation is not None
    assert record.segmentation is not None
    assert record.key_frames, "the key-frame model chose no frame"
    assert {o.kind for o in record.outputs} >= {"sr", "kos"}
    assert list((tmp_path / "data").iterdir()) == []
