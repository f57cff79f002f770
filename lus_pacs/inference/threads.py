"""Thread pools of the inference runtime, sized for one worker among several."""

from __future__ import annotations

import contextlib
import os

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
    """Each worker's share of the cores this process may run on (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)
