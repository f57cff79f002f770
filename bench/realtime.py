"""How the node's processing compares with the time the cines last (issue 20), per stage, for
the eager path before this issue and the node now, side by side in one run.

A simulated 6-zone exam of 60-frame 640 x 480 cines at 30 fps (12 s of cine) goes through every
default model as the node runs them (``process_file``: read, decode, each family, the result
objects made and written, on the node's ``workers`` threads, each with its share of the cores as
``lus-pacs serve`` gives it), once per column, each in a fresh process, timed from the moment
the models are loaded and warmed up as a started node's are (``warm_up``: a simulated cine
processed once; the baseline, which has no warm-up, processes the exam's first cine once
untimed):

* ``dc23332``: the node at that commit (a git worktree of it): eager PyTorch, every
  segmentation pass through the three whole networks: the baseline the issue measured;
* ``torch``: the node now with ``runtime = "torch"`` (eager PyTorch, the reference);
* ``no-enc``: the node now with ONNX Runtime, its result objects made in the workers' threads
  (``encoders = 0``) as before the encoding processes;
* ``onnx``: the node now with its defaults (ONNX Runtime, the result objects made and written
  in the encoding processes, :class:`lus_pacs.pipeline.Encoder`).

It prints each stage's mean milliseconds per cine, the real-time factor (processing time /
cine duration; real time is 1.0, the target 0.5), how many cores the process kept busy over the
exam (its CPU seconds per second: with two workers on two cores, what falls short of 2.0 is
time a worker waited, mostly for the interpreter's lock while the other ran Python; the
encoding processes' CPU is not in it), the peak memory (the process's own peak resident
set, plus each encoding process's own: shared pages counted in each), the peak the process
and those below it held together (sampled every 0.1 s from the bench's process, shared pages
counted once: the figure to compare across columns) and, last, the speed-up of the node over
the baseline (target 8x).

With ``--e2e`` it then measures the end-to-end latency with a real PACS: a ``lus-pacs serve``
with its defaults sending to a test Orthanc; 11 cines are pushed one at a time with storescu
(the first warms the node up and is not counted) and for each the time from storescu's end (the
last C-STORE answered and the association released) to the moment Orthanc holds every result
object of the cine is taken; p50 and p95 over the 10 (target p95 <= 3 s).

    .venv/bin/python bench/realtime.py [--e2e] [--no-baseline] [--workers N] [--rounds N]

``--workers N`` runs the torch and onnx columns (and the node of ``--e2e``) with N workers
instead of the default. ``--rounds N`` then runs ``no-enc`` and ``onnx`` N more times,
alternately, and prints each round's real-time factors and ratio: the machine's speed drifts
within minutes, and a pair run back to back is the fairer comparison.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' Orthanc and node helpers

from lus_pacs.synth.exam import SynthOptions, synthesize  # noqa: E402
from tests.node_process import processes_below  # noqa: E402

ZONES, FRAMES, FPS = 6, 60, 30.0
BASELINE = "dc23332"
PUSHES = 10

RUN = """
import json, resource, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from lus_pacs.settings import Settings
settings = Settings(**{"data_dir": sys.argv[1] + "/data", **json.loads(sys.argv[2])})
workers = getattr(settings, "workers", 1)
try:  # as lus-pacs serve: before loading, each worker its share of the cores
    from lus_pacs.inference.threads import prepare_workers
    prepare_workers(workers)
except ImportError:  # the baseline: one worker with every core
    pass
from lus_pacs.pipeline import Models, process_file
models = Models.load(settings)
try:  # as a started node: the encoding processes started
    from lus_pacs.pipeline import Encoder
    encoder = Encoder(settings.encoders) if settings.encoders else None
except ImportError:  # before them
    encoder = None
if encoder is not None:
    encoder.start()
extra = {"encoder": encoder} if encoder is not None else {}
try:  # as a started node: warmed up on a simulated cine
    from lus_pacs.pipeline import warm_up
    warm_up(models, settings, **extra)
except ImportError:  # the baseline has no warm-up: the exam's first cine once, untimed
    process_file(Path(sys.argv[3]), models, settings, Path(sys.argv[1]) / "warm-up")
started = time.perf_counter()
used = resource.getrusage(resource.RUSAGE_SELF)
def run(path):
    record, _ = process_file(Path(path), models, settings, Path(sys.argv[1]), **extra)
    return dict(record.timings_ms)
with ThreadPoolExecutor(workers) as pool:  # the node's worker threads, cines in order
    timings = list(pool.map(run, sys.argv[3:]))
