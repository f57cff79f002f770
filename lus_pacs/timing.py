"""Timing runs side by side, as the benchmarks under ``bench/`` do: machines are noisy, so
runs alternate in one process and the medians are compared."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def side_by_side(runs: Mapping[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds of each run: each is warmed up once, then all run in turn ``repeat``
    times."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()
    for _ in range(repeat):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
