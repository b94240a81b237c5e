"""The parser pool (intake/workers.py): the same results as parsing in-process, in order, and a
message that breaks a limit or kills its worker costs only itself; the pool replaces the worker."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mailticket.config.schema import ServiceConfig
from mailticket.errors import ParseError
from mailticket.intake.workers import Limits, ParsePool, WorkerLost, shared_pool, worker_count
from mailticket.models import ParsedMessage
from mailticket.pipeline.parse import parse
from mailticket.storage.blobfiles import blob_path
from tests.factories import CORPUS, DIE, SPIN, mail, misbehaving_parse

LIMITS = Limits(memory_mb=256, cpu_seconds=1, max_bytes=30 * 1024 * 1024)


@pytest.fixture(scope="module")
def pool() -> Iterator[ParsePool]:
    with ParsePool(2, LIMITS, parser=misbehaving_parse) as started:
        yield started


def test_results_equal_an_in_process_parse_in_the_order_given(pool: ParsePool) -> None:
    raws = [path.read_bytes() for path in sorted(CORPUS.glob("**/*.eml"))[:60]]
    raws += [mail(subject=f"message {n}") for n in range(40)] + [b"", b"   \r\n"]
    results = pool.parse_many(raws)
    assert len(results) == len(raws)
    for raw, result in zip(raws, results, strict=True):
        try:
            expected: ParsedMessage | ParseError = parse(raw, max_bytes=LIMITS.max_bytes)
        except ParseError as exc:
            expected = exc
        if isinstance(expected, ParseError):
            assert type(result) is ParseError and str(result) == str(expected)
        else:
            assert result == expected


def test_a_message_over_the_cpu_limit_ends_its_worker_and_spares_the_others(pool: ParsePool) -> None:
    raws = [mail(subject="before"), mail(body=SPIN.decode()), mail(subject="after")]
    before, spun, after = pool.parse_many(raws)
    assert isinstance(spun, WorkerLost)
    assert str(spun) == "parser worker exceeded worker_cpu_seconds (1 s)"
    assert isinstance(before, ParsedMessage) and before.subject == "before"
    assert isinstance(after, ParsedMessage) and after.subject == "after"
    again = pool.parse_many([mail(subject=f"m{n}") for n in range(4)])  # replaced: all workers serve
    assert [r.subject for r in again if isinstance(r, ParsedMessage)] == ["m0", "m1", "m2", "m3"]


def test_a_killed_worker_loses_only_its_message(pool: ParsePool) -> None:
    results = pool.parse_many([mail(body=DIE.decode()), mail(subject="kept")])
    assert isinstance(results[0], WorkerLost)
    assert results[0].reason.startswith("was killed (SIGKILL")
    assert isinstance(results[1], ParsedMessage) and results[1].subject == "kept"


def test_a_message_over_the_memory_limit_is_refused_naming_the_limit() -> None:
    blob = base64.encodebytes(os.urandom(8 << 20)).decode()
    big = (
        "From: a@customer.example\r\nSubject: big\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{blob}"
    ).encode()
    with ParsePool(1, Limits(memory_mb=32, cpu_seconds=5, max_bytes=LIMITS.max_bytes)) as small:
        refused, unread, fine = small.parse_many([big, big * 4, mail(subject="small")])
    assert type(refused) is ParseError
    assert str(refused) == "parsing needs more than worker_memory_mb (32 MB)"
    assert isinstance(unread, WorkerLost)  # did not even fit through the pipe
    assert str(unread) == "parser worker ran out of worker_memory_mb (32 MB)"
    assert isinstance(fine, ParsedMessage) and fine.subject == "small"


def test_workers_zero_means_one_per_core() -> None:
    assert worker_count(0) == len(os.sched_getaffinity(0))
    assert worker_count(3) == 3


def test_the_shared_pool_is_kept_until_its_settings_change() -> None:
    service = ServiceConfig(workers=1)
    first = shared_pool(service)
    assert shared_pool(ServiceConfig(workers=1)) is first
    second = shared_pool(ServiceConfig(workers=1, worker_cpu_seconds=7))
    assert second is not first and second.limits.cpu_seconds == 7
    assert second.parse_many([mail(subject="x")])[0].subject == "x"  # type: ignore[union-attr]


def test_workers_given_a_blob_folder_keep_each_raw_message_there(tmp_path: Path) -> None:
    """The storing process then skips the write (and its millisecond of system CPU)."""
    raws = [mail(subject="kept"), mail(subject="kept too")]
    with ParsePool(1, LIMITS) as writing:
        parsed = writing.parse_many([*raws, b""], tmp_path)
    for raw, result in zip(raws, parsed, strict=False):
        assert isinstance(result, ParsedMessage)
        digest = hashlib.sha256(raw).hexdigest()
        assert result.stored_blobs == {digest} and result.raw_sha256 == digest
        assert blob_path(tmp_path, digest).read_bytes() == raw
    assert not isinstance(parsed[2], ParsedMessage)  # refused: nothing kept by the worker


def test_a_worker_that_cannot_write_the_blob_leaves_it_to_the_storing_process(tmp_path: Path) -> None:
    """A file where the folder should be (root ignores mode bits): the parse still comes back,
    with nothing marked kept, so the storing process writes the blob and meets the fault."""
    blocked = tmp_path / "blobs"
    blocked.write_bytes(b"")
    with ParsePool(1, LIMITS) as writing:
        (result,) = writing.parse_many([mail(subject="disk full")], blocked)
    assert isinstance(result, ParsedMessage) and result.subject == "disk full"
    assert result.stored_blobs == frozenset()


def test_one_pool_serves_several_blob_folders(pool: ParsePool, tmp_path: Path) -> None:
    """The folder travels with each message, so a pool is not restarted for another desk (each
    test's, or a reload's) and messages without one are only parsed."""
    first, second = tmp_path / "a", tmp_path / "b"
    raws = [mail(subject="to a"), mail(subject="to b"), mail(subject="nowhere")]
    results = [*pool.parse_many(raws[:1], first), *pool.parse_many(raws[1:2], second),
               *pool.parse_many(raws[2:])]
    digests = [hashlib.sha256(raw).hexdigest() for raw in raws]
    assert [r.stored_blobs for r in results] == [{digests[0]}, {digests[1]}, frozenset()]  # type: ignore[union-attr]
    assert blob_path(first, digests[0]).read_bytes() == raws[0]
    assert blob_path(second, digests[1]).read_bytes() == raws[1]
    assert not blob_path(first, digests[2]).exists() and not blob_path(second, digests[2]).exists()


def test_a_process_that_exits_in_the_middle_of_a_parse_starts_no_worker_and_warns_of_none() -> None:
    """At exit multiprocessing terminates the workers; the pool, told first, replaces none of
    them (a child spawned then dies with a traceback in the daemon's log: `systemctl stop`
    during intake) and does not call the ending a lost worker."""
    script = (
        "import time\n"
        "from mailticket.intake import workers\n"
        "from tests.factories import SPIN, mail, misbehaving_parse\n"
        "workers._shared = workers.ParsePool(1, workers.Limits(256, 30, 10**7), misbehaving_parse)\n"
        "workers._shared.submit([mail(body='x ' + SPIN.decode()), mail(), mail()])\n"
        "time.sleep(1.5)\n"  # the worker is spinning on the first message; two more wait
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "starting another" not in done.stderr, done.stderr


def _parsers(besides: set[int]) -> set[int]:
    """The live parser processes this process started, other than `besides`."""
    return {c.pid for c in psutil.Process().children() if c.pid not in besides and c.is_running()
            and c.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(c.cmdline())}


def test_a_parse_cut_short_by_the_exit_is_no_lost_worker_to_charge_the_message_for() -> None:
    """Intake charges a message for a `WorkerLost` and quarantines it after three: a parse that
    the process's own exit ends must give no result at all (its message stays unacknowledged),
    and no worker is started again."""
    others = _parsers(set())  # other tests' pools in this process
    pool = ParsePool(1, Limits(256, 30, 10**7), misbehaving_parse)
    job = pool.submit([mail(body="x " + SPIN.decode()), mail()])
    deadline = time.monotonic() + 20
    while not (mine := _parsers(others)):
        assert time.monotonic() < deadline, "no parser worker started"
        time.sleep(0.01)
    pool.exiting()
    for pid in mine:
        os.kill(pid, signal.SIGKILL)  # as multiprocessing's exit handler ends it
    time.sleep(1.0)
    assert not any(future.done() for future in job._futures)
    assert _parsers(others | mine) == set()
