"""The store's one transaction helper: all or nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lus_pacs.queue.database import Database


def _crash_while_writing(db: Database) -> None:
    with db.transaction() as conn:
        conn.execute("INSERT INTO studies (study_instance_uid, last_received_at) VALUES ('7.7', 0)")
        raise RuntimeError("crash")


def test_a_transaction_that_raises_leaves_nothing_behind(tmp_path: Path) -> None:
    db = Database(tmp_path / "jobs.sqlite")
    with pytest.raises(RuntimeError, match="crash"):
        _crash_while_writing(db)
    with db.transaction() as conn:
        conn.execute("INSERT INTO studies (study_instance_uid, last_received_at) VALUES ('8.8', 0)")
    reopened = Database(tmp_path / "jobs.sqlite")
    rows = reopened.connection().execute("SELECT study_instance_uid FROM studies").fetchall()
    assert [r[0] for r in rows] == ["8.8"]


def test_a_store_made_by_an_older_node_gets_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE studies (study_instance_uid TEXT PRIMARY KEY, "
        "last_received_at REAL NOT NULL, complete INTEGER NOT NULL DEFAULT 0)"
    )
    old.execute("INSERT INTO studies VALUES ('7.7', 1.0, 1)")
    old.commit()
    old.close()
    db = Database(path)
    row = db.connection().execute("SELECT * FROM studies").fetchone()
    assert (row["study_instance_uid"], row["complete"], row["summarised"]) == ("7.7", 1, 0)
