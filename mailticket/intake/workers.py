"""Parser worker processes: the parse stage on every core, each message inside resource limits.

Parsing (`pipeline.parse.parse`, pure) is most of the cost of intake, and one Python process
parses on one core. A `ParsePool` runs it in `[service] workers` child processes (0 = one per
core) while the calling process keeps everything else: fetching, storing in order, committing
and acknowledging. Any intake path can use it; results come back in the order given, so the
caller stores them in that order (a reply after the message it answers).

    pool = shared_pool(ctx.config.service)
    job = pool.submit([raw1, raw2], ctx.blobs.local_root)  # parsing (and raw blobs) start now
    ...                                    # e.g. store the previous group meanwhile
    for parsed in job.results():           # ParsedMessage | ParseError, in order
        ...

Given a blob folder with the messages (`Blobs.local_root`), a worker also writes each message's
raw bytes there (storage/blobfiles.py) and names them in `ParsedMessage.stored_blobs`: creating
a file costs about a millisecond of system CPU, which the storing process, intake's pace-setter,
then does not pay. A write the worker cannot make is left to the storing process.

Each child runs under limits of its own, so one hostile message cannot exhaust the host:

  worker_memory_mb      RLIMIT_AS: the address space a worker may add to what it holds after
                        start; beyond it an allocation fails (MemoryError: the message is refused
                        at once as a ParseError naming the limit) or the worker dies
  worker_cpu_seconds    RLIMIT_CPU, set afresh before each message: a message that needs more CPU
                        gets SIGXCPU and the worker dies

A worker that dies (a limit, a crash in a C extension, kill -9) is replaced by the pool, and the
message it had in hand comes back as `WorkerLost`, a ParseError that names the cause. The
caller decides what a loss costs: IMAP intake charges the message an attempt and parses it
again, and quarantines it with that reason after `MAX_ATTEMPTS` (intake/imap/poller.py), so a
worker killed from outside costs a good message nothing but a second parse.

Start method: "spawn". A worker is a fresh interpreter that imports only the parser (about
0.4 s, paid once per worker, in parallel): never a fork of the daemon, whose threads could hold
locks and whose database connections a forked child could close under it. A process forked
from one that has a pool (a test's storm of `fetch` processes) starts a pool of its own. Pickling
costs little next to parsing: a ParsedMessage carries its attachments' bytes, about 0.15 ms
per message to unpickle on the benchmark's mix (docs/benchmarks.md).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import queue
import resource
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from mailticket.config.schema import ServiceConfig
from mailticket.errors import DiskUnavailable, ParseError
from mailticket.models import ParsedMessage
from mailticket.pipeline.parse import parse
from mailticket.storage.blobfiles import write_blob

log = logging.getLogger("mailticket.intake.workers")

Parsed = ParsedMessage | ParseError
Parser = Callable[..., ParsedMessage]  # `parse`'s signature: (raw, *, max_bytes)
OUT_OF_MEMORY = 3  # a worker's exit status when a message did not even fit through its pipe


class WorkerLost(ParseError):
    """The worker parsing this message died (a limit, a crash, a kill): nothing is known of the
    message itself. `reason` says how the worker ended."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"parser worker {reason}")


@dataclass(frozen=True)
class Limits:
    """What one worker may use; `max_bytes` is the parse stage's own size limit."""

    memory_mb: int
    cpu_seconds: int
    max_bytes: int


def worker_count(configured: int) -> int:
    """`[service] workers`: 0 means one per core this process may run on."""
    return configured if configured > 0 else len(os.sched_getaffinity(0)) or 1


class ParseJob:
    """Messages handed to the pool; `results()` waits for them, in the order they were given."""

    def __init__(self, futures: list[Future[Parsed]]) -> None:
        self._futures = futures

    def results(self) -> list[Parsed]:
        return [future.result() for future in self._futures]


@dataclass(frozen=True)
class _Task:
    raw: bytes
    future: Future[Parsed]
    blob_root: Path | None = None


