"""Build the node's container image with podman, and test it end to end (``make image``,
``make image-test``).

``build`` runs ``podman build`` on the project's Dockerfile (docker format, so that the
healthcheck is kept) and prints the image's size. ``--local-base`` builds the base image here from
Debian packages (``debootstrap --variant=minbase bookworm`` with python3 and its venv module,
imported with ``podman import``) for machines that cannot pull from registries, and
``--host-pip-config`` gives the build this machine's pip configuration read-only (the settings pip
reports, and the local folders and files they name mounted at the same paths), so that pip in
the build reaches the packages the way pip here does; no host name is written anywhere.

``test`` builds the image that way, starts a test Orthanc (``tests/orthanc.py``) and the node in
its container (host network, its settings mounted over ``config/container.toml``, its data on a
named volume), waits until the image's healthcheck passes, pushes a simulated exam with dcmtk's
storescu, waits for every result in Orthanc and checks them, checks that the node runs as
non-root and that its audit trail holds the pushed instances, then stops everything.

podman reads ``dicom_nodes/container/containers.conf`` (runc, no default ulimits) unless
``CONTAINERS_CONF`` is already set.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from pydicom import Dataset

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS_CONF = ROOT / "dicom_nodes" / "container" / "containers.conf"
LOCAL_BASE = "localhost/lus-pacs-base:bookworm"
TEST_TAG = "localhost/lus-pacs:test"
DEFAULT_TAG = "localhost/lus-pacs:latest"
HEALTH_TIMEOUT = 300.0
RESULTS_TIMEOUT = 600.0
NODE_CONTAINERFILE = ROOT / "Dockerfile"
PILOT = ROOT / "dicom_nodes" / "pilot" / "compose.yaml"
PILOT_IMAGES = {
    "localhost/lus-pacs:latest": NODE_CONTAINERFILE,
    "localhost/lus-pacs-orthanc:latest": ROOT / "dicom_nodes" / "orthanc" / "Containerfile",
    "localhost/lus-pacs-viewer:latest": ROOT / "dicom_nodes" / "viewer" / "Containerfile",
}
"""The images of the pilot's compose file and what builds them."""
SCREENSHOT = ROOT / "dicom_nodes" / "viewer" / "screenshot.mjs"
LABELMAP_SEG_SERIES = 902
COLOURED = 60
"""A screen pixel is coloured when its channels spread more than this (0-255): a SEG's overlay
on the grey cine."""
OBJECTS_PER_CINE = 5
"""SR, KOS, LABELMAP SEG, BINARY SEG and colour presentation state of a lung cine."""


def node_log(container: str) -> str:
    """What the node in ``container`` wrote, standard output and standard error together in
    order (``podman logs`` gives a container's standard error on its own; the node logs
    there)."""
    result = subprocess.run(
        ["podman", "logs", container],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_env(),
        check=False,
    )
    return result.stdout.decode(errors="replace")


def _env() -> dict[str, str]:
    """The environment with the project's containers.conf, unless one is set already."""
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def podman(*args: str, check: bool = True, stdin: bytes | None = None) -> str:
    """Run podman with the project's containers.conf; its stdout."""
    result = subprocess.run(
        ["podman", *args], input=stdin, capture_output=True, env=_env(), check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"podman {shlex.join(args)} failed ({result.returncode}): "
            + result.stderr.decode(errors="replace")[-3000:]
        )
    return result.stdout.decode(errors="replace")


def podman_ok(*args: str) -> bool:
    result = subprocess.run(["podman", *args], capture_output=True, env=_env(), check=False)
    return result.returncode == 0


def local_base(tag: str = LOCAL_BASE) -> str:
    """A bookworm base with python3 and venv, built from Debian packages unless ``tag`` exists."""
    if podman_ok("image", "exists", tag):
        return tag
    if os.geteuid() != 0:
        raise SystemExit("image.py: debootstrap needs root to build the local base image")
    work = ROOT / "build" / "container"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        rootfs = Path(tmp) / "rootfs"
        print(f"building the base image {tag} with debootstrap (about a minute)", flush=True)
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(rootfs),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (rootfs / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True)
        podman("import", "--change", 'CMD ["python3"]', "-", tag, stdin=tar.stdout)
    return tag


