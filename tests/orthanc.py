"""A real Orthanc (the test PACS) on free loopback ports, for tests that send to or query a PACS.

Started with ``dicom_nodes/orthanc/start.sh``, checked over its REST API with the standard library
only. ``stop()`` and ``start()`` simulate an outage: same ports, same storage.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

START_SH = Path(__file__).resolve().parents[1] / "dicom_nodes" / "orthanc" / "start.sh"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

# Loopback only: bypass any http_proxy/https_proxy set in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_ports(count: int) -> list[int]:
    """Distinct TCP ports free on 127.0.0.1 now (all bound at once, then released)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


class OrthancHandle:
    """One Orthanc process and its data directory; ``url`` is the REST root."""

    def __init__(
        self,
        data_dir: Path,
        *,
        aet: str,
        dicom_port: int,
        http_port: int,
        modalities: Mapping[str, tuple[str, str, int]],
        tls_modalities: frozenset[str] = frozenset(),
        extra_config: Mapping[str, Any] | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.extra_config = dict(extra_config or {})
        self.credentials = credentials
        """User and password of the REST API when ``extra_config`` enables authentication."""
        """Further Orthanc settings (``ORTHANC_EXTRA_CONFIG`` of start.sh), e.g. DICOM TLS."""
        self.data_dir = data_dir
        self.aet = aet
        self.dicom_port = dicom_port
        self.http_port = http_port
        self.url = f"http://127.0.0.1:{http_port}"
        self.modalities = dict(modalities)
        self.tls_modalities = tls_modalities
        """Names of ``modalities`` Orthanc reaches over DICOM TLS (its ``UseDicomTls``)."""
        self.log = data_dir / "orthanc.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start Orthanc (again) and wait until its REST API answers."""
        if self._process is not None:
            raise RuntimeError("Orthanc is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            "bash",
            str(START_SH),
            str(self.data_dir),
            str(self.dicom_port),
            str(self.http_port),
            self.aet,
            json.dumps({name: self._modality(name) for name in self.modalities}),
        ]
        env = dict(os.environ)
        if self.extra_config:
            env["ORTHANC_EXTRA_CONFIG"] = json.dumps(self.extra_config)
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"Orthanc exited while starting:\n{self._log_tail()}")
            try:
                self.get("/system")
                return
            except OSError:  # not listening yet
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"Orthanc REST API not answering within {STARTUP_TIMEOUT:g} s:\n{self._log_tail()}"
        )

    def _modality(self, name: str) -> list[object] | dict[str, object]:
        """Orthanc's DicomModalities entry: [AET, host, port], or the object form for TLS."""
        aet, host, port = self.modalities[name]
        if name in self.tls_modalities:
            return {"AET": aet, "Host": host, "Port": port, "UseDicomTls": True}
        return [aet, host, port]

    def stop(self) -> None:
        """Terminate Orthanc and wait for it; the data directory is kept."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def get(self, path: str) -> Any:
        """The JSON answer of a REST GET (``path`` starts with ``/``)."""
        return json.loads(self._request("GET", path))

    def upload(self, path: Path) -> None:
        """Store one DICOM file through the REST API (``POST /instances``)."""
        answer = json.loads(self._request("POST", "/instances", path.read_bytes()))
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise RuntimeError(f"Orthanc refused {path}: {answer}")

    def _request(self, method: str, path: str, data: bytes | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if self.credentials:
            pair = base64.b64encode(":".join(self.credentials).encode()).decode()
            request.add_header("Authorization", f"Basic {pair}")
        with _OPENER.open(request, timeout=10) as answer:
            body: bytes = answer.read()
            return body

    def instances(self) -> list[dict[str, Any]]:
        """Every stored instance, expanded (``MainDicomTags``, ``ParentSeries``, ...)."""
        result: list[dict[str, Any]] = self.get("/instances?expand")
        return result

    def datasets(self) -> list[Dataset]:
        """Every stored instance, downloaded and parsed."""
        return [
            dcmread(BytesIO(self._request("GET", f"/instances/{i['ID']}/file")))
            for i in self.instances()
        ]

    def count(self) -> int:
        return len(self.get("/instances"))

    def instance_tags(self, orthanc_id: str) -> dict[str, Any]:
        """The instance's tags by keyword (``/instances/{id}/simplified-tags``)."""
        result: dict[str, Any] = self.get(f"/instances/{orthanc_id}/simplified-tags")
        return result

    def metadata(self, orthanc_id: str, name: str) -> str:
        """An instance's metadata item, e.g. ``TransferSyntax`` or ``RemoteAET``."""
        return self._request("GET", f"/instances/{orthanc_id}/metadata/{name}").decode()

    def sop_instance_uids(self) -> set[str]:
        return {item["MainDicomTags"]["SOPInstanceUID"] for item in self.instances()}

    def clear(self) -> None:
        """Delete every stored patient, so one running Orthanc can serve several tests."""
        for patient in self.get("/patients"):
            self._request("DELETE", f"/patients/{patient}")

    def _log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@contextmanager
def running_orthanc(
    tmp_path: Path,
    *,
    aet: str = "ORTHANC",
    modalities: Mapping[str, tuple[str, str, int]] | None = None,
    tls_modalities: frozenset[str] = frozenset(),
    extra_config: Mapping[str, Any] | None = None,
    credentials: tuple[str, str] | None = None,
) -> Iterator[OrthancHandle]:
    """A running Orthanc storing under ``tmp_path/orthanc``, stopped at exit.

    ``modalities`` maps a name to (AE title, host, port) of nodes Orthanc may C-MOVE/C-STORE to;
    those named in ``tls_modalities`` it reaches over DICOM TLS.
    """
    dicom_port, http_port = free_ports(2)
    handle = OrthancHandle(
        tmp_path / "orthanc",
        aet=aet,
        dicom_port=dicom_port,
        http_port=http_port,
        modalities=modalities or {},
        tls_modalities=tls_modalities,
        extra_config=extra_config,
        credentials=credentials,
    )
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()
