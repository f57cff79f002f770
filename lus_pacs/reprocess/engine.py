"""Where the cines of a re-processing run are processed: a local process pool, or Ray.

Both run the node's own stage function (:func:`lus_pacs.pipeline.process_bytes`) in workers
that load the model bundles once. A work item travels as the cine's bytes and comes back as
its record and result files' bytes, so a Ray worker on another machine needs no shared disk;
the driver writes the files and the manifest. Each worker uses ``cores / workers`` torch
threads, the same in both engines, so that both compute the same numbers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

from lus_pacs.errors import ConfigError, LusPacsError
from lus_pacs.inference.threads import (
    THREAD_VARIABLES,
    compact_allocator,
    limit_threads,
    threads_per_worker,
)
from lus_pacs.pipeline import end_pool, kill_processes, pool_processes
from lus_pacs.records import CineRecord
from lus_pacs.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkItem:
    """One cine to process: a stored file the driver can read."""

    sop_instance_uid: str
    study_instance_uid: str
    path: Path
    pixels: int = 0
    """Frames x rows x columns as its header says (0: not known): one over the settings'
    ``concurrent_pixels`` is processed with no other cine beside it, as the node does."""


@dataclass(frozen=True)
class Outcome:
    """What a worker made of one cine: its record and files, or why it failed."""

    item: WorkItem
    record: CineRecord | None
    files: list[tuple[str, bytes]]
    error: str | None


class Engine(Protocol):
    workers: int

    def start(self) -> None:
        """Start every worker and load its models now rather than on the first cines."""
        ...

    def run(self, items: Iterable[WorkItem]) -> Iterator[Outcome]:
        """Process ``items`` (consumed lazily, a bounded number in flight), yielding each
        outcome as it completes, in any order."""
        ...

    def close(self) -> None: ...


_Result = tuple[CineRecord | None, list[Any], str | None]
"""A worker's answer: the record and the result files, or None, [] and why it failed."""


class _Worker:
    """The models of one worker process or actor, loaded once."""

    def __init__(self, settings: Settings, threads: int) -> None:
        compact_allocator()  # as the node: what one cine freed goes back before the next
        limit_threads(threads)
        from lus_pacs.pipeline import Models

        self.settings = settings
        self.models = Models.load(settings)

    def process(self, name: str, data: bytes) -> _Result:
        from lus_pacs.pipeline import process_bytes

        try:
            record, files = process_bytes(data, name, self.models, self.settings)
        except LusPacsError as exc:
            return None, [], str(exc)
        except Exception as exc:  # one bad cine must not stop the run
            log.exception("Unexpected error on %s", name)
            return None, [], f"unexpected error: {exc!r}"
        return record, files, None

    def ready(self) -> int:
        """Answers once the models are loaded (Ray runs ``__init__`` before any call), with
        the worker's process id (logged: the process to look at when a cine hangs)."""
        return os.getpid()

    def process_keyed(self, key: str, name: str, data: bytes) -> tuple[str, _Result]:
        """As :meth:`process`, with ``key`` returned beside the result: Ray's unordered
        results carry no identity of their own."""
        return key, self.process(name, data)


_PROCESS_WORKER: _Worker | None = None
_PROCESS_STARTS: Any = None
"""The pool's queue on which a worker process says which cine it starts (a SimpleQueue)."""


def _init_process(settings: Settings, threads: int, starts: Any) -> None:
    global _PROCESS_WORKER, _PROCESS_STARTS  # noqa: PLW0603 (one per worker process, by design)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    _PROCESS_STARTS = starts
    _PROCESS_WORKER = _Worker(settings, threads)
    starts.put((_READY, os.getpid(), time.monotonic()))  # models loaded


def _worker_pid(pause: float) -> int:
    time.sleep(pause)
    return os.getpid()


def _process_in_pool(token: int, name: str, data: bytes) -> _Result:
    if _PROCESS_WORKER is None:
        raise RuntimeError("worker process not initialised")
    # The clock is the machine's monotonic one, the driver's too.
    _PROCESS_STARTS.put((token, os.getpid(), time.monotonic()))
    return _PROCESS_WORKER.process(name, data)


