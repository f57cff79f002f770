"""Thread pools of the inference runtime, sized for one worker among several, and the C
allocator of a process that runs the models."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
from pathlib import Path
from typing import Any

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_threads(threads: int) -> None:
    """Every thread pool of a worker (BLAS, OpenCV, torch) sized to its share of the cores,
    so that workers do not compete for them; Ray does the same for its own workers."""
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    import cv2
    import torch

    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # allowed once, before any parallel work
        torch.set_num_interop_threads(1)


def threads_per_worker(workers: int) -> int:
    """Each worker's share of the cores this process may use (at least one)."""
    return max(1, available_cores() // workers)


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
"""A container's CPU quota (cgroup v2): ``max 100000``, or ``200000 100000`` for two cores."""


def available_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may run on (its CPU affinity), fewer where its container's CPU
    quota allows fewer (``podman run --cpus 2`` on a 16-core host: 2)."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cores = len(affinity) if affinity else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 quota to read: the affinity holds
        pass
    return cores


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
"""glibc's ``mallopt`` parameters (malloc.h)."""
LARGE_BUFFER_BYTES = 16 << 20
"""Buffers from this size up are mapped for themselves and unmapped when freed."""
KEPT_FREE_BYTES = 128 << 20
"""Free memory at the top of the heap above this goes back to the system."""


def compact_allocator() -> bool:
    """Keep glibc's malloc from holding on to what the models freed: one arena for every
    thread (glibc gives each thread that allocates its own, up to eight per core, and each keeps
    its freed memory), buffers of :data:`LARGE_BUFFER_BYTES` and more mapped and unmapped for
    themselves (glibc's default raises that threshold to 32 MB as large buffers come and go,
    which keeps them all on the heaps), and the heap trimmed above :data:`KEPT_FREE_BYTES`.

    Call it before the worker threads start. On bench/realtime.py's exam with two workers the
    node's peak memory was 0.81-0.88 GB instead of 1.03-1.11 when it was introduced (0.86-0.94
    GB with the models and settings of 8d2db5b). The trim threshold is 128 MB, not
    32 as first chosen: at 32 the top of the heap went back to the system and was faulted in
    again as the two workers' cines came and went (270 ``brk`` calls and 0.3-0.5 M page faults
    over the exam, against 25-60 k), which made the exam about 5 % slower (6.27-6.58 against
    6.52-6.99 s, three alternate runs) for the same peak.
    Returns False where the C library is not glibc (nothing changed).
    """
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    settings = (
        (_M_ARENA_MAX, 1),
        (_M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES),
        (_M_TRIM_THRESHOLD, KEPT_FREE_BYTES),
    )
    applied = [mallopt(parameter, value) == 1 for parameter, value in settings]
    return all(applied)


def release_free_memory() -> bool:
    """Give the free memory of glibc's heap back to the system now (``malloc_trim``), also
    what :data:`KEPT_FREE_BYTES` keeps: the node calls it after a cine that held more than half
    of its pixel budget, so that the next long cine does not start above the last one's
    leftovers (bench/memory.py --together: 1.46 GB without it, 1.37 with it), and after its
    warm-up. Returns False where the C library is not glibc."""
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


def _glibc(function: str) -> Any | None:
    """glibc's ``function``, None where the C library is another."""
    try:
        return getattr(ctypes.CDLL("libc.so.6"), function)
    except (OSError, AttributeError):
        return None


def prepare_workers(workers: int) -> None:
    """Set up a process that will run the models on ``workers`` threads, before they load
    (their runtime sizes its thread pools by torch's): glibc's malloc kept compact
    (:func:`compact_allocator`), then each worker's share of the cores. ``lus-pacs serve`` and
    ``lus-pacs demo`` call it, as the benchmarks do."""
    compact_allocator()
    limit_threads(threads_per_worker(workers))
