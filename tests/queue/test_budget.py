"""The pixel budget of the node's workers: short cines side by side, a long one alone."""

from __future__ import annotations

import threading
import time

import pytest

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


def _settle() -> None:
    time.sleep(0.1)


def test_cines_within_the_budget_run_side_by_side() -> None:
    budget, log = PixelBudget(100), list[str]()
    a = _Worker(budget, 40, log, "a")
    b = _Worker(budget, 50, log, "b")
    _settle()
    assert sorted(log) == ["+a", "+b"]
    assert budget.held == 90
    a.release()
    b.release()
    assert budget.held == 0


def test_a_long_cine_waits_for_the_others_runs_alone_and_is_not_overtaken() -> None:
    budget, log = PixelBudget(100), list[str]()
    short = _Worker(budget, 40, log, "short")
    _settle()
    long = _Worker(budget, 300, log, "long")  # more than the whole budget
    _settle()
    later = _Worker(budget, 10, log, "later")  # would fit, but the long one asked first
    _settle()
    assert log == ["+short"]
    short.release()
    _settle()
    assert log == ["+short", "+long"]  # alone: "later" still waits
    assert budget.held == 300
    long.release()
    _settle()
    assert log == ["+short", "+long", "+later"]
    later.release()
    assert budget.held == 0


def test_a_failing_cine_gives_its_pixels_back() -> None:
    budget = PixelBudget(10)
    with pytest.raises(RuntimeError), budget.hold(8):
        raise RuntimeError("the cine failed")
    assert budget.held == 0
    with pytest.raises(ValueError, match="positive"):
        PixelBudget(0)