WORKER_DIED = (
    "the worker process died while this cine or one beside it was processed (killed, out of "
    "memory?); run again to retry it"
)
"""The failure of a cine in flight in a worker pool that broke, when it could not be tried
again alone (the run was interrupted first)."""

DIED_ALONE = (
    "the worker process died while it processed this cine alone (killed, out of memory?); "
    "--retry-failed tries it again"
)
"""The failure of a cine a worker died on while processing it alone (tried alone after a
worker died with it beside others, or too large to share): a final failure, so that no later
run sends it out beside other cines to kill them again."""


CLOSE_S = 30.0
"""Seconds a closed local engine's workers have to end before they are killed."""

START_S = 300.0
"""Seconds a local pool none of whose workers has loaded its models yet may take before it is
held stalled (``max_cine_s`` if longer): loading is no cine's processing."""

_READY = -1
"""The token a worker process reports once its models are loaded."""


def overdue(limit: float) -> str:
    """The failure of a cine whose processing ran past ``limit`` seconds (``max_cine_s``): it
    hung its worker, which was stopped. Final, as in the node: ``--retry-failed`` tries it."""
    return (
        f"processing took longer than max_cine_s ({limit:g} s): its worker was stopped "
        "(a decoder or library that never returns?); --retry-failed tries it again"
    )


