"""The job store: every received instance, its processing job, each delivery of its results and
the studies they belong to, in one SQLite database (see :mod:`.database`).

Every state change is one committed row update, so a restart resumes where a crash left off,
and a result is made and sent once per source instance and model version. The store has one
part per concern, all over the same database: :mod:`.jobs`, :mod:`.deliveries`,
:mod:`.studies`.
"""

from __future__ import annotations

from pathlib import Path

from lus_pacs.queue.database import Database
from lus_pacs.queue.deliveries import Deliveries
from lus_pacs.queue.jobs import Jobs
from lus_pacs.queue.studies import Studies


class JobStore:
    """The node's durable state. Safe to use from several threads.

    Attributes
    ----------
    jobs:
        Received instances and the processing queue.
    deliveries:
        Result files on their way to each destination.
    studies:
        Study completion, records and summaries.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = Database(path)
        self.jobs = Jobs(self._db)
        self.deliveries = Deliveries(self._db)
        self.studies = Studies(self._db)

    def close(self) -> None:
        """Close this thread's connection to the database."""
        self._db.close()
