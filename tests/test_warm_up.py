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


def test_the_warm_up_ignores_the_sites_limits_and_clears_an_interrupted_one(
    tmp_path: Path,
) -> None:
    # A site that accepts only short cines still warms up on the 30-frame sample; a folder left
    # by a start interrupted during the warm-up is cleared.
    settings = Settings(data_dir=tmp_path / "data", models=("key_frames",), max_cine_frames=10)
    left = tmp_path / "data" / "warm-up" / "cine"
    left.mkdir(parents=True)
    (left / "stale.dcm").write_bytes(b"x")
    record = warm_up(Models.load(settings), settings)
    assert record.source.frames == 30
    assert list((tmp_path / "data").iterdir()) == []
