"""The store's one transaction helper: all or nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from lus_pacs.queue.database import Database


def _crash_while_writing(db: Database) -> None:
    with db.transaction() as conn:
        conn.execute("INSERT INTO studies VALUES ('7.7', 0, 0)")
        raise RuntimeError("crash")


def test_a_transaction_that_raises_leaves_nothing_behind(tmp_path: Path) -> None:
    db = Database(tmp_path / "jobs.sqlite")
    with pytest.raises(RuntimeError, match="crash"):
        _crash_while_writing(db)
    with db.transaction() as conn:
        conn.execute("INSERT INTO studies VALUES ('8.8', 0, 0)")
    reopened = Database(tmp_path / "jobs.sqlite")
    rows = reopened.connection().execute("SELECT study_instance_uid FROM studies").fetchall()
    assert [r[0] for r in rows] == ["8.8"]