def pip_options(listed: str) -> dict[str, dict[str, str]]:
    """pip's settings from ``pip config list``, by section (``global``, ``install``, ...): the
    environment's (``:env:``, which pip reads as global) over the files', as pip reads them.
    pip prints each value as a Python literal (multi-line values included)."""
    sections: dict[str, dict[str, str]] = {}
    from_env: dict[str, str] = {}
    for line in listed.splitlines():
        key, _, text = line.partition("=")
        section, _, name = key.rpartition(".")
        if not name or not text:
            continue
        try:
            value = str(ast.literal_eval(text.strip()))
        except (ValueError, SyntaxError):
            value = text.strip()
        if section == ":env:":
            from_env[name] = value
        elif section:
            sections.setdefault(section, {})[name] = value
    if from_env:
        sections["global"] = sections.get("global", {}) | from_env
    return sections


def pip_conf(sections: dict[str, dict[str, str]]) -> str:
    """A pip.conf of ``sections``; a multi-line value as indented continuation lines."""
    lines = []
    for section, options in sorted(sections.items()):
        lines.append(f"[{section}]")
        for name, value in sorted(options.items()):
            words = [w for w in value.splitlines() if w.strip()]
            if len(words) > 1:
                lines += [f"{name} =", *(f"    {w.strip()}" for w in words)]
            else:
                lines.append(f"{name} = {value.strip()}")
    return "\n".join(lines) + "\n"


def local_paths(sections: dict[str, dict[str, str]]) -> set[Path]:
    """The existing local files and folders the settings name (paths and file:// URLs); a local
    index's parent, whose pages link to the files beside it ("../../files/...")."""
    found: set[Path] = set()
    for options in sections.values():
        for name, value in options.items():
            for word in value.split():
                path = Path(word.removeprefix("file://"))
                if path.is_absolute() and path.exists() and path != Path("/"):
                    local = path.parent if name.endswith("index-url") else path
                    if local != Path("/"):
                        found.add(local)
    return found


def host_pip_config(folder: Path) -> list[str]:
    """``podman build`` volume options that give the build this machine's pip configuration:
    a pip.conf of what ``pip config list`` reports (written into ``folder``, readable by its
    owner only) mounted as /etc/pip.conf, and every local path it names mounted read-only at its
    own path."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    sections = pip_options(listed)
    conf = folder / "pip.conf"
    conf.touch(mode=0o600)
    conf.write_text(pip_conf(sections))
    volumes = ["-v", f"{conf}:/etc/pip.conf:ro"]
    for mount in sorted(local_paths(sections)):
        volumes += ["-v", f"{mount}:{mount}:ro"]
    return volumes


def build(
    tag: str,
    *,
    base: str | None,
    torch_index: str | None = None,
    host_config: bool = False,
    containerfile: Path = NODE_CONTAINERFILE,
) -> int:
    """Build ``containerfile`` (the node's Dockerfile by default) from the repository root as
    ``tag``; the image's size in bytes."""
    command = ["build", "--format", "docker", "--network", "host", "-t", tag]
    command += ["-f", str(containerfile)]
    if base is not None:
        command += ["--build-arg", f"BASE={base}"]
    if torch_index is not None:
        command += ["--build-arg", f"TORCH_INDEX={torch_index}"]
    command.append(str(ROOT))
    started = time.monotonic()
    # The pip configuration (which may hold an index's token) lives only as long as the build.
    with tempfile.TemporaryDirectory() as private:
        if host_config:
            command[-1:-1] = host_pip_config(Path(private))
        print("podman " + shlex.join(command), flush=True)
        subprocess.run(["podman", *command], check=True, env=_env())
    size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).strip())
    print(
        f"image {tag}: {size / 1e9:.2f} GB, built in {time.monotonic() - started:.0f} s",
        flush=True,
    )
    return size


def _node_settings(
    folder: Path, *, port: int, metrics_port: int, orthanc_aet: str, orthanc_port: int, scanner: str
) -> Path:
    """The node's settings for the test, mounted over the image's config/container.toml."""
    path = folder / "container.toml"
    path.write_text(
        "\n".join(
            [
                'ae_title = "LUSPACS"',
                'host = "0.0.0.0"',
                f"port = {port}",
                f"metrics_port = {metrics_port}",
                'data_dir = "/var/lib/lus-pacs"',
                'models_dir = "/opt/lus-pacs/models"',
                f'allowed_calling_aes = ["{scanner}"]',
                "study_quiet_s = 2.0",
                "",
                "[[destinations]]",
                'name = "pacs"',
                f'ae_title = "{orthanc_aet}"',
                'host = "127.0.0.1"',
                f"port = {orthanc_port}",
                "",
            ]
        )
    )
    path.chmod(0o644)
    return path


