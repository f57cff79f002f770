"""The node as a real process (``lus-pacs serve``) for end-to-end tests, and dcmtk's storescu
as the scanner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests.orthanc import OrthancHandle, free_ports

SCANNER_AE = "SCANNER"
START_TIMEOUT = 90.0


MC_SAMPLES = 4
"""Segmentation's dropout passes in the node tests: they test the node, not the uncertainty,
and the shipped 10 passes (`models/segmentation`) cost a third of a second a cine."""


def write_config(
    folder: Path,
    orthanc: OrthancHandle | None,
    *,
    retry_budget: int = 6,
    retry_base_s: float = 0.5,
    **extra: object,
) -> Path:
    """A node configuration in TOML: listener on a free port, results sent to ``orthanc``,
    ``MC_SAMPLES`` dropout passes; tries again after ``retry_base_s``, at most 2 s (or
    ``retry_base_s``, the longer)."""
    (port,) = free_ports(1)
    lines = [
        'ae_title = "LUSPACS"',
        'host = "127.0.0.1"',
        f"port = {port}",
        f'data_dir = "{folder / "node"}"',
        f'allowed_calling_aes = ["{SCANNER_AE}"]',
        "study_quiet_s = 2.0",
        f"retry_budget = {retry_budget}",
        f"retry_base_s = {retry_base_s}",
        f"retry_max_s = {max(2.0, retry_base_s)}",
    ]
    if "metrics_port" not in extra:
        lines.append("metrics_port = 0")  # any free port: nodes of parallel tests never collide
    lines += [f"{key} = {value!r}".replace("'", '"') for key, value in extra.items()]
    lines += ["", "[segmentation]", f"mc_samples = {MC_SAMPLES}"]
    if orthanc is not None:
        lines += [
            "",
            "[[destinations]]",
            'name = "pacs"',
            f'ae_title = "{orthanc.aet}"',
            'host = "127.0.0.1"',
            f"port = {orthanc.dicom_port}",
        ]
    path = folder / "lus-pacs.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def config_port(config: Path) -> int:
    for line in config.read_text().splitlines():
        if line.startswith("port = "):
            return int(line.split("=")[1])
    raise ValueError(f"{config} has no port")


class NodeProcess:
    """``lus-pacs serve --config CONFIG`` in the background, its log in ``log``."""

    def __init__(self, config: Path, wrapper: Sequence[str] = ()) -> None:
        self.config = config
        self.port = config_port(config)
        self.log = config.with_name("node.log")
        self.wrapper = tuple(wrapper)
        """A command the node runs under (it gets ``lus-pacs serve --config CONFIG`` as its
        last arguments and must pass SIGTERM on)."""
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = Path(sys.executable).with_name("lus-pacs")
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [*self.wrapper, str(exe), "serve", "--config", str(self.config)],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the node exited: {self.log.read_text()[-3000:]}")
            if echo(self.port).returncode == 0:
                return
            time.sleep(0.3)
        raise RuntimeError(f"the node did not answer C-ECHO: {self.log.read_text()[-3000:]}")

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a crash or power loss."""
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait(30)
            self._process = None

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(30)
            self._process = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def echo(port: int, aet: str = SCANNER_AE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", aet, "-aec", "LUSPACS", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def storescu(port: int, files: Sequence[Path]) -> subprocess.CompletedProcess[str]:
    """Push ``files`` in one association, proposing JPEG Baseline first (``-xy``)."""
    return subprocess.run(
        ["storescu", "-v", "-xy", "-aet", SCANNER_AE, "-aec", "LUSPACS", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def lus_pacs(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lus-pacs")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=600, check=False
    )


def wait_for(predicate: object, timeout: float, what: str) -> None:
    """Poll ``predicate()`` until true; fail naming ``what`` after ``timeout`` seconds."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def processes_below(root: int) -> list[int]:
    """The processes that ``root`` started and those they started, and so on (Linux)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # ended meanwhile
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    todo = [root]
    while todo:
        above = todo.pop()
        below = [pid for pid, parent in parents.items() if parent == above]
        found += below
        todo += below
    return found
