"""Secure defaults of the listener and its audit trail, on loopback with dcmtk and pynetdicom:
no open listener on the network without an allow-list, calling AE titles bound to addresses,
the called AE title checked, and a JSON line for every association, instance and refusal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file

from lus_pacs.domain import Received
from lus_pacs.errors import ConfigError
from lus_pacs.ingest.audit import AuditEvent, AuditLog
from lus_pacs.ingest.scp import Listener, check_exposure, start_listener
from lus_pacs.settings import Settings
from tests.ingest.test_scp import US_IMAGE, _dcmtk, _echo
from tests.tools import run_cli


def _start(settings: Settings, audit: AuditLog | None = None) -> Listener:
    return start_listener(
        settings,
        record=lambda _: Received.NEW,
        on_stored=lambda: None,
        on_study_complete=lambda _: None,
        audit=audit,
    )


def _lines(audit: AuditLog) -> list[dict[str, Any]]:
    return [json.loads(line) for line in audit.path.read_text().splitlines()]


def test_every_address_without_an_allow_list_is_refused_with_the_fix_named(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as refused:
        _start(Settings(data_dir=tmp_path, host="0.0.0.0", port=0))
    message = str(refused.value)
    assert "allowed_calling_aes" in message
    assert "accept_any_calling_ae = true" in message
    # Either way out opens it; loopback needs neither.
    for settings in (
        Settings(data_dir=tmp_path, host="0.0.0.0", port=0, accept_any_calling_ae=True),
        Settings(data_dir=tmp_path, host="0.0.0.0", port=0, allowed_calling_aes=("US1",)),
        Settings(data_dir=tmp_path, host="0.0.0.0", port=0, calling_ae_hosts={"US1": ("::1",)}),
        Settings(data_dir=tmp_path, host="127.0.0.1", port=0),
        Settings(data_dir=tmp_path, host="localhost", port=0),
    ):
        check_exposure(settings)
    with pytest.raises(ConfigError):
        check_exposure(Settings(data_dir=tmp_path, host="", port=0))  # every address too


def test_serve_on_every_address_without_an_allow_list_exits_naming_the_fix(
    tmp_path: Path,
) -> None:
    config = tmp_path / "open.toml"
    config.write_text(f'host = "0.0.0.0"\nport = 0\ndata_dir = "{tmp_path / "node"}"\n')
    done = run_cli("serve", "--config", str(config), check=False)
    assert done.returncode == 2
    assert "accept_any_calling_ae = true" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_in_the_container_on_loopback_exits_naming_the_fix(tmp_path: Path) -> None:
    """A settings file mounted over config/container.toml without host fell back to loopback:
    the published port reached nothing, while the health check (over loopback) stayed green."""
    import os
    import subprocess
    import sys

    with pytest.MonkeyPatch.context() as env:
        env.setenv("LUS_PACS_IN_CONTAINER", "1")
        with pytest.raises(ConfigError, match="inside the container"):
            check_exposure(Settings(data_dir=tmp_path, port=0, allowed_calling_aes=("US1",)))
    config = tmp_path / "mine.toml"
    config.write_text(f'allowed_calling_aes = ["US1"]\ndata_dir = "{tmp_path / "node"}"\n')
    exe = Path(sys.executable).with_name("lus-pacs")
    done = subprocess.run(
        [str(exe), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "LUS_PACS_IN_CONTAINER": "1"},
    )
    assert done.returncode == 2, done.stderr
    assert 'Set host = "0.0.0.0"' in done.stderr
    assert "Traceback" not in done.stderr
    check_exposure(Settings(data_dir=tmp_path, port=0))  # outside the container: loopback is fine


def test_an_ae_title_bound_to_other_addresses_is_rejected_and_audited(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    elsewhere = Settings(data_dir=tmp_path, port=0, calling_ae_hosts={"SCANNER": ("10.11.12.13",)})
    listener = _start(elsewhere, audit)
    try:
        assert _echo(listener.port) is None
        assert _echo(listener.port, calling_ae="OTHER") is None  # the title list is enforced
    finally:
        listener.stop()
    here = Settings(data_dir=tmp_path, port=0, calling_ae_hosts={"SCANNER": ("127.0.0.1",)})
    listener = _start(here, audit)
    try:
        assert _echo(listener.port) == 0
    finally:
        listener.stop()
    associations = [line for line in _lines(audit) if line["event"] == "association"]
    assert [(a["calling_ae"], a["outcome"]) for a in associations] == [
        ("SCANNER", "rejected"),
        ("OTHER", "rejected"),
        ("SCANNER", "accepted"),
    ]
    assert "only from 10.11.12.13" in associations[0]["reason"]
    assert associations[1]["reason"] == "calling AE title not recognised"
    assert all(a["address"] == "127.0.0.1" for a in associations)


def test_a_scanner_at_the_wrong_address_reads_a_rejection_not_an_abort(tmp_path: Path) -> None:
    """The rejection was sent as the association closed its socket: dcmtk read "peer aborted
    association" (a network fault, retried) five times in five, not the calling AE title not
    recognised (a setting to correct)."""
    elsewhere = Settings(data_dir=tmp_path, port=0, calling_ae_hosts={"SCANNER": ("10.11.12.13",)})
    listener = _start(elsewhere)
    try:
        for _ in range(3):
            refused = _dcmtk("echoscu", listener.port)
            said = refused.stdout + refused.stderr
            assert refused.returncode != 0
            assert "Calling AE Title Not Recognized" in said, said
            assert "Peer aborted" not in said
    finally:
        listener.stop()


def test_a_scanner_bound_to_an_ipv4_address_gets_into_a_dual_stack_listener(
    tmp_path: Path,
) -> None:
    """With host = "::" an IPv4 scanner is seen as ::ffff:127.0.0.1, which never matched the
    127.0.0.1 it was bound to: every bound scanner was locked out."""
    here = Settings(
        data_dir=tmp_path, host="::", port=0, calling_ae_hosts={"SCANNER": ("127.0.0.1",)}
    )
    listener = _start(here)
    try:
        assert _echo(listener.port) == 0
    finally:
        listener.stop()


def test_an_association_calling_another_ae_title_is_rejected(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    listener = _start(Settings(data_dir=tmp_path, port=0, allowed_calling_aes=("SCANNER",)), audit)
    try:
        port = listener.port
        right = _dcmtk("echoscu", port)
        wrong = _dcmtk("echoscu", port, options=("-aec", "SOMEONE"))
    finally:
        listener.stop()
    assert right.returncode == 0
    assert wrong.returncode != 0
    (rejected,) = [line for line in _lines(audit) if line["outcome"] == "rejected"]
    assert rejected["reason"] == "called AE title not recognised"
    assert rejected["called_ae"] == "SOMEONE"


def test_the_audit_trail_has_a_line_per_instance_and_refusal(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    listener = _start(Settings(data_dir=tmp_path, port=0, allowed_calling_aes=("SCANNER",)), audit)
    try:
        stored = _dcmtk("storescu", listener.port, str(US_IMAGE))
        refused = _dcmtk("storescu", listener.port, str(get_testdata_file("CT_small.dcm")))
        intruder = _dcmtk("echoscu", listener.port, aet="INTRUDER")
    finally:
        listener.stop()
    assert stored.returncode == 0
    assert refused.returncode != 0
    assert intruder.returncode != 0
    lines = _lines(audit)
    instances = [line for line in lines if line["event"] == "instance"]
    assert [(i["outcome"], i["status"]) for i in instances] == [
        ("new", "0x0000"),
        ("refused", "0x0122"),
    ]
    assert instances[0]["patient_id"]
    assert instances[0]["study_instance_uid"]
    assert "not processed" in instances[1]["reason"]
    rejected = [line for line in lines if line["outcome"] == "rejected"]
    assert [r["calling_ae"] for r in rejected] == ["INTRUDER"]
    assert all(line["time"].endswith("+00:00") for line in lines)


def test_the_audit_file_is_rotated_and_never_rewritten(tmp_path: Path) -> None:
    from lus_pacs.ingest.audit import AuditEvent

    audit = AuditLog(tmp_path / "audit.jsonl", max_bytes=1024, backups=3)
    for i in range(40):
        audit.write(AuditEvent.INSTANCE, "new", sop_instance_uid=f"1.2.{i}", reason=None)
    audit.close()
    files = sorted(tmp_path.glob("audit.jsonl*"))
    assert [f.name for f in files] == [
        "audit.jsonl",
        "audit.jsonl.1",
        "audit.jsonl.2",
        "audit.jsonl.3",
    ]
    newest = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert newest[-1]["sop_instance_uid"] == "1.2.39"
    assert "reason" not in newest[-1]  # None facts are left out
    assert all(f.stat().st_size <= 1024 for f in files)


def test_an_audit_observer_that_fails_loses_no_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[str, str]] = []

    def observe(event: AuditEvent, outcome: str) -> None:
        seen.append((event.value, outcome))
        raise RuntimeError("the metrics registry is gone")

    audit = AuditLog(tmp_path / "audit.jsonl", observe=observe)
    audit.write(AuditEvent.CONNECTION, "refused", address="10.0.0.9")
    audit.write(AuditEvent.RESULT, "sent", destination="pacs")
    assert seen == [("connection", "refused"), ("result", "sent")]
    assert [(line["event"], line["outcome"]) for line in _lines(audit)] == seen
    # Said as what failed: the count, not the line.
    assert "Could not count the audit line" in caplog.text
    assert "Could not write" not in caplog.text


def test_a_rotation_that_fails_loses_no_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """logging's handler prints its errors and goes on: after a rotation failed once (a
    backup's name taken), every later line was lost, and counted in the metrics as written."""
    counted: list[str] = []
    (tmp_path / "audit.jsonl.1" / "taken").mkdir(parents=True)  # in the backups' way
    audit = AuditLog(
        tmp_path / "audit.jsonl", max_bytes=1024, backups=2, observe=lambda e, o: counted.append(o)
    )
    for i in range(40):
        audit.write(AuditEvent.INSTANCE, "new", sop_instance_uid=f"1.2.{i}")
    audit.close()
    kept = [
        json.loads(line)["sop_instance_uid"]
        for path in sorted(tmp_path.glob("audit.jsonl*"), reverse=True)
        if path.is_file()
        for line in path.read_text().splitlines()
    ]
    assert kept == [f"1.2.{i}" for i in range(40)]
    assert len(counted) == 40
    assert "Could not rotate the audit trail" in caplog.text
