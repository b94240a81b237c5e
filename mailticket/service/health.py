"""The desk's health as the admin sees it: `mailticket status`, `/healthz`, `ingest`'s warning.

What is recorded (migration 0007), by whom:

    heartbeats      every `run` process, every HEARTBEAT_SECONDS (host, pid, started, last beat;
                    a clean stop marks the row stopped)
    source_health   every intake source after each contact: `imap:<mailbox>` after each poll
                    pass or IDLE wake-up, `smtp`/`lmtp` after each message (ok at most every
                    OK_EVERY_SECONDS), anyone pausing a source (with the reason)

Recording is best effort: a database that cannot take the row is logged on one line and
intake goes on (the source's own failure is what the admin needs, and it is logged too).
`collect` reads it all back, with the outbox, the quarantine and the OAuth tokens, and names
every reason the desk is unhealthy in the admin's words.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import Executable
from sqlmodel import Session, col, select

from mailticket import logs
from mailticket.config import MailboxConfig, parse_duration
from mailticket.context import AppContext
from mailticket.errors import DatabaseUnavailable, MailticketError
from mailticket.intake.pipe import Incoming
from mailticket.storage.db import upsert
from mailticket.storage.serialize import iso
from mailticket.storage.tables import Heartbeat, IntakeRecord, OutboxMessage, SourceHealth

log = logging.getLogger("mailticket.service.health")

HEARTBEAT_SECONDS = 5.0
OK_EVERY_SECONDS = 10.0  # a busy listener records its good health this often, not per message
KEEP_STOPPED = timedelta(days=7)  # heartbeats of stopped or vanished daemons are kept this long
ERROR_CHARS = 2000
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")  # C0, DEL and C1 (\x9b starts an escape sequence too)
IDLE_PASS_SECONDS = 60.0  # an IDLE mailbox is passed over at least this often (intake.imap.idle)


def one_line(text: str) -> str:
    """Text for the admin's terminal: one line, no control characters, single spaces."""
    return " ".join(_CONTROL.sub(" ", text).split())


def mailbox_source(mailbox: MailboxConfig | str) -> str:
    """The source name of a mailbox in `source_health`."""
    return f"imap:{mailbox if isinstance(mailbox, str) else mailbox.name}"


# -- recording ---------------------------------------------------------------------------------


def _write(ctx: AppContext, what: str, *statements: Executable) -> None:
    try:
        with ctx.engine.begin() as conn:
            for statement in statements:
                conn.execute(statement)
    except DatabaseUnavailable as exc:  # whoever needed the database has said so already
        log.debug("%s not recorded: %s", what, exc)
    except (SQLAlchemyError, MailticketError) as exc:
        logs.failure(log, f"{what} not recorded", exc, logging.WARNING)


def record_heartbeat(ctx: AppContext, owner: str, *, stopped: bool = False) -> None:
    """This daemon is alive (or, with `stopped`, has stopped cleanly); old rows are pruned."""
    table = Heartbeat.__table__  # type: ignore[attr-defined]
    if stopped:
        _write(ctx, "heartbeat", update(table).where(table.c.owner == owner).values(stopped_at=ctx.clock()))
        return
    _write(ctx, "heartbeat", heartbeat(ctx, owner),
           delete(table).where(table.c.beat_at < ctx.clock() - KEEP_STOPPED))


def heartbeat(ctx: AppContext, owner: str) -> Executable:
    """The statement of one beat: the row of this daemon, made or renewed."""
    now = ctx.clock()
    table = Heartbeat.__table__  # type: ignore[attr-defined]
    stmt = upsert(ctx.engine.dialect.name, table).values(
        owner=owner, host=socket.gethostname(), pid=os.getpid(), started_at=now, beat_at=now
    )
    return stmt.on_conflict_do_update(index_elements=["owner"], set_={"beat_at": now, "stopped_at": None})


