"""The network fuzz run (issue 19): ``lus-pacs serve`` as a process, attacked in every way a
hospital network has been seen to misbehave, each attack followed by a scanner's C-ECHO and a
good cine's C-STORE. The node must stay alive and correct, and nothing it acknowledged may be
lost: every instance answered 0x0000 is in the job store and processed."""

from __future__ import annotations

import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from lus_pacs.domain import JobState
from lus_pacs.queue.store import JobStore
from tests.node_process import SCANNER_AE, NodeProcess, echo, wait_for, write_config

pytestmark = pytest.mark.skipif(
    shutil.which("echoscu") is None, reason="dcmtk not installed (make install adds it)"
)

NETWORK_TIMEOUT_S = 2.0
"""The node's network and ACSE timeouts in this run: idle peers are dropped within seconds."""
SETTLE_S = NETWORK_TIMEOUT_S + 10.0
"""How long after an attack the node must answer again, at most (it drops idle peers after
``NETWORK_TIMEOUT_S``; with 3 s more the node once still refused, 7 s after 40 idle
connections, in a full suite run on two busy cores)."""


def _association_request_head(length: int = 1000) -> bytes:
    """The first bytes of an A-ASSOCIATE-RQ claiming ``length`` bytes: type, length, version,
    called and calling AE titles; its variable items never follow."""
    return (
        struct.pack(">BBIHH", 0x01, 0, length, 1, 0)
        + b"LUSPACS".ljust(16)
        + SCANNER_AE.encode().ljust(16)
        + bytes(32)
    )


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


