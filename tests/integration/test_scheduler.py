"""The job scheduler: leased jobs run in one process at a time; a failing job keeps its schedule."""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine

from mailticket.service.scheduler import Scheduler
from tests.daemonproc import wait_until


def test_leased_job_runs_in_one_scheduler_and_moves_on_when_it_stops(engine: Engine) -> None:
    runs: list[str] = []
    lock = threading.Lock()

    def job(owner: str) -> None:
        with lock:
            runs.append(owner)

    # Two "processes" sharing one database (owners on another host: no dead-PID shortcut).
    first, second = Scheduler(engine, "host-a:1:a"), Scheduler(engine, "host-b:2:b")
    for scheduler, owner in ((first, "a"), (second, "b")):
        scheduler.add("sla_check", lambda o=owner: job(o), 0.2, leased=True)
        scheduler.start()
    try:
        time.sleep(1.5)
        with lock:
            assert len(set(runs)) == 1 and len(runs) >= 3, runs
            holder = runs[0]
        # The holder stops (and gives the lease back): the other one takes over.
        (first if holder == "a" else second).shutdown()
        wait_until(lambda: runs[-1] != holder, timeout=5, what="the other scheduler taking over")
    finally:
        first.shutdown()
        second.shutdown()


def test_a_failing_job_is_logged_and_runs_again(engine: Engine) -> None:
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    scheduler = Scheduler(engine)
    scheduler.add("flaky", flaky, 0.1)
    scheduler.start()
    try:
        wait_until(lambda: len(calls) >= 3, timeout=5, what="three runs")
    finally:
        scheduler.shutdown()


def test_run_soon_from_inside_a_job_during_shutdown_does_not_hang(engine: Engine) -> None:
    scheduler = Scheduler(engine)
    started = threading.Event()

    def slow() -> None:
        started.set()
        time.sleep(0.5)
        scheduler.run_soon("other")  # what a poll does after storing mail

    scheduler.add("other", lambda: None, 60)
    scheduler.add("slow", slow, 60)
    scheduler.start()
    started.wait(5)
    stopper = threading.Thread(target=scheduler.shutdown)
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive(), "shutdown deadlocked"