class ParsePool:
    """`workers` parser processes under `limits`; thread-safe (several mailboxes may share one).

    Each worker has its own pipe and a thread here that feeds it one message at a time, so the
    message a dead worker had is always known: no shared queue a killed process could leave
    locked or half-read. `parser` is the parse stage; tests hand in a module-level function
    that misbehaves on cue.
    """

    def __init__(self, workers: int, limits: Limits, parser: Parser = parse) -> None:
        self.workers = worker_count(workers)
        self.limits = limits
        self.parser = parser
        self._context = multiprocessing.get_context("spawn")
        self._closing = False  # the process is exiting: a lost worker is not replaced
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._feeders = [
            threading.Thread(target=self._feed, name=f"parser-feeder-{n}", daemon=True)
            for n in range(self.workers)
        ]
        for feeder in self._feeders:
            feeder.start()

    @classmethod
    def from_config(cls, service: ServiceConfig) -> ParsePool:
        return cls(service.workers, limits_of(service))

    def submit(self, raws: Sequence[bytes], blob_root: Path | None = None) -> ParseJob:
        """Start parsing `raws` (one task each, spread over the workers); returns at once.

        `blob_root`: the blob folder (`Blobs.local_root`) the worker writes each message's raw
        bytes into, marking them in `ParsedMessage.stored_blobs`; None: it writes nothing."""
        futures: list[Future[Parsed]] = []
        for raw in raws:
            future: Future[Parsed] = Future()
            self._tasks.put(_Task(raw, future, blob_root))
            futures.append(future)
        return ParseJob(futures)

    def parse_many(self, raws: Sequence[bytes], blob_root: Path | None = None) -> list[Parsed]:
        """Parse `raws` in the workers and wait: one result per message, in order."""
        return self.submit(raws, blob_root).results()

    def close(self) -> None:
        """Stop the workers, after the tasks already submitted."""
        for _ in self._feeders:
            self._tasks.put(None)
        for feeder in self._feeders:
            feeder.join()

    def __enter__(self) -> ParsePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exiting(self) -> None:
        """The process is exiting (atexit, before multiprocessing ends the workers): no worker is
        started again and no result is given any more, so an exit in the middle of a parse leaves
        no spawned child half-started and no lost-worker warning in the log. A parse cut short is
        not a `WorkerLost`, which intake would charge to the message: its future stays pending,
        and the (daemon) thread waiting on it ends with the process, its message unacknowledged."""
        self._closing = True

    def _feed(self) -> None:
        """One worker's life in this process: start it, hand it messages, replace it when it dies."""
        worker: _Worker | None = None
        while (task := self._tasks.get()) is not None and not self._closing:
            if worker is None:
                worker = _Worker(self._context, self.parser, self.limits)
            try:
                worker.conn.send(task.blob_root)
                worker.conn.send_bytes(task.raw)
                result: Parsed = worker.conn.recv()
            except (EOFError, OSError):
                reason = worker.end(self.limits)
                if self._closing:
                    return
                log.warning("parser worker lost; starting another",
                            extra={"fields": {"pid": worker.process.pid, "reason": reason}})
                task.future.set_result(WorkerLost(reason))
                worker = None
                continue
            task.future.set_result(result)
        if worker is not None and not self._closing:  # at exit multiprocessing ends the worker
            worker.conn.close()  # the worker reads EOF and exits
            worker.process.join()


class _Worker:
    """A parser process and the parent's end of its pipe."""

    def __init__(self, context: multiprocessing.context.SpawnContext, parser: Parser,
                 limits: Limits) -> None:
        self.conn, child = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=_serve, args=(child, parser, limits), name="mailticket-parser", daemon=True
        )
        self.process.start()
        child.close()

    def end(self, limits: Limits) -> str:
        """After the pipe broke: reap the process and say how it ended."""
        self.conn.close()
        self.process.join()
        return _how_it_ended(self.process.exitcode, limits)


def limits_of(service: ServiceConfig) -> Limits:
    return Limits(
        memory_mb=service.worker_memory_mb,
        cpu_seconds=service.worker_cpu_seconds,
        max_bytes=int(service.max_message_mb * 1024 * 1024),
    )


_shared: ParsePool | None = None
_shared_lock = threading.Lock()


def _forget_shared() -> None:
    """In a forked child: the parent's pool is not ours (its feeder threads did not come along)."""
    global _shared, _shared_lock
    _shared, _shared_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_shared)


def _exiting() -> None:
    """Registered after multiprocessing's own exit handler, so it runs first (atexit is LIFO):
    the shared pool stops before multiprocessing terminates its daemonic workers."""
    with _shared_lock:
        if _shared is not None:
            _shared.exiting()


atexit.register(_exiting)