class Attacks:
    """Each attack on the node at ``port``; sockets left open are closed by :meth:`close`."""

    def __init__(self, port: int, cine: Path, folder: Path) -> None:
        self.port = port
        self.cine = cine
        self.folder = folder
        self.held: list[socket.socket] = []
        self.acknowledged: list[str] = []
        """SOP Instance UIDs the node answered 0x0000."""
        self._lock = threading.Lock()

    def close(self) -> None:
        for s in self.held:
            s.close()
        self.held.clear()

    def random_bytes(self) -> None:
        rng = np.random.default_rng(1)
        for size in (1, 6, 4096, 100_000):
            with _connect(self.port) as s:
                s.sendall(rng.integers(0, 256, size, dtype=np.uint8).tobytes())

    def random_bytes_left_open(self) -> None:
        s = _connect(self.port)
        s.sendall(np.random.default_rng(2).integers(0, 256, 512, dtype=np.uint8).tobytes())
        self.held.append(s)

    def bogus_pdu_types(self) -> None:
        for pdu_type in (0x00, 0x08, 0x7F, 0xFF):
            with _connect(self.port) as s:
                s.sendall(struct.pack(">BBI", pdu_type, 0, 64) + bytes(64))

    def truncated_association_requests(self) -> None:
        head = _association_request_head()
        for cut in (3, 10, len(head)):
            s = _connect(self.port)
            s.sendall(head[:cut])
            self.held.append(s)

    def absurd_pdu_length(self) -> None:
        with _connect(self.port) as s:
            s.sendall(_association_request_head(length=0xFFFFFFF0))

    def idle_connections(self) -> None:
        self.held.extend(_connect(self.port) for _ in range(40))  # over max_associations

    def slow_drip(self) -> None:
        s = _connect(self.port)
        self.held.append(s)
        for byte in _association_request_head()[:6]:
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                # Dropped by the node: still counting some of the forty idle connections
                # closed before it (its per-peer limit), or past its network timeout on cores
                # too busy to drip in time (a full run once was). The attack is over; the
                # test goes on to the C-ECHO and the push.
                return
            time.sleep(0.5)

    def aborted_associations(self) -> None:
        for _ in range(3):
            assoc = _scanner(self.cine).associate("127.0.0.1", self.port, ae_title="LUSPACS")
            assert assoc.is_established
            assoc.abort()
        # ... and one aborted while its cine is on the wire (its answer never comes).
        assoc = _scanner(self.cine, timeout=2).associate("127.0.0.1", self.port, ae_title="LUSPACS")
        uid = generate_uid()
        ds = _copy(self.cine, uid)
        threading.Timer(0.02, assoc.abort).start()
        status = assoc.send_c_store(ds)
        if status and int(status.Status) == 0:
            self._acknowledged(uid)

    def dataset_cut_mid_element(self) -> None:
        uid = generate_uid()
        ds = _copy(self.cine, uid)
        whole = self.folder / f"{uid}.dcm"
        ds.save_as(whole, enforce_file_format=True)
        data = whole.read_bytes()
        whole.write_bytes(data[: len(data) // 2 + 3])  # inside the Pixel Data's fragments
        assoc = _scanner(self.cine).associate("127.0.0.1", self.port, ae_title="LUSPACS")
        assert assoc.is_established
        _config.STORE_SEND_CHUNKED_DATASET = True  # the file's bytes as they are, not parsed
        try:
            status = assoc.send_c_store(whole)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
            assoc.release()
        if status and int(status.Status) == 0:
            self._acknowledged(uid)

    def unknown_calling_ae(self) -> None:
        ae = AE(ae_title="INTRUDER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", self.port, ae_title="LUSPACS")
        assert assoc.is_rejected

    def storm_of_scanners(self) -> None:
        with ThreadPoolExecutor(12) as pool:
            list(pool.map(lambda _: self.push(), range(12)))  # any failure raises here

    def push(self, retry_for: float = 0.0) -> str:
        """A good cine under a new SOP Instance UID; returns it once acknowledged. A scanner
        refused an association tries again for ``retry_for`` seconds, as real ones do."""
        uid = generate_uid()
        deadline = time.monotonic() + retry_for
        while True:
            assoc = _scanner(self.cine).associate("127.0.0.1", self.port, ae_title="LUSPACS")
            if assoc.is_established or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        assert assoc.is_established, "a scanner could not associate"
        try:
            status = assoc.send_c_store(_copy(self.cine, uid))
        finally:
            assoc.release()
        assert status, "no answer to a good cine"
        assert int(status.Status) == 0, status
        self._acknowledged(uid)
        return uid

    def _acknowledged(self, uid: str) -> None:
        with self._lock:
            self.acknowledged.append(uid)


def _scanner(cine: Path, timeout: float = 10) -> AE:
    ae = AE(ae_title=SCANNER_AE)
    syntax = pydicom.dcmread(cine, stop_before_pixels=True).file_meta.TransferSyntaxUID
    ae.add_requested_context(pydicom.uid.UltrasoundMultiFrameImageStorage, syntax)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def _copy(cine: Path, uid: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(cine)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(uid)
    return ds


ATTACKS: list[str] = [
    "random_bytes",
    "random_bytes_left_open",
    "bogus_pdu_types",
    "truncated_association_requests",
    "absurd_pdu_length",
    "idle_connections",
    "slow_drip",
    "aborted_associations",
    "dataset_cut_mid_element",
    "unknown_calling_ae",
    "storm_of_scanners",
]


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, synth_exams: Path
) -> Iterator[tuple[NodeProcess, Attacks]]:
    folder = tmp_path_factory.mktemp("fuzz")
    exam = sorted(p for p in synth_exams.iterdir() if p.is_dir())[0]
    config = write_config(
        folder,
        None,
        models=["b_lines"],
        output_kinds=["sr"],
        network_timeout_s=NETWORK_TIMEOUT_S,
        acse_timeout_s=NETWORK_TIMEOUT_S,
        max_associations=16,
    )
    process = NodeProcess(config)
    process.start()
    attacks = Attacks(process.port, sorted(exam.glob("*.dcm"))[0], folder)
    try:
        yield process, attacks
    finally:
        attacks.close()
        process.stop()


def _answers(port: int) -> bool:
    return echo(port).returncode == 0


@pytest.mark.parametrize("attack", ATTACKS)
def test_the_node_answers_and_stores_after_each_attack(
    node: tuple[NodeProcess, Attacks], attack: str
) -> None:
    process, attacks = node
    run: Callable[[], None] = getattr(attacks, attack)
    try:
        run()
        wait_for(lambda: _answers(process.port), SETTLE_S, f"C-ECHO after {attack}")
    finally:  # the next attack does not meet this one's open connections
        attacks.close()
    # The node counts a closed peer's association until its thread has seen the close: right
    # after closing sixteen, the next one from this address can still meet the per-peer limit.
    wait_for(lambda: _answers(process.port), SETTLE_S, f"C-ECHO after closing {attack}")
    # The C-ECHO's own association can still be counted then: on two busy cores the push right
    # after it once met the limit again (CI, after forty idle connections).
    attacks.push(retry_for=SETTLE_S)
    assert process.alive()
    assert "Traceback" not in process.log_text(), process.log_text()[-3000:]


def test_a_burst_of_connections_is_connected_at_once(node: tuple[NodeProcess, Attacks]) -> None:
    # pynetdicom listens with socketserver's backlog of 5: the kernel then dropped the rest of
    # a burst of 40 until the peers' SYN retries, 6.1 s to connect them all, and they reached
    # the node in bunches seconds apart (the node now listens with a backlog of 128).
    process, attacks = node
    start = time.monotonic()
    attacks.idle_connections()
    assert time.monotonic() - start < 1.0  # no connection waited for a SYN retry (1 s)
    wait_for(lambda: _answers(process.port), SETTLE_S, "C-ECHO after a burst")
    attacks.close()


def test_nothing_acknowledged_was_lost(node: tuple[NodeProcess, Attacks]) -> None:
    process, attacks = node
    assert len(attacks.acknowledged) >= len(ATTACKS)
    store = JobStore(process.config.parent / "node" / "jobs.sqlite")

    def settled() -> bool:
        counts = store.jobs.counts()
        return not counts.get(JobState.QUEUED) and not counts.get(JobState.PROCESSING)

    wait_for(settled, 240, "every acknowledged cine processed")
    jobs = {row.sop_instance_uid: row for row in store.jobs.rows()}
    for uid in attacks.acknowledged:
        assert uid in jobs, f"{uid} was acknowledged and is not in the job store"
        row = jobs[uid]
        # Processed; one cut short on the wire fails with its reason, never silently.
        assert row.state is JobState.SENT or (row.state is JobState.FAILED and row.error), row
    assert process.alive()
    # The log is an operator's: no flood of one complaint per 6 bytes of garbage.
    assert process.log_text().count("Unknown PDU type") < 50
