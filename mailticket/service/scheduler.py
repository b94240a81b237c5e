"""Periodic jobs of the daemon on APScheduler 3's BackgroundScheduler.

The daemon hands in plain callables; this module only decides when they run.
Every job runs at most once at a time (`max_instances=1`), missed runs collapse
into one (`coalesce`), and an exception is logged and never stops the
schedule.

A *leased* job runs in one process at a time across every process sharing the
database: each run first takes (or renews) the lease `job:<name>` for its
interval plus a grace period and keeps it, so a second daemon's copy of the
job skips until the holder stops renewing. Jobs that are safe in parallel by
themselves (mailbox polls hold their own mailbox lease, outbox rows are
claimed with SKIP LOCKED) run unleased.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from mailticket import logs
from mailticket.storage import lease

log = logging.getLogger("mailticket.service.scheduler")

LEASE_GRACE_SECONDS = 30.0


class Scheduler:
    def __init__(self, engine: Engine, owner: str | None = None) -> None:
        self.engine = engine
        self.owner = owner or lease.owner_id()
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._leases: set[str] = set()
        self._running: set[str] = set()
        self._stopping = False
        self._lock = threading.Condition()
        # APScheduler logs every run (INFO) and every run skipped because the last one still runs
        # (WARNING); our jobs log what they did, and `_run` warns when one outlasts its interval.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)

    def add(self, name: str, fn: Callable[[], Any], seconds: float, *, leased: bool = False) -> None:
        """Run `fn` now and every `seconds`; replaces a job of the same name."""
        self._scheduler.add_job(
            self._run,
            "interval",
            args=(name, fn, seconds, leased),
            seconds=seconds,
            id=name,
            name=name,
            replace_existing=True,
            next_run_time=datetime.now(UTC),
        )

    def remove(self, name: str) -> None:
        if self._scheduler.get_job(name) is not None:
            self._scheduler.remove_job(name)

    def names(self) -> list[str]:
        return [job.id for job in self._scheduler.get_jobs()]

    def run_soon(self, name: str) -> None:
        """Bring a job's next run forward to now (no-op while it runs: it is busy with it anyway)."""
        with self._lock:
            if self._stopping or name in self._running:
                return
        job = self._scheduler.get_job(name)
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC))

    def _run(self, name: str, fn: Callable[[], Any], seconds: float, leased: bool) -> None:
        if leased:
            lease_name = f"job:{name}"
            if not lease.acquire(self.engine, lease_name, self.owner, seconds + LEASE_GRACE_SECONDS):
                return
            with self._lock:
                self._leases.add(lease_name)
        with self._lock:
            self._running.add(name)
        started = time.monotonic()
        try:
            fn()
        except Exception as exc:
            logs.failure(log, "job failed", exc, job=name)
        finally:
            with self._lock:
                self._running.discard(name)
                self._lock.notify_all()
        elapsed = time.monotonic() - started
        if elapsed > seconds:
            log.warning("job ran longer than its interval",
                        extra={"fields": {"job": name, "seconds": round(elapsed, 1), "interval": seconds}})

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop scheduling, wait for running jobs to finish, give the job leases back.

        APScheduler's own shutdown holds its job-store lock while it waits for running jobs,
        so a job touching the scheduler then (run_soon) would deadlock it: pause first, let
        the running jobs end, and only then shut APScheduler down.
        """
        with self._lock:
            self._stopping = True
        if self._scheduler.running:
            self._scheduler.pause()
            with self._lock:
                self._lock.wait_for(lambda: not self._running)
            self._scheduler.shutdown(wait=True)
        for name in sorted(self._leases):
            lease.release(self.engine, name, self.owner)  # logs it when the database is gone
        self._leases.clear()
