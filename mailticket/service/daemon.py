"""`mailticket run`: the composition of everything that runs continuously.

    scheduler jobs   jobs.py: outbox, sla_check, autoclose, poll:<mailbox>
    threads          idle:<mailbox>  IMAP IDLE for mailboxes with idle = true
                     config watcher  reloads the TOML file when it changes
                     spool           with [service] spool: stores spooled mail, whoever fetched it
    listener         SMTP/LMTP intake when [intake] enabled = true
    ingest socket    data_dir/ingest.sock (LMTP) for plain `mailticket ingest`, unless
                     [service] ingest_socket = false (intake/handoff.py)

SIGTERM or SIGINT starts a clean stop: the stop event makes polls finish the
message in hand and return, the intake listener stops accepting and answers
the messages it holds, running jobs finish, leases are given back. Nothing is
acknowledged at a source before its commit, so even a hard kill loses nothing
(see intake/imap/ and intake/smtp.py).

A reload takes effect at once for rules, departments, agents, SLA plans,
tickets, security, smtp and mailboxes (poll jobs and IDLE threads follow the
new list). `[service]` and `[intake]` need a restart: their old values stay
in force and a warning says so.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from mailticket.config import Config, MailboxConfig
from mailticket.context import AppContext
from mailticket.errors import DatabaseUnavailable
from mailticket.intake.imap import PollResult, idle_mailbox
from mailticket.intake.smtp import IntakeServer, SocketServer
from mailticket.intake.spool import PAUSE_SOURCE, Processor
from mailticket.models import Outcome, RawMail
from mailticket.outbound.render import Renderer
from mailticket.service import health, jobs
from mailticket.service.reload import ConfigWatcher
from mailticket.service.scheduler import Scheduler
from mailticket.storage.db import current_revisions, enter_as_daemon, head_revisions

if TYPE_CHECKING:
    from mailticket.service.metrics import Metrics, MetricsServer

log = logging.getLogger("mailticket.service.daemon")

RESTART_SECTIONS = ("service", "intake")


@dataclass
class _IdleWorker:
    mailbox: MailboxConfig
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class Daemon:
    def __init__(self, ctx: AppContext, *, watch_config: bool = True) -> None:
        self.ctx = ctx
        self.stop_event = threading.Event()
        self.scheduler = Scheduler(ctx.engine)
        self.intake: IntakeServer | None = None
        self.socket: SocketServer | None = None
        self.watcher: ConfigWatcher | None = None
        self._watch_config = watch_config and ctx.config.source is not None
        self._threads: list[threading.Thread] = []
        self._idle: dict[str, _IdleWorker] = {}
        self._polled: dict[str, MailboxConfig] = {}
        self._mailbox_lock = threading.Lock()
        self.metrics: Metrics | None = None
        self.metrics_server: MetricsServer | None = None
        self.failure: str | None = None  # why the daemon stopped by itself, if it did
        if ctx.config.service.metrics:
            from mailticket.service.metrics import Metrics  # prometheus_client only when asked for

            self.metrics = Metrics(ctx)

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        # Before anything takes work: a migration from now on sees this daemon and refuses.
        enter_as_daemon(self.ctx.engine, health.heartbeat(self.ctx, self.scheduler.owner))
        config = self.ctx.config
        metrics = self.metrics
        if metrics is not None and config.service.metrics:
            from mailticket.service.metrics import MetricsServer

            self.metrics_server = MetricsServer(self.ctx, metrics, config.service.metrics)
            self.metrics_server.start()
        on_flush = metrics.flushed if metrics is not None else None
        for job in jobs.periodic(self.ctx, self.scheduler.owner, on_flush):
            self.scheduler.add(job.name, job.run, job.seconds, leased=job.leased)
        self.scheduler.add("schema", self._check_schema, health.HEARTBEAT_SECONDS)
        self._sync_mailboxes(config)
        if config.service.spool:
            processor = Processor(self.ctx, observe=self._spool_stored, on_pause=self._spool_paused)
            self._spawn("spool", processor.run, self.stop_event)
        if config.intake.enabled:
            intake = IntakeServer(self.ctx, on_stored=self._stored,
                                  observe=metrics.message if metrics is not None else None)
            intake.start()
            self.intake = intake
        if config.service.ingest_socket:
            self._serve_socket()
        self.scheduler.start()
        if self._watch_config and config.source is not None:
            self.watcher = ConfigWatcher(config.source, on_change=self._reload, config=config)
            self._spawn("config-watcher", self.watcher.watch, self.stop_event)
        log.info(
            "mailticket running",
            extra={
                "fields": {
                    "database": self.ctx.engine.dialect.name,
                    "mailboxes": [m.name for m in config.mailboxes if m.enabled],
                    "intake": f"{config.intake.protocol}://{config.intake.host}:{config.intake.port}"
                    if config.intake.enabled
                    else None,
                    "transport": config.smtp.transport,
                    "metrics": config.service.metrics,
                    "spool": config.service.spool,
                    "ingest_socket": str(self.socket.path) if self.socket is not None else None,
                }
            },
        )

    def _serve_socket(self) -> None:
        """Without the socket `ingest` stores in-process (slower, same outcome): a warning, no stop."""
        server = SocketServer(self.ctx, on_stored=self._stored,
                              observe=self.metrics.message if self.metrics is not None else None)
        try:
            if server.start():
                self.socket = server
        except OSError as exc:
            log.warning("ingest socket not served (ingest stores in-process): %s", exc,
                        extra={"fields": {"path": str(server.path)}})

    def _spawn(self, name: str, target: object, *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)
        return thread

    # -- jobs ----------------------------------------------------------------------------------

    def _stored(self, _outcome: Outcome) -> None:
        """New mail usually means an acknowledgement or alert to send: flush now, not in 5 s."""
        self.scheduler.run_soon("outbox")

    def _spool_stored(self, raw: RawMail, outcome: Outcome) -> None:
        if self.metrics is not None:
            self.metrics.spooled(raw, outcome)
        if outcome.status == "stored":
            self.scheduler.run_soon("outbox")

    def _spool_paused(self, fault: str | None, wait: float) -> None:
        """The spool processors' pause in `mailticket status`, as source "spool"."""
        until = self.ctx.clock() + timedelta(seconds=wait) if fault else None
        health.record_source(self.ctx, PAUSE_SOURCE, ok=fault is None, error=fault, paused_reason=fault,
                             paused_until=until)

    def _polled_result(self, result: PollResult) -> None:
        if self.metrics is not None:
            self.metrics.polled(result)
        if result.stored:
            self.scheduler.run_soon("outbox")

    def _poll(self, name: str) -> None:
        mailbox = self._polled.get(name)
        result = jobs.poll(self.ctx, mailbox, self.stop_event) if mailbox is not None else None
        if result is not None:
            self._polled_result(result)

    # -- mailboxes: poll jobs and IDLE threads, kept in step with the config --------------------

    def _sync_mailboxes(self, config: Config) -> None:
        with self._mailbox_lock:
            wanted = {m.name: m for m in config.mailboxes if m.enabled}
            for name in list(self._polled):
                if name not in wanted or wanted[name].idle or wanted[name] != self._polled[name]:
                    self.scheduler.remove(f"poll:{name}")
                    del self._polled[name]
            for name in list(self._idle):
                if name not in wanted or not wanted[name].idle or wanted[name] != self._idle[name].mailbox:
                    self._stop_idle(self._idle.pop(name))
            for name, mailbox in wanted.items():
                if mailbox.idle and name not in self._idle:
                    worker = _IdleWorker(mailbox)
                    worker.thread = threading.Thread(
                        target=idle_mailbox,
                        args=(self.ctx, mailbox, worker.stop),
                        kwargs={"on_poll": self._polled_result},
                        name=f"idle:{name}",
                        daemon=True,
                    )
                    worker.thread.start()
                    self._idle[name] = worker
                elif not mailbox.idle and name not in self._polled:
                    self._polled[name] = mailbox
                    self.scheduler.add(f"poll:{name}", partial(self._poll, name), float(mailbox.poll_seconds))

    @staticmethod
    def _stop_idle(worker: _IdleWorker, timeout: float = 60.0) -> None:
        worker.stop.set()
        if worker.thread is not None:
            worker.thread.join(timeout)
            if worker.thread.is_alive():
                log.warning("IDLE thread did not stop in time",
                            extra={"fields": {"mailbox": worker.mailbox.name}})

    # -- reload --------------------------------------------------------------------------------

    def _reload(self, new: Config) -> None:
        old = self.ctx.config
        kept = {s: getattr(old, s) for s in RESTART_SECTIONS if getattr(old, s) != getattr(new, s)}
        for section in kept:
            log.warning("config section [%s] changed: restart mailticket to apply it", section,
                        extra={"fields": {"section": section}})
        new = new.model_copy(update=kept)
        if new.service.templates_dir != old.service.templates_dir:
            renderer = Renderer(new.service.templates_dir)
            renderer.check()
            self.ctx.renderer = renderer
        self.ctx.config = new
        self._sync_mailboxes(new)

    def _check_schema(self) -> None:
        """Stop when the database was migrated under this daemon: its processors would read rows
        of a schema this version does not know. `migrate()` refuses while a daemon beats; this
        catches one whose beats had lapsed meanwhile (the database was unreachable, the host
        was suspended, its clock far behind)."""
        try:
            current = current_revisions(self.ctx.engine)
        except (DatabaseUnavailable, SQLAlchemyError) as exc:
            log.debug("schema not checked: %s", exc)  # whoever needs the database says so
            return
        expected = head_revisions()  # what this code was written for
        if current == expected:
            return
        self.failure = (
            f"stopped: the database schema changed under this daemon (revision"
            f" {', '.join(sorted(expected))} -> {', '.join(sorted(current)) or 'none'}):"
            " another version migrated it; start the version that matches it"
        )
        log.error("schema changed", extra={"fields": {"expected": sorted(expected),
                                                      "found": sorted(current)}})
        self.stop_event.set()

    # -- stop ----------------------------------------------------------------------------------

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        if signum is not None:
            log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
        self.stop_event.set()

    def stop(self) -> None:
        """The clean stop: each part finishes what it holds, in the order that loses nothing."""
        self.stop_event.set()
        if self.intake is not None:
            self.intake.stop()
        if self.socket is not None:
            self.socket.stop()
        with self._mailbox_lock:
            for worker in self._idle.values():
                worker.stop.set()
            for worker in self._idle.values():
                self._stop_idle(worker)
            self._idle.clear()
        self.scheduler.shutdown()
        for thread in self._threads:
            thread.join(10.0)
        health.record_heartbeat(self.ctx, self.scheduler.owner, stopped=True)
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.ctx.engine.dispose()
        log.info("mailticket stopped")

    def run_forever(self) -> None:
        """Start, wait for SIGTERM/SIGINT, stop cleanly."""
        previous = {s: signal.signal(s, self.request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not self.stop_event.wait(1.0):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
