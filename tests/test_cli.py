"""The command line: help is instant (no torch), options are validated."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from tests.tools import refused_by_cli, run_cli, write_cine


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["--help"], "synth"),
        (["train", "--help"], "key-frames"),
        (["train", "b-lines", "--help"], "--pocus-cache"),
        (["evaluate", "severity", "--help"], "--simulated"),
        (["pretrain", "consolidation", "--help"], "--no-temporal"),
        (["evaluate", "real", "--help"], "--no-shipped"),
    ],
)
def test_help_does_not_import_torch(args: list[str], shown: str) -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from lus_pacs.cli import app\n"
        f"result = CliRunner().invoke(app, {args!r})\n"
        "assert result.exit_code == 0, result.output\n"
        f"assert {shown!r} in result.output, result.output\n"
        "heavy = [m for m in ('torch', 'monai', 'pydicom', 'cv2') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_family_has_its_commands() -> None:
    from lus_pacs.cli import evaluate_app, fit_app, pretrain_app, train_app

    def names(app: typer.Typer) -> set[str | None]:
        return {command.name for command in app.registered_commands}

    families = {"b-lines", "consolidation", "key-frames", "segmentation", "severity"}
    assert names(train_app) == families
    # Beside the families': the real-data evaluation of them all, and the simulator's distance
    # from real clips.
    assert names(evaluate_app) == families - {"consolidation"} | {"real", "simulator"}
    assert names(pretrain_app) == {"consolidation"}
    assert names(fit_app) == {"assessment", "b-lines", "severity"}  # its measurement reference


def test_family_choices_are_those_the_networks_know() -> None:
    from lus_pacs.families.b_lines.commands import Architecture
    from lus_pacs.families.b_lines.network import ARCHITECTURES
    from lus_pacs.families.segmentation.commands import Network
    from lus_pacs.families.segmentation.network import SEGMENTATION_NETWORKS
    from lus_pacs.families.severity.commands import FrameScorer
    from lus_pacs.families.severity.network import FRAME_SCORERS

    assert [a.value for a in Architecture] == list(ARCHITECTURES)
    assert [n.value for n in Network] == list(SEGMENTATION_NETWORKS)
    assert [s.value for s in FrameScorer] == list(FRAME_SCORERS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "b-lines", "--epochs", "1", "--seed", "0"], "give --data, --via, or both"),
        (["train", "b-lines", "--epochs", "1", "--seed", "0", "--data", "x"], "--out is required"),
        (["train", "key-frames", "--data", "x", "--seed", "0", "random"], "after --variants"),
        (["train", "segmentation", "--steps", "1", "--seed", "0"], "--data, --labelme"),
        (["train", "severity", "--epochs", "1", "--seed", "0"], "--data, --frame-scores"),
    ],
)
def test_family_commands_refuse_what_argparse_refused(args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from lus_pacs.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_synth_rejects_an_unknown_zone_scheme() -> None:
    from typer.testing import CliRunner

    from lus_pacs.cli import app

    result = CliRunner().invoke(app, ["synth", "--out", "x", "--zones", "7"])
    assert result.exit_code != 0
    assert "6, 8, 12 or 14" in result.output


def test_inspect_reads_cines_and_refuses_what_is_not_one(synth_exams: Path, tmp_path: Path) -> None:
    cine = next(synth_exams.glob("*/L2.dcm"))
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 64)
    exe = Path(sys.executable).with_name("lus-pacs")
    result = subprocess.run(
        [str(exe), "inspect", str(cine), str(junk)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert f"{cine}: 60 frames 640x480, 30.0 fps (FrameTime), zone L2" in result.stdout
    assert "from dicom" in result.stdout
    assert f"{junk}: refused: not a DICOM file" in result.stderr


def test_import_video_writes_dicom_and_reports_refusals(tmp_path: Path) -> None:
    import av
    import numpy as np

    video = tmp_path / "loop.mp4"
    with av.open(str(video), "w") as out:
        stream = out.add_stream("libx264", rate=20)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(10):
            frame = np.full((48, 64, 3), 20 * k, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"\0" * 100)
    exe = Path(sys.executable).with_name("lus-pacs")
    result = subprocess.run(
        [
            str(exe),
            "import-video",
            str(video),
            str(bad),
            "--out",
            str(tmp_path / "out"),
            "--zone",
            "R3",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "1 imported, 1 refused" in result.stdout
    assert "refused" in result.stderr
    assert "bad.avi" in result.stderr
    (written,) = (tmp_path / "out").glob("*.dcm")
    inspected = run_cli("inspect", str(written))
    assert "10 frames 64x48, 20.0 fps (FrameTime), zone R3" in inspected.stdout
    # The limits named in a refusal are options of the command (they were not).
    limited = run_cli(
        "import-video", str(video), "--out", str(tmp_path / "cut"), "--max-frames", "5", check=False
    )
    assert limited.returncode == 1
    assert "over the limit of 5; cut it into loops or raise the limit (--max-frames)" in (
        limited.stderr
    )
    assert run_cli("import-video", str(video), "--out", str(tmp_path / "ok"), "--max-frames", "10")
    # A zone the node reads as none, or a patient ID DICOM refuses: imported with exit 0, the
    # cine then had no zone (out of the LUS score) or failed validation.
    refusals = [("--zone", "right 1"), ("--zone", "R15"), ("--patient-id", "A\\B")]
    refusals += [("--patient-id", "A" * 59), ("--patient-id", "Smith^John"), ("--patient-id", " ")]
    for option, value in refusals:
        refused = run_cli(
            "import-video", str(video), "--out", str(tmp_path / "no"), option, value, check=False
        )
        assert refused.returncode == 2, (option, value)
        assert "Traceback" not in refused.stderr
        assert not (tmp_path / "no").exists() or not list((tmp_path / "no").glob("*.dcm"))


def test_demo_pushes_an_exam_through_the_node(tmp_path: Path) -> None:
    # The embedded defaults but for the dropout passes: the test needs no more than 4 of the
    # default 10 passes of three networks on each segmented frame.
    config = tmp_path / "lus-pacs.toml"
    config.write_text("[segmentation]\nmc_samples = 4\n")
    result = run_cli("demo", "--out", str(tmp_path / "demo"), "--config", str(config))
    zones = [line for line in result.stdout.splitlines() if line.startswith("  zone ")]
    assert len(zones) == 6
    assert all("simulated truth: B-lines" in z for z in zones)
    # The processing time against the cine time: 6 cines of 45 frames at 30 fps last 9 s.
    assert re.search(
        r"processed 6 cines in [\d.]+ s, .* the cines last 9\.0 s: [\d.]+ times", result.stdout
    )
    results = list((tmp_path / "demo" / "node" / "results").glob("*/*.dcm"))
    assert len([r for r in results if r.name.startswith("sr-")]) == 6
    assert len([r for r in results if r.name.startswith("kos-")]) == 6
    assert len([r for r in results if r.name.startswith("seg-binary-")]) == 6
    assert len([r for r in results if r.name.startswith("seg-")]) == 12  # LABELMAP and BINARY
    assert len([r for r in results if r.name.startswith("pr-")]) == 6
    assert len([r for r in results if r.name.startswith("study-sr-")]) == 1
    assert len([line for line in result.stdout.splitlines() if "masks of frames" in line]) == 6
    # Run again in the same folder: a fresh node processes the exam again (the last run's would
    # have found it done, and the demo would have timed nothing).
    (summary,) = (tmp_path / "demo" / "node" / "results").glob("*/study-summary.json")
    first = summary.stat().st_mtime_ns
    run_cli("demo", "--out", str(tmp_path / "demo"), "--config", str(config))
    assert summary.stat().st_mtime_ns > first


def test_demo_leaves_a_folder_that_is_not_a_nodes_alone(tmp_path: Path) -> None:
    mine = tmp_path / "node" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("kept")
    result = run_cli("demo", "--out", str(tmp_path), check=False)
    assert result.returncode == 2
    assert "is not a node's folder" in result.stderr
    assert mine.read_text() == "kept"


def test_train_and_evaluate_b_lines_are_commands(linear_exams: Path) -> None:
    shown = run_cli("train", "b-lines", "--help").stdout
    assert "--arch" in shown
    assert all(arch in shown for arch in ("c2d_lstm_att", "c2d_att", "c3d_att", "c2d_lstm"))
    bundle = Path(__file__).resolve().parents[1] / "models" / "b_lines"
    table = run_cli(
        "evaluate", "b-lines", "--bundle", str(bundle), "--simulated", str(linear_exams)
    )
    header = next(line for line in table.stdout.splitlines() if line.startswith("| Model"))
    for column in ("Precision", "Recall", "F1", "IoU α=0.3", "Key frame"):
        assert column in header
    assert "| b_lines |" in table.stdout


def test_a_typo_or_an_empty_folder_is_no_success(tmp_path: Path) -> None:
    """`process` on a mistyped folder printed "0 processed, 0 failed" and exited 0 (after
    loading the models); `validate` on an empty folder "0 checks, 0 failed"; `status`, `retry`
    and `prune` without the node's settings made an empty job store and said "no jobs"."""
    (tmp_path / "empty").mkdir()
    for args in (
        ["process", str(tmp_path / "typo"), "--out", str(tmp_path / "out")],
        ["process", str(tmp_path / "empty"), "--out", str(tmp_path / "out")],
        ["validate", str(tmp_path / "empty")],
        ["validate", str(tmp_path / "typo.dcm")],
    ):
        done = run_cli(*args, check=False)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        assert "no such file or folder" in done.stderr or "no DICOM file found" in done.stderr
    config = tmp_path / "node.toml"
    config.write_text(f'data_dir = "{tmp_path / "node"}"\n')
    for command in (["status"], ["retry"], ["prune", "--older-than", "1"]):
        done = run_cli(*command, "--config", str(config), check=False)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "no job store at" in done.stderr
    assert not (tmp_path / "node").exists()