elapsed = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF)
cpu = after.ru_utime - used.ru_utime + after.ru_stime - used.ru_stime
peak = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
# the encoding processes' own peaks added: an upper bound of what the node held at once
children = encoder.peak_bytes if encoder is not None else 0
print(json.dumps({"timings": timings, "elapsed_s": elapsed,
                  "peak_bytes": int(peak) * 1024 + children, "encoder_peak_bytes": children,
                  "workers": workers, "cpu_s": cpu}))
"""


def _run(
    cines: list[Path], out: Path, settings: dict[str, object], code: Path = ROOT
) -> dict[str, object]:
    process = subprocess.Popen(
        [sys.executable, "-c", RUN, str(out), json.dumps(settings), *map(str, cines)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=code,
        env={"PYTHONPATH": str(code), "PATH": "/usr/bin:/bin"},
    )
    peak = [0]
    sampler = threading.Thread(target=_sample_held, args=(process, peak), daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    sampler.join()
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, "the run", stdout, stderr)
    result: dict[str, object] = json.loads(stdout.splitlines()[-1])
    result["pss_peak_bytes"] = peak[0]
    return result


def _sample_held(process: subprocess.Popen[str], peak: list[int]) -> None:
    """Every 0.1 s while ``process`` runs, what it and the processes below it (the encoding
    processes and their server) hold together, each shared page counted once (the sum of their
    proportional set sizes): the highest in ``peak``. Sampled from this process, so the timed
    one does nothing more; a peak between two samples is missed."""
    while process.poll() is None:
        tree = [process.pid, *processes_below(process.pid)]
        peak[0] = max(peak[0], sum(_pss(pid) for pid in tree))
        time.sleep(0.1)


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return next(int(line.split()[1]) * 1024 for line in rollup if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


def _baseline(cines: list[Path], tmp: Path) -> dict[str, object]:
    tree = tmp / "baseline"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), BASELINE],
        capture_output=True,
        check=True,
    )
    try:
        return _run(cines, tmp / "out-baseline", {}, code=tree)
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
            capture_output=True,
            check=False,
        )


def _latency(cines: list[Path], tmp: Path, workers: int | None) -> list[float]:
    """Seconds from each push's end to its last result in Orthanc, the first push left out."""
    from tests.node_process import SCANNER_AE, NodeProcess, storescu
    from tests.orthanc import free_ports, running_orthanc

    with running_orthanc(tmp) as orthanc:
        port, metrics = free_ports(2)
        config = tmp / "node.toml"
        config.write_text(
            "\n".join(
                [
                    f"port = {port}",
                    f"metrics_port = {metrics}",
                    f'data_dir = "{tmp / "node"}"',
                    f'allowed_calling_aes = ["{SCANNER_AE}"]',
                    f"workers = {workers}" if workers else "",
                    # the per-study summary is timed by the study, not the cine
                    'output_kinds = ["sr", "kos", "seg", "seg-binary", "pr"]',
                    "[[destinations]]",
                    'name = "pacs"',
                    f'ae_title = "{orthanc.aet}"',
                    'host = "127.0.0.1"',
                    f"port = {orthanc.dicom_port}",
                ]
            )
            + "\n"
        )
        node = NodeProcess(config)
        node.start()
        try:
            seconds = []
            per_cine = 0
            for i, cine in enumerate(cines[: PUSHES + 1]):
                before = len(orthanc.instances())
                pushed = storescu(node.port, [cine])
                done = time.monotonic()
                if pushed.returncode != 0:
                    raise RuntimeError(f"storescu failed: {pushed.stderr}")
                if i == 0:  # learn how many objects a cine gives: wait until none arrive for 10 s
                    count, still = before, time.monotonic()
                    while time.monotonic() - still < 10 or count == before:
                        time.sleep(0.2)
                        now = len(orthanc.instances())
                        if now != count:
                            count, still = now, time.monotonic()
                    per_cine = count - before
                    continue
                while len(orthanc.instances()) < before + per_cine:
                    time.sleep(0.02)
                seconds.append(time.monotonic() - done)
            return seconds
        finally:
            node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--e2e", action="store_true", help="also the latency with Orthanc")
    parser.add_argument("--no-baseline", action="store_true", help=f"skip {BASELINE}")
    parser.add_argument("--workers", type=int, help="the node's workers instead of its default")
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="then N more rounds of no-enc and onnx run alternately, each round's ratio printed",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        records = synthesize(
            tmp / "exam", SynthOptions(patients=2, seed=20, zones=ZONES, frames=FRAMES)
        )
        cines = [r.dicom for r in records]
        exam = cines[:ZONES]
        results: dict[str, dict[str, object]] = {}
        if not args.no_baseline:
            results[BASELINE] = _baseline(exam, tmp)
        workers: dict[str, object] = {"workers": args.workers} if args.workers else {}
        results["torch"] = _run(exam, tmp / "out-torch", {"runtime": "torch", **workers})
        results["no-enc"] = _run(
            exam, tmp / "out-no-enc", {"runtime": "onnx", "encoders": 0, **workers}
        )
        results["onnx"] = _run(exam, tmp / "out-onnx", {"runtime": "onnx", **workers})
        rounds = [
            tuple(
                float(str(_run(exam, tmp / f"out-{i}-{n}", settings)["elapsed_s"]))
                for n, settings in (
                    ("no-enc", {"runtime": "onnx", "encoders": 0, **workers}),
                    ("onnx", {"runtime": "onnx", **workers}),
                )
            )
            for i in range(args.rounds)
        ]
        latency = _latency(cines, tmp, args.workers) if args.e2e else []
        if shutil.which("git") is None:  # pragma: no cover - the baseline needs a checkout
            print("git is missing: no baseline")

    cine_s = len(exam) * FRAMES / FPS
    print(f"{len(exam)} cines of {FRAMES} frames 640x480 at {FPS:g} fps ({cine_s:g} s of cine)")
    print(
        "workers: "
        + ", ".join(f"{name} {result.get('workers', 1)}" for name, result in results.items())
        + " (with two, a stage's milliseconds are its time while the other cine shares the cores)"
    )
    stages: list[str] = []
    for result in results.values():
        timings = result["timings"]
        assert isinstance(timings, list)
        stages += [s for s in timings[0] if s not in stages]
    print(f"{'stage (mean ms per cine)':<26}" + "".join(f"{name:>10}" for name in results))
    for stage in stages:
        row = ""
        for result in results.values():
            timings = result["timings"]
            assert isinstance(timings, list)
            row += f"{sum(t.get(stage, 0.0) for t in timings) / len(timings):10.0f}"
        print(f"  {stage:<24}{row}")
    elapsed = {name: float(str(r["elapsed_s"])) for name, r in results.items()}
    print(f"{'processing s':<26}" + "".join(f"{elapsed[n]:10.1f}" for n in results))
    print(f"{'real-time factor':<26}" + "".join(f"{elapsed[n] / cine_s:10.2f}" for n in results))
    busy = {name: float(str(r["cpu_s"])) / elapsed[name] for name, r in results.items()}
    print(f"{'cores busy (cpu s / s)':<26}" + "".join(f"{busy[n]:10.2f}" for n in results))
    peaks = {name: float(str(r["peak_bytes"])) / 1e9 for name, r in results.items()}
    print(f"{'peak memory GB':<26}" + "".join(f"{peaks[n]:10.2f}" for n in results))
    encoding = {
        name: float(str(r.get("encoder_peak_bytes", 0))) / 1e9 for name, r in results.items()
    }
    print(f"{'  of it encoding processes':<26}" + "".join(f"{encoding[n]:10.2f}" for n in results))
    shared = {name: float(str(r["pss_peak_bytes"])) / 1e9 for name, r in results.items()}
    print(f"{'peak held together GB':<26}" + "".join(f"{shared[n]:10.2f}" for n in results))
    for i, (before, now) in enumerate(rounds, 1):
        print(
            f"round {i}: real-time factor no-enc {before / cine_s:.3f}, onnx {now / cine_s:.3f}; "
            f"no-enc / onnx = {before / now:.2f}x"
        )
    if latency:
        p50, p95 = np.percentile(latency, [50, 95])
        print(
            f"end to end, last C-STORE answer to last result in Orthanc, {len(latency)} pushes: "
            f"p50 {p50:.2f} s, p95 {p95:.2f} s (target p95 3 s)"
        )
    print(
        f"onnx: real-time factor {elapsed['onnx'] / cine_s:.3f} (target 0.5); "
        f"torch / onnx = {elapsed['torch'] / elapsed['onnx']:.2f}x; "
        f"no-enc / onnx = {elapsed['no-enc'] / elapsed['onnx']:.2f}x"
        + (
            f"; {BASELINE} / onnx = {elapsed[BASELINE] / elapsed['onnx']:.2f}x (target 8x)"
            if BASELINE in elapsed
            else ""
        )
    )


if __name__ == "__main__":
    main()