def shared_pool(service: ServiceConfig) -> ParsePool:
    """This process's pool, started on first use and kept: a daemon or a command pays the start
    once. A reload that changes the workers or their limits starts a new one (the old one ends
    after the work already given to it)."""
    global _shared
    wanted = (worker_count(service.workers), limits_of(service))
    with _shared_lock:
        if _shared is not None and (_shared.workers, _shared.limits) != wanted:
            _shared.close()
            _shared = None
        if _shared is None:
            _shared = ParsePool(*wanted)
            log.info("parser workers started", extra={"fields": {
                "workers": _shared.workers, "memory_mb": service.worker_memory_mb,
                "cpu_seconds": service.worker_cpu_seconds}})
        return _shared


def parse_settled(pool: ParsePool, raw: bytes, blob_root: Path | None, tries: int = 3) -> Parsed:
    """One message for intake that has nowhere to charge a worker's death (an SMTP or LMTP
    session, the ingest socket): parsed again when its worker dies, up to `tries` times in all,
    then a ParseError naming the cause, which the store quarantines. A worker killed from
    outside costs a good message one more parse; a message that kills every worker it is given
    is kept unparsed, as IMAP intake does after three (intake/imap/poller.py)."""
    for attempt in range(1, tries + 1):
        result = pool.parse_many([raw], blob_root)[0]
        if not isinstance(result, WorkerLost):
            return result
        log.warning("parser worker lost on a message", extra={"fields": {
            "attempt": attempt, "reason": result.reason}})
    return ParseError(f"{result} on each of {tries} attempts; kept unparsed")


# -- in the worker ------------------------------------------------------------------------------


def _serve(conn: Connection, parser: Parser, limits: Limits) -> None:
    """A worker: limits first, then one message in (after the blob folder to keep it in, or
    None), one result out, until the parent hangs up."""
    _limit(limits)
    folders: dict[Path, set[str]] = {}  # the blob folders' subfolders made, by blob folder
    while True:
        try:
            blob_root: Path | None = conn.recv()
            raw = conn.recv_bytes()
        except (EOFError, ConnectionResetError):  # the parent hung up, or died
            return
        except MemoryError:  # the rest of the message is still in the pipe: this worker is done
            os._exit(OUT_OF_MEMORY)
        result = _parse_limited(parser, raw, limits)
        if blob_root is not None and isinstance(result, ParsedMessage):
            result = _keep_raw(blob_root, raw, result, folders.setdefault(blob_root, set()))
        try:
            conn.send(result)
        except MemoryError:
            os._exit(OUT_OF_MEMORY)
        except (BrokenPipeError, ConnectionResetError):
            return


def _limit(limits: Limits) -> None:
    """No core files, and the address-space limit on top of what the worker holds after start."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with open("/proc/self/statm") as statm:
        held = int(statm.read().split()[0]) * resource.getpagesize()
    ceiling = held + limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))


def _keep_raw(root: Path, raw: bytes, parsed: ParsedMessage, folders: set[str]) -> ParsedMessage:
    """Write the raw bytes into the blob folder here, on the worker's core: creating a file costs
    about a millisecond of system CPU, which the storing process (one core, the bottleneck of
    intake) then does not pay. A write that fails is left to the storing process, which meets
    the fault itself (disk full pauses intake there)."""
    try:
        write_blob(root, parsed.raw_sha256, raw, folders)
    except DiskUnavailable:
        return parsed
    return replace(parsed, stored_blobs=parsed.stored_blobs | {parsed.raw_sha256})


def _parse_limited(parser: Parser, raw: bytes, limits: Limits) -> Parsed:
    """One message, with `cpu_seconds` more CPU than this worker has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (used + limits.cpu_seconds, hard))
    try:
        return parser(raw, max_bytes=limits.max_bytes)
    except (ParseError, MemoryError) as exc:
        if isinstance(exc, ParseError) and not isinstance(exc.__cause__, MemoryError):
            return exc
        return ParseError(f"parsing needs more than worker_memory_mb ({limits.memory_mb} MB)")


def _how_it_ended(exitcode: int | None, limits: Limits) -> str:
    """A dead worker's exit, in an operator's words."""
    if exitcode == OUT_OF_MEMORY:
        return f"ran out of worker_memory_mb ({limits.memory_mb} MB)"
    if exitcode == -signal.SIGXCPU:
        return f"exceeded worker_cpu_seconds ({limits.cpu_seconds} s)"
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        if exitcode == -signal.SIGKILL:
            return f"was killed ({name}: out of memory, or by an operator)"
        return f"crashed ({name}; worker_memory_mb is {limits.memory_mb})"
    return f"exited with status {exitcode}"
