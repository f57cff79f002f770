"""Durable files: a reader never sees half of one, also when two writers write one path at
once (a scanner that sends an instance twice on two associations)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lus_pacs import durable
from lus_pacs.domain import OutputKind
from lus_pacs.durable import durable_file
from lus_pacs.encode.files import write_outputs
from lus_pacs.node import Node
from lus_pacs.settings import Settings
from tests.tools import write_cine


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


def test_a_new_results_folder_is_synced_in_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_outputs made the study's folder with a plain mkdir, so durable_file found it
    there and never synced its entry: after a power cut, a job recorded as made could have
    lost its result files."""
    synced: list[Path] = []
    real = durable._sync_folder

    def spied(folder: Path) -> None:
        synced.append(folder)
        real(folder)

    monkeypatch.setattr(durable, "_sync_folder", spied)
    ds = pydicom.dcmread(write_cine(tmp_path / "c.dcm", np.zeros((1, 8, 8), np.uint8), "explicit"))
    write_outputs([(OutputKind.SR, ds)], tmp_path / "results" / "1.2.3")
    assert tmp_path / "results" in synced  # the new folder's entry
    assert tmp_path / "results" / "1.2.3" in synced  # the file's


def test_half_written_files_are_removed_when_the_node_starts(tmp_path: Path) -> None:
    """A writer killed mid-write (a crash, a power cut) leaves its temporary file, up to a
    cine's size, which nothing removed."""
    settings = Settings(data_dir=tmp_path, port=0, metrics_port=None, models=("b_lines",))
    left = [
        settings.incoming_dir / "1.2.3" / ".1.2.3.4-ab.dcm.0123456789ab.part",
        settings.results_dir / "1.2.3" / ".sr-1.2.3.5.dcm.0123456789ab.part",
    ]
    kept = settings.incoming_dir / "1.2.3" / "1.2.3.4-ab.dcm"
    # A prune killed between moving a file aside and judging it left it aside.
    aside = settings.incoming_dir / "1.2.3" / ".1.2.3.6-cd.dcm.pruning"
    for path in (*left, kept, aside):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
    node = Node(settings)
    node.start()
    try:
        assert not any(path.exists() for path in left)
        assert kept.exists()
        assert (settings.incoming_dir / "1.2.3" / "1.2.3.6-cd.dcm").exists()
        assert not aside.exists()
    finally:
        node.stop()
