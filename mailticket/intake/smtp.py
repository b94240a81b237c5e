"""SMTP and LMTP intake on aiosmtpd: an MTA hands mail over, mailticket answers after the commit.

`handle_DATA` runs `process.Pipeline.process` in a worker thread and answers `250`
only once it returned, that is, once the message and its ticket changes are
committed. Quarantined or dropped mail is kept (raw copy, intake record), so
it is accepted with 250 too; a failure of the pipeline or the database is a
`451 4.3.0` and the MTA retries later (a retry of a message that was in fact
committed is recognised as a duplicate and accepted). A fault of the environment
(disk, database) pauses the listener's source: one log line when it starts, one when
the first message is stored again, 451 for each message meanwhile. LMTP answers once
per recipient, as RFC 2033 asks; one delivery is still stored once.

If the process dies mid-transaction the client never sees a 250 and keeps the
message. A clean stop closes the listener first, then waits for the messages
being received or processed to be answered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

from mailticket import logs
from mailticket.context import AppContext
from mailticket.intake.pause import Pause, is_environment_fault
from mailticket.models import Outcome, RawMail
from mailticket.process import Pipeline
from mailticket.service import health

log = logging.getLogger("mailticket.intake.smtp")

WORKERS = 4  # messages processed at once; more wait in their SMTP session
TEMPFAIL = "451 4.3.0 Temporary failure storing the message, try again later"


Observer = Callable[[str, str, float], None]  # (source, outcome status or "failed", seconds)


class IntakeHandler:
    """aiosmtpd handler: one pipeline run per DATA, in a small thread pool."""

    def __init__(
        self,
        ctx: AppContext,
        protocol: str = "smtp",
        on_stored: Callable[[Outcome], None] | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.ctx = ctx
        self.protocol = protocol
        self.on_stored = on_stored
        self.observe = observe
        self.health = health.SourceRecorder(ctx, protocol)
        self.pause = Pause(protocol)
        self.executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix=f"{protocol}-intake")
        self._busy = 0
        self._idle = threading.Condition()

    # -- in-flight accounting, for a clean stop ------------------------------------------------

    def enter(self) -> None:
        with self._idle:
            self._busy += 1

    def leave(self) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no message is being received or processed; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    # -- aiosmtpd hooks ------------------------------------------------------------------------

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        peer = session.peer
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        raw = RawMail(
            data=bytes(envelope.original_content or b""),
            source=self.protocol,
            position=f"peer={where}",
            envelope_recipients=tuple(str(r) for r in envelope.rcpt_tos),
        )
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            outcome = await loop.run_in_executor(self.executor, self._process, raw)
        except Exception as exc:
            if is_environment_fault(exc):
                self.pause.failed(f"{exc}; answering 451")  # one line when the fault starts
            else:
                logs.failure(log, "message not stored; answered 451", exc, peer=where)
            # Not awaited: with the database locked, recording it would hold the 451 back.
            self.executor.submit(self.health.failed, f"{type(exc).__name__}: {exc}")
            reply, status = TEMPFAIL, "failed"
        else:
            self.pause.ok()
            reply = f"250 2.0.0 {outcome.status}{' ' + outcome.ticket_ref if outcome.ticket_ref else ''}"
            status = outcome.status
        if self.observe is not None:
            self.observe(self.protocol, status, time.monotonic() - started)
        if self.protocol == "lmtp":
            return "\r\n".join([reply] * max(len(envelope.rcpt_tos), 1))
        return reply

    def _process(self, raw: RawMail) -> Outcome:
        outcome = Pipeline(self.ctx).process(raw)
        self.health.ok()
        if self.on_stored is not None and outcome.status == "stored":
            try:
                self.on_stored(outcome)
            except Exception as exc:  # a notification hook must not turn a committed message into a 451
                logs.failure(log, "on_stored hook failed", exc)
        return outcome


def _counting(base: type[SMTP]) -> type[SMTP]:
    """A server class whose DATA command, from `354` to the final answer, counts as in flight."""

    class Counting(base):  # type: ignore[misc, valid-type]
        async def smtp_DATA(self, arg: str) -> None:
            handler: IntakeHandler = self.event_handler
            handler.enter()
            try:
                await super().smtp_DATA(arg)
            finally:
                handler.leave()

    return Counting


_SERVERS = {"smtp": _counting(SMTP), "lmtp": _counting(LMTP)}


class _Controller(Controller):
    def __init__(self, handler: IntakeHandler, server_class: type[SMTP], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.server_class = server_class

    def factory(self) -> SMTP:
        return self.server_class(self.handler, **self.SMTP_kwargs)


class IntakeServer:
    """The listener of `[intake]`: start(), then stop() for a clean shutdown."""

    def __init__(
        self,
        ctx: AppContext,
        *,
        host: str | None = None,
        port: int | None = None,
        protocol: str | None = None,
        on_stored: Callable[[Outcome], None] | None = None,
        observe: Observer | None = None,
    ) -> None:
        cfg = ctx.config.intake
        self.host = host or cfg.host
        self.port = port if port is not None else cfg.port
        self.protocol = protocol or cfg.protocol
        self.handler = IntakeHandler(ctx, self.protocol, on_stored, observe)
        self.controller = _Controller(
            self.handler,
            _SERVERS[self.protocol],
            hostname=self.host,
            port=self.port,
            data_size_limit=int(ctx.config.service.max_message_mb * 1024 * 1024),
            enable_SMTPUTF8=True,
            ident="mailticket",
        )

    def start(self) -> None:
        # aiosmtpd logs every SMTP command at INFO; the pipeline logs one line per message instead.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        self.controller.start()
        log.info(
            "intake listening",
            extra={"fields": {"protocol": self.protocol, "host": self.host, "port": self.port}},
        )

    def stop(self, timeout: float = 60.0) -> None:
        """Refuse new connections, let the messages in hand finish, then stop the server."""
        server = self.controller.server
        if server is not None:
            self.controller.loop.call_soon_threadsafe(server.close)
        started = time.monotonic()
        if not self.handler.wait_idle(timeout):
            log.warning("intake stopped with messages in flight; their senders will retry",
                        extra={"fields": {"waited": round(time.monotonic() - started, 1)}})
        self.controller.stop()
        self.handler.executor.shutdown(wait=True)