def record_source(
    ctx: AppContext,
    source: str,
    *,
    ok: bool,
    error: str | None = None,
    paused_reason: str | None = None,
    backlog: int | None = None,
    paused_until: datetime | None = None,
) -> None:
    """The outcome of one contact with an intake source.

    `ok`: it worked (`last_ok_at`), else `error` says what failed (`last_error`). Every call
    sets the pause (None: not paused); `backlog` None leaves the last known backlog as it is.
    Texts are kept on one line without control characters: a server's (or a message's) words
    in an error must not drive the admin's terminal.
    """
    now = ctx.clock()
    values: dict[str, Any] = {
        "source": source, "last_poll_at": now, "ok": ok,
        "paused_reason": one_line(paused_reason) if paused_reason else None, "paused_until": paused_until,
    }
    if ok:
        values["last_ok_at"] = now
    else:
        values["last_error"] = one_line(error or "failed")[:ERROR_CHARS]
        values["last_error_at"] = now
    if backlog is not None:
        values["backlog"] = backlog
    stmt = upsert(ctx.engine.dialect.name, SourceHealth.__table__).values(**values)  # type: ignore[attr-defined]
    changed = {k: v for k, v in values.items() if k != "source"}
    _write(ctx, f"health of {source}", stmt.on_conflict_do_update(index_elements=["source"], set_=changed))


class SourceRecorder:
    """`record_source` for a source that reports per message: every failure, good news now and then.

    Thread-safe (the SMTP listener reports from its worker threads).
    """

    def __init__(self, ctx: AppContext, source: str, every: float = OK_EVERY_SECONDS) -> None:
        self.ctx = ctx
        self.source = source
        self.every = every
        self._last_ok = float("-inf")
        self._failing = False
        self._lock = threading.Lock()

    def ok(self) -> None:
        with self._lock:
            due = self._failing or time.monotonic() - self._last_ok >= self.every
            if due:
                self._failing, self._last_ok = False, time.monotonic()
        if due:
            record_source(self.ctx, self.source, ok=True)

    def failed(self, error: str) -> None:
        with self._lock:
            self._failing = True
        record_source(self.ctx, self.source, ok=False, error=error)


# -- reading -----------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything `status` shows; `problems` empty means healthy."""

    checked_at: datetime
    daemons: list[dict[str, Any]]
    sources: list[dict[str, Any]]
    outbox: dict[str, Any]
    quarantine: dict[str, Any]
    tokens: list[dict[str, Any]]
    spool: dict[str, Any] = field(default_factory=dict)  # `[service] spool`: waiting, claimed, oldest
    incoming: dict[str, Any] = field(default_factory=dict)  # `ingest --detach` mail not stored yet
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "problems": self.problems,
            "checked_at": iso(self.checked_at),
            "daemons": self.daemons,
            "sources": self.sources,
            "outbox": self.outbox,
            "quarantine": self.quarantine,
            "tokens": self.tokens,
            "spool": self.spool,
            "incoming": self.incoming,
        }


def age(now: datetime, then: datetime | None) -> float | None:
    return round((now - then).total_seconds(), 1) if then is not None else None


def oauth_tokens(ctx: AppContext) -> list[dict[str, Any]]:
    """Each OAuth mailbox's token state as JSON, with `healthy` and `problem` (read from the token
    files, no network: docs/oauth.md)."""
    from mailticket.oauth.status import status_for_config  # `status` needs it; `ingest`'s warning does not

    return [row.as_json() for row in status_for_config(ctx.config)]


def collect(ctx: AppContext) -> Report:
    """Read the desk's health now; the problems say what is wrong and what to do."""
    now = ctx.clock()
    with Session(ctx.engine) as session:
        beats = session.exec(select(Heartbeat).order_by(col(Heartbeat.beat_at).desc())).all()
        recorded = {s.source: s for s in session.exec(select(SourceHealth)).all()}
        report = Report(
            checked_at=now,
            daemons=[_daemon(now, b, ctx) for b in beats],
            sources=[],
            outbox=_outbox(session, now),
            quarantine={"count": session.exec(
                select(func.count()).select_from(IntakeRecord)
                .where(col(IntakeRecord.status).in_(("quarantined", "dropped")))
            ).one()},
            tokens=oauth_tokens(ctx),
            spool=_spool(session, now),
            incoming=_incoming(ctx, now),
        )
    report.sources = _sources(ctx, recorded)
    report.problems = _problems(ctx, report)
    return report