def _wait(predicate: object, timeout: float, what: str, container: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if podman("inspect", "--format", "{{.State.Running}}", container).strip() != "true":
            raise SystemExit(f"the node's container stopped:\n{node_log(container)[-3000:]}")
        time.sleep(2.0)
    logs = node_log(container)[-3000:]
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}; node log:\n{logs}")


def image_test(tag: str) -> None:
    """Build with the local base and the host's pip configuration, then run the image for real."""
    sys.path.insert(0, str(ROOT))  # the tests' Orthanc and scanner helpers
    import pydicom

    from tests.node_process import SCANNER_AE
    from tests.orthanc import free_ports, running_orthanc

    size = build(tag, base=local_base(), torch_index="", host_config=True)
    user = podman("image", "inspect", "--format", "{{.Config.User}}", tag).strip()
    if user in ("", "root", "0"):
        raise SystemExit(f"the image runs as {user or 'root'}: it must run as a non-root user")
    health = podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}", tag)
    if "healthz" not in health and "HEALTH_URL" not in health:
        raise SystemExit(f"the image has no healthcheck on /healthz: {health}")

    work = ROOT / "build" / "container"
    work.mkdir(parents=True, exist_ok=True)
    name = f"lus-pacs-image-test-{os.getpid()}"
    volume = f"{name}-data"
    with tempfile.TemporaryDirectory(dir=work) as tmp_name:
        tmp = Path(tmp_name)
        cines = _exam(tmp / "exam")
        pushed = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in cines}
        with running_orthanc(tmp) as orthanc:
            port, metrics_port = free_ports(2)
            settings = _node_settings(
                tmp,
                port=port,
                metrics_port=metrics_port,
                orthanc_aet=orthanc.aet,
                orthanc_port=orthanc.dicom_port,
                scanner=SCANNER_AE,
            )
            podman("volume", "create", volume)
            try:
                podman(
                    "run", "-d", "--name", name, "--network", "host",
                    "-e", f"LUS_PACS_HEALTH_URL=http://127.0.0.1:{metrics_port}/healthz",
                    "-v", f"{settings}:/opt/lus-pacs/config/container.toml:ro",
                    "-v", f"{volume}:/var/lib/lus-pacs",
                    tag,
                )  # fmt: skip
                started = time.monotonic()
                _wait(lambda: podman_ok("healthcheck", "run", name), HEALTH_TIMEOUT,
                      "the image's healthcheck to pass", name)  # fmt: skip
                print(f"node healthy in its container after {time.monotonic() - started:.0f} s")
                uid = podman("exec", name, "id", "-u").strip()
                if uid == "0":
                    raise SystemExit("the node runs as root in its container")
                _push(port, "LUSPACS", cines)
                pushed_at = time.monotonic()
                expected = OBJECTS_PER_CINE * len(cines) + 1  # and the study summary SR
                _wait(lambda: orthanc.count() >= expected, RESULTS_TIMEOUT,
                      f"{expected} results in Orthanc", name)  # fmt: skip
                waited = time.monotonic() - pushed_at
                results = orthanc.datasets()
                classes = Counter(str(ds.SOPClassUID.name) for ds in results)
                referenced = _referenced_sources(results)
                if not pushed <= referenced:
                    raise SystemExit(f"no result references {sorted(pushed - referenced)}")
                audit = podman("exec", name, "cat", "/var/lib/lus-pacs/audit/audit.jsonl")
                audited = {
                    str(line.get("sop_instance_uid"))
                    for line in map(json.loads, audit.splitlines())
                    if line.get("event") == "instance"
                }
                if not pushed <= audited:
                    raise SystemExit(f"the audit trail misses {sorted(pushed - audited)}")
                encoding = _encoding_processes(name)
                stop_s, code = _stop(name)
                if code != "0" or stop_s > STOP_GRACE_S / 2:
                    logs = node_log(name)[-3000:]
                    raise SystemExit(
                        f"the node exited with {code} {stop_s:.0f} s after SIGTERM:\n{logs}"
                    )
            finally:
                podman("stop", "-t", str(STOP_GRACE_S), name, check=False)
                podman("rm", "-f", name, check=False)
                podman("volume", "rm", "-f", volume, check=False)
    print(f"image {tag}: {size / 1e9:.2f} GB, runs as uid {uid}, healthcheck passed")
    print(
        f"{len(cines)} cines pushed with storescu, {len(results)} results in Orthanc "
        f"{waited:.0f} s after the push: "
        + ", ".join(f"{count} {name}" for name, count in sorted(classes.items()))
    )
    print(f"{encoding} encoding processes and their server in the container")
    print(f"stopped by SIGTERM in {stop_s:.1f} s, exit code 0")
    print("audit trail: every pushed instance recorded; image-test passed")


