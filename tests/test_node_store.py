"""One node per job store: a second one started on it refuses before it touches the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from lus_pacs.domain import Instance, JobState
from lus_pacs.errors import ConfigError
from lus_pacs.node import Node
from lus_pacs.pipeline import Models
from lus_pacs.settings import Settings


def test_a_second_node_on_the_same_store_refuses_and_the_first_keeps_its_cines(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, port=0, metrics_port=None, models=("b_lines",))
    models = Models.load(settings)
    first = Node(settings, models)
    cine = Instance("1.2.3.1", "1.2.840.10008.5.1.4.1.1.3.1", "1.2.3", "1.2.3.9", "SCU", tmp_path)
    first.store.jobs.record_instance(cine, models.key)
    assert first.store.jobs.claim(models.key) is not None  # a worker of the first node has it
    with pytest.raises(ConfigError, match="another node is running on the job store"):
        Node(settings, models)
    # Its start would have put the cine back in the queue, for a second worker to make again.
    assert [r.state for r in first.store.jobs.rows()] == [JobState.PROCESSING]
    first.stop()
    Node(settings, models).stop()  # once the first has stopped