def _daemon(now: datetime, beat: Heartbeat, ctx: AppContext) -> dict[str, Any]:
    max_age = parse_duration(ctx.config.health.heartbeat_max_age)
    return {
        "host": beat.host,
        "pid": beat.pid,
        "started_at": iso(beat.started_at),
        "beat_at": iso(beat.beat_at),
        "beat_age_seconds": age(now, beat.beat_at),
        "stopped_at": iso(beat.stopped_at),
        "alive": beat.stopped_at is None and now - beat.beat_at <= max_age,
    }


def _outbox(session: Session, now: datetime) -> dict[str, Any]:
    counts = dict(session.exec(
        select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)
    ).all())
    oldest = session.exec(
        select(func.min(OutboxMessage.created_at)).where(OutboxMessage.status == "queued")
    ).one()
    return {
        "queued": counts.get("queued", 0),
        "failed": counts.get("failed", 0),
        "oldest_queued_at": iso(oldest),
        "oldest_queued_age_seconds": age(now, oldest),
    }


def _spool(session: Session, now: datetime) -> dict[str, Any]:
    """Mail fetched and waiting for a processor (intake/spool.py; empty without `[service] spool`)."""
    from mailticket.intake import spool  # and its parser workers: `status` needs them, `ingest` does not

    found = spool.depth(session.connection(), now)
    return {"waiting": found["waiting"], "claimed": found["claimed"],
            "oldest_age_seconds": age(now, found["oldest"])}


def _incoming(ctx: AppContext, now: datetime) -> dict[str, Any]:
    waiting = Incoming(ctx.data_dir).waiting()
    return {
        "waiting": waiting.count,
        "oldest_at": iso(waiting.oldest),
        "oldest_age_seconds": age(now, waiting.oldest),
        "last_error": waiting.last_error,
    }


def _source_row(name: str, row: SourceHealth | None, mailbox: MailboxConfig | None) -> dict[str, Any]:
    failing = row is not None and not row.ok
    return {
        "source": name,
        "mailbox": mailbox.name if mailbox else None,
        "last_poll_at": iso(row.last_poll_at) if row else None,
        "last_ok_at": iso(row.last_ok_at) if row else None,
        "last_error": row.last_error if row else None,
        "last_error_at": iso(row.last_error_at) if row else None,
        "failing": failing,
        "paused_reason": row.paused_reason if row else None,
        "paused_until": iso(row.paused_until) if row else None,
        "backlog": row.backlog if row else None,
    }


def _sources(ctx: AppContext, recorded: dict[str, SourceHealth]) -> list[dict[str, Any]]:
    """Every enabled mailbox and the listener (recorded or not), then other recorded non-IMAP sources."""
    config = ctx.config
    rows = [
        _source_row(mailbox_source(m), recorded.get(mailbox_source(m)), m)
        for m in config.mailboxes
        if m.enabled
    ]
    named = {r["source"] for r in rows}
    if config.intake.enabled:
        rows.append(_source_row(config.intake.protocol, recorded.get(config.intake.protocol), None))
        named.add(config.intake.protocol)
    rows += [
        _source_row(name, row, None)
        for name, row in sorted(recorded.items())
        if name not in named and not name.startswith("imap:")  # a removed mailbox is not news
    ]
    return rows


