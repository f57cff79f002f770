"""Durable files: a reader never sees half of one, also when two writers write one path at
once (a scanner that sends an instance twice on two associations)."""

from __future__ import annotations

import threading
from pathlib import Path

from lus_pacs.durable import durable_file


def test_two_writers_of_one_path_each_put_a_whole_file_in_place(tmp_path: Path) -> None:
    target = tmp_path / "incoming" / "1.2.3" / "1.2.3.4.dcm"  # folders made on the way
    failures: list[BaseException] = []

    def write(fill: int) -> None:
        try:
            for _ in range(100):
                with durable_file(target) as f:
                    f.write(bytes([fill]) * 50_000)
        except BaseException as exc:  # what the test reports
            failures.append(exc)

    writers = [threading.Thread(target=write, args=(fill,)) for fill in (1, 2)]
    for writer in writers:
        writer.start()
    torn = 0
    while any(w.is_alive() for w in writers):
        if target.exists():
            data = target.read_bytes()
            torn += len(data) != 50_000 or len(set(data)) != 1
    for writer in writers:
        writer.join()
    assert failures == []
    assert torn == 0
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary left


def test_a_failed_write_leaves_the_path_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "x.dcm"
    target.write_bytes(b"before")
    try:
        with durable_file(target) as f:
            f.write(b"half")
            raise OSError("disk full")
    except OSError:
        pass
    assert target.read_bytes() == b"before"
    assert [p.name for p in tmp_path.iterdir()] == ["x.dcm"]
