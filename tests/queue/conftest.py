"""What the job store's tests share: a store in a temporary folder and instances to record."""

from __future__ import annotations

from pathlib import Path

import pytest

from lus_pacs.domain import Instance
from lus_pacs.queue.store import JobStore


def instance(n: int, study: str = "1.2.3") -> Instance:
    return Instance(
        f"1.2.3.{n}", "1.2.840.10008.5.1.4.1.1.3.1", study, "1.2.3.9", "SCU", Path(f"{n}.dcm")
    )


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite")