def _problems(ctx: AppContext, report: Report) -> list[str]:
    health = ctx.config.health
    now = report.checked_at
    problems: list[str] = []
    alive = any(d["alive"] for d in report.daemons)
    if health.expect_daemon and not alive:
        last = report.daemons[0] if report.daemons else None
        seen = "never seen"
        if last:
            seen = f"last beat {_ago(now, last['beat_at'])} from {last['host']} pid {last['pid']}"
        problems.append(
            f"no daemon heartbeat in the last {health.heartbeat_max_age} ({seen}): start `mailticket run` "
            "(or set [health] expect_daemon = false when cron runs `fetch`)"
        )
    polls = {mailbox_source(m): m for m in ctx.config.mailboxes if m.enabled}
    for src in report.sources:
        problems += _source_problems(src, polls.get(src["source"]), now, alive, health.heartbeat_max_age)
    notice_age = parse_duration(health.notice_max_age).total_seconds()
    oldest = report.outbox["oldest_queued_age_seconds"]
    if oldest is not None and oldest > notice_age:
        problems.append(
            f"outbox: {report.outbox['queued']} notice(s) queued, the oldest for {span(oldest)} "
            f"(more than {health.notice_max_age}): see `mailticket outbox list`; is a daemon sending?"
        )
    problems += [f"oauth {t['mailbox']}: {t['problem']}" for t in report.tokens if not t.get("healthy", True)]
    waiting = report.incoming["oldest_age_seconds"]
    if waiting is not None and waiting > parse_duration(health.incoming_max_age).total_seconds():
        error = report.incoming["last_error"]
        problems.append(
            f"incoming: {report.incoming['waiting']} message(s) kept by `ingest --detach` not stored yet, "
            f"the oldest for {span(waiting)}{f' (last failure: {error})' if error else ''}: "
            "run `mailticket ingest --drain` to see why"
        )
    return problems


def _source_problems(
    src: dict[str, Any], mailbox: MailboxConfig | None, now: datetime, alive: bool, heartbeat_max_age: str
) -> list[str]:
    name = src["source"]
    if src["paused_reason"]:
        until = src["paused_until"]
        left = f" for {span((datetime.fromisoformat(until) - now).total_seconds())} more" if until else ""
        return [f"{name}: paused{left}: {src['paused_reason']}"]
    if src["failing"]:
        return [f"{name}: failing (last error {_ago(now, src['last_error_at'])}): {src['last_error']}"]
    if mailbox is None or not alive:
        return []
    every = max(IDLE_PASS_SECONDS, mailbox.poll_seconds) if mailbox.idle else float(mailbox.poll_seconds)
    allowed = 3 * every + parse_duration(heartbeat_max_age).total_seconds()
    last = datetime.fromisoformat(src["last_poll_at"]) if src["last_poll_at"] else None
    if last is None or (now - last).total_seconds() > allowed:
        seen = f"for {_ago(now, src['last_poll_at'], ago='')}" if last else "ever"
        return [f"{name}: not polled {seen} though a daemon runs (expected every {every:g} s)"]
    return []


def _ago(now: datetime, then: str, ago: str = " ago") -> str:
    """How long before `now` an ISO time was, in the admin's units: problems read the same in any
    time zone (the tables and --json carry the times themselves)."""
    return span((now - datetime.fromisoformat(then)).total_seconds()) + ago


def span(seconds: float) -> str:
    """1234.5 -> '20m 34s': an age in the admin's units."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (minutes, "m"), (s, "s")) if v]
    return " ".join(parts[:2]) or "0s"


def notice_warning(ctx: AppContext) -> str | None:
    """For `ingest`: a line for stderr when notices wait and nothing seems to send them, else None.

    Nothing sends them when no daemon beats, no notice was sent within `notice_max_age`
    (a cron `outbox flush` counts) and some are queued; `ingest` itself never sends.
    """
    now = ctx.clock()
    health = ctx.config.health
    with Session(ctx.engine) as session:
        beat = session.exec(
            select(func.max(Heartbeat.beat_at)).where(col(Heartbeat.stopped_at).is_(None))
        ).one()
        queued = session.exec(
            select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == "queued")
        ).one()
        sent = session.exec(select(func.max(OutboxMessage.sent_at))).one()
    if not queued or _recent(now, beat, parse_duration(health.heartbeat_max_age)):
        return None
    if _recent(now, sent, parse_duration(health.notice_max_age)):
        return None
    return (
        f"warning: {queued} notice(s) wait in the outbox and no daemon has sent any lately: "
        "`ingest` only stores; run `mailticket run` (or `mailticket outbox flush` from cron)"
    )


def _recent(now: datetime, then: datetime | None, within: timedelta) -> bool:
    return then is not None and now - then <= within
