"""How many pixels the node's workers may hold decoded at once.

With two workers or more, two long cines processed side by side would each hold their decoded
frames and the models' inputs: the node's memory would be that of both. :class:`PixelBudget`
lets a worker start a cine only while the cines in process hold at most ``limit`` pixels
together; a cine larger than the budget waits until nothing else is in process and then runs
alone, so the node's peak stays that of one long cine (``bench/memory.py``). Workers are served
in the order they asked: a waiting long cine is not overtaken by the short ones behind it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class PixelBudget:
    """Pixels (frames x rows x columns) of the cines in process, held against ``limit``."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the pixel budget must be positive, got {limit}.")
        self.limit = limit
        self._held = 0
        self._holders = 0
        self._waiting: deque[object] = deque()
        self._changed = threading.Condition()

    @property
    def held(self) -> int:
        """Pixels held now."""
        with self._changed:
            return self._held

    @property
    def waiting(self) -> int:
        """Workers waiting for room."""
        with self._changed:
            return len(self._waiting)

    @contextmanager
    def hold(self, pixels: int) -> Iterator[Hold]:
        """Wait for room for ``pixels`` (or, when they exceed the budget, for every other
        holder to finish), hold them while the block runs, then give them back (or before,
        with :meth:`Hold.release`)."""
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
            try:
                self._changed.wait_for(lambda: self._waiting[0] is ticket and self._fits(pixels))
            finally:  # in line no more, whether it got the pixels or was interrupted
                self._waiting.remove(ticket)
                self._changed.notify_all()  # the next in line may fit too
            self._held += pixels
            self._holders += 1
        held = Hold(self, pixels)
        try:
            yield held
        finally:
            held.release()

    def _give_back(self, pixels: int) -> None:
        with self._changed:
            self._held -= pixels
            self._holders -= 1
            self._changed.notify_all()

    def is_long(self, pixels: int) -> bool:
        """A cine of more than half the budget: after one the node gives the heap's free memory
        back, so that the next long cine does not start above its leftovers."""
        return 2 * pixels > self.limit

    def _fits(self, pixels: int) -> bool:
        return self._holders == 0 or self._held + pixels <= self.limit


class Hold:
    """Pixels held against a :class:`PixelBudget`; given back once, by :meth:`release` or at
    the end of :meth:`PixelBudget.hold`'s block."""

    def __init__(self, budget: PixelBudget, pixels: int) -> None:
        self._budget = budget
        self._pixels = pixels
        self._lock = threading.Lock()
        self._released = False

    def release(self) -> None:
        """Give the pixels back now (a cine given up while its worker hangs on it: its hold
        stopped every cine that did not fit beside it, the whole node, until a restart)."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._budget._give_back(self._pixels)