def test_reprocess_send_without_a_port_is_a_usage_error(tmp_path: Path) -> None:
    """`--send PACS@host` ended in a traceback (int(''))."""
    (tmp_path / "archive").mkdir()
    done = run_cli(
        "reprocess", str(tmp_path / "archive"), "--send", "PACS@host", "--out",
        str(tmp_path / "out"), check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "AE@host:port" in done.stderr


def test_the_settings_can_come_from_lus_pacs_config(tmp_path: Path) -> None:
    """In the container every command is run with `podman exec` and no --config: status read
    the default store, not the node's ("no job store at ..."). LUS_PACS_CONFIG names it."""
    import os

    data = tmp_path / "node-data"
    config = tmp_path / "node.toml"
    config.write_text(f'data_dir = "{data.as_posix()}"\n')
    exe = Path(sys.executable).with_name("lus-pacs")
    env = {**os.environ, "LUS_PACS_CONFIG": str(config)}
    done = subprocess.run(
        [str(exe), "status"], check=False, capture_output=True, text=True, env=env
    )
    assert done.returncode != 0
    assert str(data / "jobs.sqlite") in done.stdout + done.stderr


def test_process_takes_each_file_once_and_refuses_a_file_as_out(tmp_path: Path) -> None:
    """A cine named twice (or in a folder named too) was processed twice and counted twice in
    its study; --out naming a file ended with a traceback after the models had loaded."""
    import numpy as np

    folder = tmp_path / "cines"
    folder.mkdir()
    cine = write_cine(folder / "a.dcm", np.zeros((2, 16, 16), np.uint8), "explicit")
    config = tmp_path / "lus-pacs.toml"
    config.write_text('models = ["assessment"]\n')
    out = tmp_path / "out"
    done = run_cli("process", str(cine), str(cine), str(folder), "--out", str(out),
                   "--config", str(config))  # fmt: skip
    assert "1 processed, 0 failed" in done.stdout
    assert len((out / "summary.jsonl").read_text().splitlines()) == 1
    taken = tmp_path / "taken"
    taken.write_text("")
    refused = run_cli("process", str(cine), "--out", str(taken), "--config", str(config),
                      check=False)  # fmt: skip
    assert refused.returncode == 2
    assert "is a file" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_fit_names_a_data_folder_without_the_labels_sheet(tmp_path: Path) -> None:
    nowhere, bundle, cache = (str(tmp_path / n) for n in ("nowhere", "bundle", "cache"))
    refused_by_cli(
        "fit", "b-lines", "--data", nowhere, "--out", bundle, "--cache", cache,
        saying="no labels sheet",
    )  # fmt: skip


def test_demo_leaves_the_folder_of_a_node_still_running(tmp_path: Path) -> None:
    """The demo removed its last node's folder although that node still ran (its store and
    lock file with it), then started a second node beside the first."""
    from lus_pacs.node import hold_store

    store = tmp_path / "node" / "jobs.sqlite"
    store.parent.mkdir()
    store.write_bytes(b"")
    held = hold_store(store)
    try:
        done = run_cli("demo", "--out", str(tmp_path), check=False)
    finally:
        held.close()
    assert done.returncode == 2
    assert "another node is running" in done.stderr
    assert store.exists()


def test_status_on_a_damaged_store_says_so(tmp_path: Path) -> None:
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "jobs.sqlite").write_bytes(b"not a database " * 20)
    config = tmp_path / "node.toml"
    config.write_text(f'data_dir = "{tmp_path / "node"}"\n')
    refused_by_cli("status", "--config", str(config), saying="cannot be read as a job store")