class LocalEngine:
    """A pool of ``workers`` processes (spawned: torch does not survive fork).

    A worker that dies (the kernel's out-of-memory killer, a signal) breaks the pool: the cines
    in flight in it fail with :data:`WORKER_DIED`, a new pool is started and the run goes on.
    A worker still on one cine ``max_cine_s`` after it started it has hung (a decoder that
    never returns): it is killed, that cine fails (:func:`overdue`) and the pool it broke is
    replaced in the same way; before, the run waited for it for good. A pool that reports no
    start, no loaded worker and no answer for ``max_cine_s`` (:data:`START_S` at least while
    none of its workers has loaded its models) while cines are in flight, none of them
    started (a worker stuck before it said which cine it took), is stalled: its processes are
    killed and its cines fail with it, each tried again alone."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.workers = workers
        self._settings = settings
        self._budget = settings.concurrent_pixels
        self._limit = settings.max_cine_s
        self._context = get_context("spawn")
        # A spawned worker imports the caller's main module, and with it numpy and torch,
        # before its initializer runs: the thread limits must be in the environment it
        # inherits. (The caller's own thread pools are already made; they do not change.)
        for variable in THREAD_VARIABLES:
            os.environ[variable] = str(threads_per_worker(workers))
        self._starts: Any = None
        self._loaded = False
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # A queue of its own for each pool: a worker killed while it wrote to the queue would
        # leave its lock held.
        self._starts = self._context.SimpleQueue()
        self._loaded = False  # until one of its workers says its models are loaded
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._context,
            initializer=_init_process,
            initargs=(self._settings, threads_per_worker(self.workers), self._starts),
        )

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """A new pool in place of ``broken`` (once, however many of its futures report it)."""
        if self._pool is broken:
            log.error("A worker process died; starting a new pool of %d", self.workers)
            broken.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()

    def start(self, timeout: float = 300.0) -> None:
        # The pool starts a process per task that finds no idle worker; tasks that wait a
        # moment keep workers busy, until every one has answered (after loading its models).
        pids: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(pids) < self.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(pids)} of {self.workers} workers started")
            futures = [self._pool.submit(_worker_pid, 0.5) for _ in range(self.workers)]
            pids.update(f.result() for f in futures)

    def run(self, items: Iterable[WorkItem]) -> Iterator[Outcome]:
        running: dict[Future[_Result], tuple[str, int, ProcessPoolExecutor]] = {}
        """Each cine in flight: its future -> (SOP Instance UID, token, pool)."""
        started: dict[int, tuple[int, float]] = {}
        """Token of a cine a worker started -> (the worker's process id, when)."""
        progress = time.monotonic()
        """When a worker last reported a start or its models loaded, or the pool an answer."""
        stopped: set[int] = set()  # the tokens of cines whose worker was killed as hung
        finished: list[tuple[str, _Result]] = []
        tokens = iter(range(1 << 62))

        def submit(item: WorkItem) -> None:
            data = item.path.read_bytes()
            token = next(tokens)
            try:
                future = self._pool.submit(_process_in_pool, token, item.path.name, data)
            except BrokenProcessPool:  # broke since the last answer: its futures tell which
                self._replace(self._pool)
                future = self._pool.submit(_process_in_pool, token, item.path.name, data)
            running[future] = (item.sop_instance_uid, token, self._pool)

        def stop_overdue() -> float:
            """Kill the workers of the cines past the limit; the seconds to the next one's
            limit (at most 5: a start may yet be reported)."""
            nonlocal progress
            while not self._starts.empty():
                token, pid, when = self._starts.get()
                if token == _READY:
                    self._loaded = True
                else:
                    started[token] = (pid, when)
                progress = time.monotonic()
            now, wait_s = time.monotonic(), 5.0
            live = {token for _, token, _ in running.values()}
            for token in [t for t in started if t not in live]:  # reported after its answer
                del started[token]
            stall_s = self._limit if self._loaded else max(self._limit, START_S)
            if running and not started and now - progress > stall_s:
                log.error(
                    "No worker started or finished a cine for %g s (%s) with %d in flight; "
                    "stopping the pool's processes",
                    stall_s,
                    "max_cine_s" if self._loaded else "none had loaded its models",
                    len(running),
                )
                kill_processes(pool_processes(self._pool))
                progress = now
            for future, (key, token, pool) in running.items():
                if token not in started or token in stopped or pool is not self._pool:
                    continue
                pid, when = started[token]
                left = when + self._limit - now
                if left > 0:
                    wait_s = min(wait_s, left)
                elif not future.done():
                    log.error(
                        "%s: processing took longer than max_cine_s (%g s); stopping its "
                        "worker (process %d)",
                        key,
                        self._limit,
                        pid,
                    )
                    stopped.add(token)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            return max(wait_s, 0.01)

        def collect() -> tuple[str, _Result]:
            nonlocal progress
            while not finished:
                done, _ = wait(running, timeout=stop_overdue(), return_when=FIRST_COMPLETED)
                if done:
                    progress = time.monotonic()
                for future in done:
                    key, token, pool = running.pop(future)
                    started.pop(token, None)
                    try:
                        finished.append((key, future.result()))
                    except BrokenProcessPool:
                        why = overdue(self._limit) if token in stopped else WORKER_DIED
                        finished.append((key, (None, [], why)))
                        self._replace(pool)
            return finished.pop(0)

        return _stream(items, 2 * self.workers, submit, collect, self._budget)

    def close(self) -> None:
        """No more cines; workers still busy after :data:`CLOSE_S` (a cine that never
        returns, a worker stopped) are killed: the pool's own shutdown waited for them."""
        killed = end_pool(self._pool, CLOSE_S)
        if killed:
            log.warning("%d worker process(es) still busy after %.0f s are killed", killed, CLOSE_S)


class RayEngine:
    """One model-holding actor per worker, on a local Ray (default) or a cluster.

    An actor that dies (its process killed: the out-of-memory killer, a lost node) fails the
    cines it held with :data:`WORKER_DIED`; a new actor takes its place and the run goes on.
    An actor still on one cine ``max_cine_s`` after it started it (its calls run in turn: from
    when the call before it was answered) has hung: it is killed, that cine fails
    (:func:`overdue`) and the others it held are tried again, as when an actor dies."""

    def __init__(self, settings: Settings, workers: int, address: str | None = None) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(
                address=address,
                num_cpus=None if address else max(os.cpu_count() or 1, workers),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        self.workers = workers
        self._budget = settings.concurrent_pixels
        self._limit = settings.max_cine_s
        self._new_actor = partial(
            ray.remote(num_cpus=1)(_Worker).remote, settings, threads_per_worker(workers)
        )
        self._actors: list[Any] = [self._new_actor() for _ in range(workers)]

    def start(self, timeout: float = 300.0) -> None:
        """Every actor placed and its models loaded within ``timeout``; those the cluster did
        not place by then (fewer free CPUs than ``workers``) are given up and the run goes on
        with the others: cines given to an actor never placed never come back, and the run
        waited for them for good.

        Raises
        ------
        ConfigError
            Not one actor started.
        """
        import ray

        asked = {actor.ready.remote(): actor for actor in self._actors}
        ready, waiting = ray.wait(list(asked), num_returns=len(asked), timeout=timeout)
        pids = ray.get(ready)  # an actor whose models did not load says why
        log.info("Ray workers started (process ids %s)", ", ".join(map(str, pids)))
        if not waiting:
            return
        for ref in waiting:
            with contextlib.suppress(Exception):
                ray.kill(asked[ref])
        self._actors = [asked[ref] for ref in ready]
        if not self._actors:
            raise ConfigError(
                f"no Ray worker started within {timeout:g} s: has the cluster a free CPU?"
            )
        log.warning(
            "%d of %d Ray workers started within %g s (the cluster's free CPUs); the run goes "
            "on with them",
            len(self._actors),
            self.workers,
            timeout,
        )
        self.workers = len(self._actors)

    def run(self, items: Iterable[WorkItem]) -> Iterator[Outcome]:
        import ray
        from ray.exceptions import NodeDiedError, OutOfMemoryError, RayActorError

        # Each says the call's worker is gone: killed (RayActorError), killed by Ray's memory
        # monitor (OutOfMemoryError, not a RayActorError since Ray 2.3) or its node lost.
        worker_lost = (RayActorError, OutOfMemoryError, NodeDiedError)

        running: dict[Any, tuple[str, Any]] = {}
        """Each call in flight: its object reference -> (SOP Instance UID, actor)."""
        calls: dict[int, list[Any]] = {}
        """Each actor's calls in flight, in the order it runs them."""
        began: dict[Any, float] = {}
        """The call each actor runs now -> when it began (when the one before it answered, or
        when the actor was ready: a new actor loads its models first)."""
        loading: dict[int, Any] = {}
        """Each actor started in place of another -> its ready call, until it answers."""
        stopped: set[Any] = set()  # the calls whose actor was killed as hung

        def replace(actor: Any) -> None:
            if actor in self._actors:  # once, however many of its calls report it
                new: Any = self._new_actor()
                loading[id(new)] = new.ready.remote()
                self._actors[self._actors.index(actor)] = new

        def begin(actor: Any) -> None:
            queue = calls.get(id(actor))
            if queue and queue[0] not in began and id(actor) not in loading:
                began[queue[0]] = time.monotonic()

        def submit(item: WorkItem) -> None:
            # The actor with the fewest calls in flight (calls wait in turn on their actor).
            actor = min(self._actors, key=lambda a: len(calls.get(id(a), ())))
            data = item.path.read_bytes()
            ref = actor.process_keyed.remote(item.sop_instance_uid, item.path.name, data)
            running[ref] = (item.sop_instance_uid, actor)
            calls.setdefault(id(actor), []).append(ref)
            begin(actor)

        def answered(ref: Any, actor: Any) -> None:
            queue = calls.get(id(actor), [])
            if ref in queue:
                queue.remove(ref)
            began.pop(ref, None)
            if queue:
                begin(actor)
            else:
                calls.pop(id(actor), None)

        def stop_overdue() -> float:
            """Kill the actors whose call ran past the limit, another in each one's place;
            the seconds to the next call's limit."""
            for actor in self._actors:
                if id(actor) in loading and ray.wait([loading[id(actor)]], timeout=0)[0]:
                    del loading[id(actor)]
                    begin(actor)
            now, wait_s = time.monotonic(), 5.0
            for ref, when in list(began.items()):
                left = when + self._limit - now
                if left > 0:
                    wait_s = min(wait_s, left)
                    continue
                key, actor = running[ref]
                del began[ref]
                log.error(
                    "%s: processing took longer than max_cine_s (%g s); stopping its Ray "
                    "worker and starting another in its place",
                    key,
                    self._limit,
                )
                stopped.add(ref)
                calls.pop(id(actor), None)  # its other calls fail with it, none begins
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
                replace(actor)
            return max(wait_s, 0.01)

        def collect() -> tuple[str, _Result]:
            ready: list[Any] = []
            while not ready:
                ready, _ = ray.wait(list(running), num_returns=1, timeout=stop_overdue())
            (ref,) = ready
            key, actor = running.pop(ref)
            answered(ref, actor)
            try:
                _, result = ray.get(ref)
            except worker_lost as exc:
                if ref in stopped:
                    return key, (None, [], overdue(self._limit))
                if actor in self._actors:  # once, however many of its calls report it
                    log.error(
                        "A Ray worker died (%s); starting another in its place",
                        type(exc).__name__,
                    )
                    with contextlib.suppress(Exception):  # gone already, as a rule
                        ray.kill(actor)
                    replace(actor)
                return key, (None, [], WORKER_DIED)
            return str(key), result

        return _stream(items, 2 * self.workers, submit, collect, self._budget)

    def close(self) -> None:
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []


def _stream(
    items: Iterable[WorkItem],
    limit: int,
    submit: Callable[[WorkItem], None],
    collect: Callable[[], tuple[str, _Result]],
    budget: int | None = None,
) -> Iterator[Outcome]:
    """Keep up to ``limit`` items in flight, taking the next only when one is done (items
    are fetched lazily, so an archive is never all on disk at once). ``submit`` starts an
    item; ``collect`` blocks until one finishes and returns its SOP Instance UID and result.

    The cines in flight when a worker died (:data:`WORKER_DIED`) are tried again one at a time
    with nothing else in flight: a cine that kills its worker (a decoder's crash, memory) then
    fails alone (:data:`DIED_ALONE`), and those beside it are made. Before, all of them failed,
    and every later run sent them out together again, to die together again. A cine of more
    pixels than ``budget`` also runs alone (the workers' memory is their cines'). An item whose
    file cannot be read (removed from the folder since it was listed) fails, and the run goes
    on."""
    in_flight: dict[str, WorkItem] = {}
    solo: list[WorkItem] = []  # the suspects and the large cines, each to run by itself
    alone: str | None = None  # the one in flight by itself
    queue = iter(items)
    while True:
        while not in_flight and solo:  # the others done: one, alone
            single = solo.pop(0)
            if (unread := _submitted(single, submit)) is not None:
                yield unread
                continue
            in_flight[single.sop_instance_uid] = single
            alone = single.sop_instance_uid
        while not solo and alone is None and len(in_flight) < limit:
            if (new := next(queue, None)) is None:
                break
            if budget is not None and new.pixels > budget:
                solo.append(new)  # after the others: it runs alone
                break
            if (unread := _submitted(new, submit)) is not None:
                yield unread
                continue
            in_flight[new.sop_instance_uid] = new
        if not in_flight:
            return
        key, (record, files, error) = collect()
        item = in_flight.pop(key)
        if key == alone:
            alone = None
            if error == WORKER_DIED:
                error = DIED_ALONE
        elif error == WORKER_DIED:
            log.warning("%s was in flight when a worker died: tried again alone", item.path.name)
            solo.append(item)
            continue
        yield Outcome(item, record, files, error)


def _submitted(item: WorkItem, submit: Callable[[WorkItem], None]) -> Outcome | None:
    """``item`` submitted; or, when its file cannot be read, its failure."""
    try:
        submit(item)
    except OSError as exc:
        return Outcome(item, None, [], f"cannot read {item.path}: {exc}")
    return None


def make_engine(
    kind: str, settings: Settings, workers: int, ray_address: str | None = None
) -> Engine:
    if kind == "local":
        return LocalEngine(settings, workers)
    if kind == "ray":
        return RayEngine(settings, workers, ray_address)
    raise ValueError(f"unknown engine {kind!r}: use local or ray")
