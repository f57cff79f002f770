"""A worker process's thread pools and C allocator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lus_pacs.inference.threads import available_cores, threads_per_worker

RETAINED = """
import sys
import numpy as np
from lus_pacs.inference.threads import compact_allocator, release_free_memory

def resident():
    status = open("/proc/self/status").read().split("VmRSS:")[1]
    return int(status.split()[0]) * 1024

if sys.argv[1] != "default":
    assert compact_allocator(), "mallopt refused a setting"
before = resident()
if sys.argv[1] in ("default", "compact"):
    for _ in range(3):  # a model's large buffer, made and freed cine after cine
        buffer = np.ones(20 << 20, np.uint8)
        del buffer
else:  # a long cine's many smaller buffers, on the heap, all freed at its end
    buffers = [np.ones(1 << 20, np.uint8) for _ in range(60)]
    del buffers
    if sys.argv[1] == "released":
        assert release_free_memory()
print((resident() - before) >> 20)
"""


def _retained_mb(mode: str) -> int:
    # glibc reads MALLOC_* variables at start: the child starts from its defaults.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", RETAINED, mode], capture_output=True, text=True, check=True, env=env
    )
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc")
def test_the_compact_allocator_gives_freed_buffers_back() -> None:
    # glibc by default keeps a freed 20 MB buffer on its heap once it has seen one come and go
    # (its mmap threshold rises); the node's setting gives it back to the system.
    assert _retained_mb("default") >= 15
    assert _retained_mb("compact") <= 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc")
def test_what_the_heap_keeps_free_goes_back_when_asked() -> None:
    # Up to 128 MB of free heap is kept between cines (faulting it in again at every call was
    # slower); after a long cine the node gives it back.
    assert _retained_mb("kept") >= 50
    assert _retained_mb("released") <= 5


def test_each_worker_gets_its_share_of_the_cores() -> None:
    cores = available_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert threads_per_worker(1) == cores
    assert threads_per_worker(cores) == 1
    assert threads_per_worker(cores + 1) == 1  # never none


def test_a_container_quota_caps_the_cores(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    affinity = len(os.sched_getaffinity(0))
    cpu_max.write_text("max 100000\n")  # no quota
    assert available_cores(cpu_max) == affinity
    cpu_max.write_text("150000 100000\n")  # one and a half cores: two threads
    assert available_cores(cpu_max) == min(affinity, 2)
    cpu_max.write_text("50000 100000\n")
    assert available_cores(cpu_max) == 1
    assert available_cores(tmp_path / "absent") == affinity