STOP_GRACE_S = 30
"""The seconds ``podman stop`` gives the node before it kills it."""


def _encoding_processes(container: str) -> int:
    """How many of the node's encoding processes run in ``container`` (the server they are forked
    from not counted); none, or a log line saying they could not start, fails the test: the
    workers would make the objects themselves, slower, without anyone noticing."""
    logs = node_log(container)
    if "encoding processes could not start" in logs:
        raise SystemExit(f"the node's encoding processes could not start:\n{logs[-3000:]}")
    table = podman("top", container, "pid", "args")
    forked = sum("forkserver" in line for line in table.splitlines()) - 1
    if forked < 1:
        raise SystemExit(f"no encoding process in the node's container:\n{table}")
    return forked


def _stop(container: str) -> tuple[float, str]:
    """Stop ``container`` as its orchestrator would (SIGTERM, then SIGKILL after
    :data:`STOP_GRACE_S`): the seconds it took and the node's exit code."""
    started = time.monotonic()
    podman("stop", "-t", str(STOP_GRACE_S), container)
    took = time.monotonic() - started
    return took, podman("inspect", "--format", "{{.State.ExitCode}}", container).strip()


def pilot_test() -> None:
    """Build the pilot's three images, bring its compose file up with podman-compose on free
    ports, push a simulated exam to its PACS, wait for the results, open the study in OHIF with
    headless Chromium and screenshot it with the LABELMAP SEG on the cine, bring it down."""
    sys.path.insert(0, str(ROOT))  # the tests' port helper
    import numpy as np
    import pydicom
    from PIL import Image

    from tests.orthanc import free_ports

    if not (ROOT / "build" / "viewer" / "ohif" / "index.html").is_file():
        raise SystemExit("image.py: no built OHIF; run: bash dicom_nodes/viewer/install.sh")
    base = local_base()
    for tag, containerfile in PILOT_IMAGES.items():
        is_node = containerfile == NODE_CONTAINERFILE
        build(
            tag,
            base=base,
            torch_index="" if is_node else None,
            host_config=is_node,
            containerfile=containerfile,
        )
    names = ("PILOT_PACS_PORT", "PILOT_NODE_PORT", "PILOT_METRICS_PORT", "PILOT_VIEWER_PORT")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    project = f"lus-pacs-pilot-test-{os.getpid()}"
    compose = [str(Path(sys.executable).with_name("podman-compose")), "-f", str(PILOT)]
    compose += ["-p", project]
    env = _env() | {name: str(port) for name, port in ports.items()}
    viewer = f"http://127.0.0.1:{ports['PILOT_VIEWER_PORT']}"
    out = ROOT / "build" / "test-artefacts" / "pilot"
    out.mkdir(parents=True, exist_ok=True)
    work = ROOT / "build" / "container"
    with tempfile.TemporaryDirectory(dir=work) as tmp_name:
        cines = _exam(Path(tmp_name) / "exam")
        first = pydicom.dcmread(cines[0], stop_before_pixels=True)
        study = str(first.StudyInstanceUID)
        try:
            started = time.monotonic()
            up = subprocess.run([*compose, "up", "-d"], env=env, capture_output=True, check=False)
            if up.returncode != 0:
                raise SystemExit(f"podman-compose up failed:\n{up.stderr.decode()[-3000:]}")
            node = f"{project}_node_1"
            _wait(lambda: podman_ok("healthcheck", "run", node), HEALTH_TIMEOUT,
                  "the node's healthcheck to pass", node)  # fmt: skip
            _wait(lambda: _http_status(f"{viewer}/dicom-web/studies") == 200, HEALTH_TIMEOUT,
                  "the viewer and Orthanc's DICOMweb behind it", node)  # fmt: skip
            print(f"pilot up in {time.monotonic() - started:.0f} s: {viewer}/", flush=True)
            _push(ports["PILOT_PACS_PORT"], "ORTHANC", cines)
            pushed_at = time.monotonic()
            expected = len(cines) * (1 + OBJECTS_PER_CINE) + 1  # cines, results, summary
            _wait(lambda: len(_instances(viewer, study)) >= expected, RESULTS_TIMEOUT,
                  f"{expected} instances of the study in the PACS", node)  # fmt: skip
            waited = time.monotonic() - pushed_at
            modalities = Counter(
                str(item["00080060"]["Value"][0])
                for item in _instances(viewer, study, "?includefield=00080060")
            )
            # The PACS answers no DICOM query: not of a stranger, nor of one calling itself
            # the node (which only stores; Orthanc does not check the caller's host).
            found = {
                ae: _finds(ae, ports["PILOT_PACS_PORT"], study) for ae in ("INTRUDER", "LUSPACS")
            }
            if found != {"INTRUDER": False, "LUSPACS": False}:
                raise SystemExit(f"the pilot's PACS answers C-FIND wrongly: {found}")
            # Orthanc restarted (another address on the pilot's network): the viewer finds it
            # again (nginx resolved it once, at start, and answered 502 after).
            podman_ok("restart", f"{project}_orthanc_1")
            _wait(lambda: _http_status(f"{viewer}/dicom-web/studies") == 200, HEALTH_TIMEOUT,
                  "the viewer to reach the restarted Orthanc", node)  # fmt: skip
            viewer_health = podman_ok("healthcheck", "run", f"{project}_viewer_1")
            if not viewer_health:
                raise SystemExit("the viewer's healthcheck fails with the PACS behind it up")
            shot = subprocess.run(
                ["node", str(SCREENSHOT), viewer, study, str(out),
                 "--seg-series", str(LABELMAP_SEG_SERIES), "--frame", "seg"],
                capture_output=True, text=True, check=False, timeout=300,
            )  # fmt: skip
            if shot.returncode != 0:
                raise SystemExit(f"screenshot.mjs failed:\n{shot.stderr[-3000:]}")
            report = json.loads(shot.stdout)
        finally:
            subprocess.run([*compose, "down", "-v"], env=env, capture_output=True, check=False)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    if not report["seg"]["loaded"]:
        raise SystemExit(f"OHIF did not open the SEG: {report['seg']['error']}")
    panel = Counter(str(entry["modality"]) for entry in report["series"])
    if not {"US", "SR", "KO", "SEG", "PR"} <= set(panel):
        raise SystemExit(f"OHIF's study panel lacks a kind of result: {dict(panel)}")
    coloured = {
        name: _coloured_on_image(
            np.asarray(Image.open(report["screenshots"][name]).convert("RGB"), np.int16),
            report["image_to_page_with_seg" if name == "with" else "image_to_page"],
            (int(first.Rows), int(first.Columns)),
        )
        for name in ("without", "with")
    }
    if coloured["with"] < max(500, 5 * coloured["without"]):
        raise SystemExit(f"no SEG overlay on the screenshot: coloured pixels {coloured}")
    print(
        f"{len(cines)} cines pushed to the pilot's PACS; {sum(modalities.values())} instances "
        f"in the study {waited:.0f} s later ({dict(sorted(modalities.items()))}), C-FIND "
        "answered to no caller, the viewer back after Orthanc's restart; OHIF shows "
        f"the study ({dict(sorted(panel.items()))} in its panel) with the LABELMAP SEG on frame "
        f"{report['frame_with_seg']} ({coloured['with']} coloured pixels on the image, "
        f"{coloured['without']} before): {out / 'with-seg.png'}"
    )
    print("pilot-test passed")


