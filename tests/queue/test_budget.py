"""The pixel budget of the node's workers: short cines side by side, a long one alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from lus_pacs.node import stored_pixels
from lus_pacs.queue.budget import PixelBudget


class _Worker:
    """A thread holding ``pixels`` until released; ``log`` gets "+name" when it gets them."""

    def __init__(self, budget: PixelBudget, pixels: int, log: list[str], name: str) -> None:
        self.released = threading.Event()

        def run() -> None:
            with budget.hold(pixels):
                log.append(f"+{name}")
                self.released.wait(5)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def release(self) -> None:
        self.released.set()
        self.thread.join(5)


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "the workers did not get there"
        time.sleep(0.005)


def test_cines_within_the_budget_run_side_by_side() -> None:
    budget, log = PixelBudget(100), list[str]()
    a = _Worker(budget, 40, log, "a")
    b = _Worker(budget, 50, log, "b")
    _until(lambda: len(log) == 2)
    assert sorted(log) == ["+a", "+b"]
    assert budget.held == 90
    a.release()
    b.release()
    assert budget.held == 0


def test_a_long_cine_waits_for_the_others_runs_alone_and_is_not_overtaken() -> None:
    budget, log = PixelBudget(100), list[str]()
    short = _Worker(budget, 40, log, "short")
    _until(lambda: log == ["+short"])
    long = _Worker(budget, 300, log, "long")  # more than the whole budget
    _until(lambda: budget.waiting == 1)
    later = _Worker(budget, 10, log, "later")  # would fit, but the long one asked first
    _until(lambda: budget.waiting == 2)
    assert log == ["+short"]
    short.release()
    _until(lambda: len(log) == 2)
    assert log == ["+short", "+long"]  # alone: "later" still waits
    assert (budget.held, budget.waiting) == (300, 1)
    long.release()
    _until(lambda: len(log) == 3)
    assert log == ["+short", "+long", "+later"]
    later.release()
    assert budget.held == 0


def test_a_cine_over_half_the_budget_is_long() -> None:
    budget = PixelBudget(100)
    assert not budget.is_long(50)
    assert budget.is_long(51)


def test_a_failing_cine_gives_its_pixels_back() -> None:
    budget = PixelBudget(10)
    with pytest.raises(RuntimeError), budget.hold(8):
        raise RuntimeError("the cine failed")
    assert budget.held == 0
    with pytest.raises(ValueError, match="positive"):
        PixelBudget(0)


def test_a_cine_counts_its_frames_rows_and_columns(tmp_path: Path) -> None:
    ds = pydicom.dcmread(str(get_testdata_file("emri_small.dcm")))  # 10 frames of 64 x 64
    ds.save_as(tmp_path / "cine.dcm")
    assert stored_pixels(tmp_path / "cine.dcm") == 10 * 64 * 64
    # Without Number of Frames the decoder reads what the Pixel Data holds: the file's size
    # stands in, never one frame only.
    del ds.NumberOfFrames
    ds.save_as(tmp_path / "unnumbered.dcm")
    assert stored_pixels(tmp_path / "unnumbered.dcm") >= 10 * 64 * 64
    (tmp_path / "damaged.dcm").write_bytes(b"not DICOM at all")
    assert stored_pixels(tmp_path / "damaged.dcm") == 0  # fails later, with its reason