def _exam(folder: Path) -> list[Path]:
    """A simulated 6-zone exam of 30-frame cines (``lus-pacs synth``): its files."""
    lus_pacs = str(Path(sys.executable).with_name("lus-pacs"))
    subprocess.run(
        [
            lus_pacs,
            "synth",
            "--out",
            str(folder),
            "--patients",
            "1",
            "--seed",
            "3",
            "--frames",
            "30",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return sorted(folder.rglob("*.dcm"))


def _push(port: int, called_ae: str, cines: Sequence[Path]) -> None:
    """Push ``cines`` as a scanner does (the project's scanner simulator, storescu)."""
    sent = subprocess.run(
        ["bash", str(ROOT / "dicom_nodes" / "scanner" / "push.sh"), "127.0.0.1", str(port),
         called_ae, "SCANNER", *map(str, cines)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    if sent.returncode != 0:
        raise SystemExit(f"storescu to {called_ae} failed:\n{sent.stderr[-3000:]}")


def _finds(calling_ae: str, port: int, study: str) -> bool:
    """Whether the pilot's PACS lists ``study`` to a C-FIND (dcmtk's findscu) from
    ``calling_ae``."""
    answer = subprocess.run(
        ["findscu", "-S", "-aet", calling_ae, "-aec", "ORTHANC", "127.0.0.1", str(port),
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    return study in answer.stdout + answer.stderr and "Find Failed" not in answer.stderr


def _http_status(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as answer:
            return int(answer.status)
    except (urllib.error.URLError, OSError):
        return 0


def _instances(viewer: str, study: str, query: str = "") -> list[dict[str, Any]]:
    """QIDO-RS: the study's instances in the pilot's PACS, through the viewer's nginx."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        url = f"{viewer}/dicom-web/studies/{study}/instances{query}"
        with opener.open(url, timeout=30) as answer:
            body = answer.read()
    except (urllib.error.URLError, OSError):
        return []
    return list(json.loads(body)) if body.strip() else []


def _coloured_on_image(rgb: np.ndarray, mapping: dict[str, float], shape: tuple[int, int]) -> int:
    """Coloured screen pixels over the cine's image (screenshot.mjs's image_to_page)."""
    rows, columns = shape
    x0, y0 = int(max(mapping["x0"], 0)), int(max(mapping["y0"], 0))
    x1 = int(mapping["x0"] + columns * mapping["sx"])
    y1 = int(mapping["y0"] + rows * mapping["sy"])
    area = rgb[y0:y1, x0:x1]
    return int(((area.max(axis=2) - area.min(axis=2)) > COLOURED).sum())


def _referenced_sources(results: Sequence[Dataset]) -> set[str]:
    """SOP Instance UIDs the results reference (SEG sources, SR/KOS content, PS images)."""
    return {
        str(element.value)
        for ds in results
        for element in ds.iterall()
        if element.keyword == "ReferencedSOPInstanceUID"
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    build_parser = verbs.add_parser("build", help="build the image and print its size")
    build_parser.add_argument("--tag", default=DEFAULT_TAG)
    build_parser.add_argument("--base", help="base image (default: the Dockerfile's BASE)")
    build_parser.add_argument(
        "--local-base", action="store_true", help=f"build and use {LOCAL_BASE} (debootstrap)"
    )
    build_parser.add_argument(
        "--torch-index", help="index of PyTorch's CPU wheel ('' : pip's own configuration)"
    )
    build_parser.add_argument(
        "--host-pip-config", action="store_true", help="give the build this machine's pip setup"
    )
    test_parser = verbs.add_parser("test", help="build with a local base, run and check it")
    test_parser.add_argument("--tag", default=TEST_TAG)
    verbs.add_parser(
        "pilot-test", help="the pilot's compose file up, an exam pushed, OHIF screenshot, down"
    )
    args = parser.parse_args()
    if shutil.which("podman") is None:
        raise SystemExit(
            "image.py: podman not found; run: "
            "bash dicom_nodes/install-system.sh dicom_nodes/container/debian-packages.txt"
        )
    if args.verb == "build":
        base = local_base() if args.local_base else args.base
        build(args.tag, base=base, torch_index=args.torch_index, host_config=args.host_pip_config)
    elif args.verb == "test":
        image_test(args.tag)
    else:
        pilot_test()


if __name__ == "__main__":
    main()
