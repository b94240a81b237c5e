"""SMTP and LMTP intake on aiosmtpd: an MTA hands mail over, mailticket answers after the commit.

`handle_DATA` runs `process.Pipeline.process` in a worker thread, which hands the parse to the
parser worker processes (intake/workers.py: on another core, under their limits; a message
whose worker dies is parsed again, and kept unparsed after three deaths), and answers `250`
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
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller, UnixSocketController
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

from mailticket import logs
from mailticket.context import AppContext
from mailticket.intake import handoff
from mailticket.intake.pause import Pause, is_environment_fault
from mailticket.intake.workers import Parsed, ParsePool, parse_settled, shared_pool
from mailticket.models import Outcome, RawMail
from mailticket.pipeline.untrusted import printable
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
        source: str | None = None,
        pool: ParsePool | None = None,
    ) -> None:
        self.ctx = ctx
        self._pool = pool  # the parser workers; None: this process's (see `pool`)
        self.protocol = protocol
        self.source = source or protocol  # the RawMail source, in health, pause and metrics
        self.on_stored = on_stored
        self.observe = observe
        self.health = health.SourceRecorder(ctx, self.source)
        self.pause = Pause(self.source)
        self.executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix=f"{self.source}-intake")
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
        raw = self.raw_mail(envelope, where)
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
            reply, status = self.refusal(exc), "failed"
        else:
            self.pause.ok()
            reply, status = self.answer(outcome), outcome.status
        if self.observe is not None:
            self.observe(self.source, status, time.monotonic() - started)
        if self.protocol == "lmtp":
            return "\r\n".join([reply] * max(len(envelope.rcpt_tos), 1))
        return reply

    def raw_mail(self, envelope: Any, where: str) -> RawMail:
        return RawMail(
            data=bytes(envelope.original_content or b""),
            source=self.source,
            position=f"peer={where}",
            envelope_recipients=tuple(str(r) for r in envelope.rcpt_tos),
        )

    def answer(self, outcome: Outcome) -> str:
        """The 250 of a kept message: its status and ticket, never a rule's name (the sender's
        MTA logs it)."""
        return f"250 2.0.0 {outcome.status}{' ' + outcome.ticket_ref if outcome.ticket_ref else ''}"

    def refusal(self, exc: Exception) -> str:
        return TEMPFAIL

    def pool(self) -> ParsePool:
        """The parser workers given, else this process's (started on first use and kept)."""
        return self._pool or shared_pool(self.ctx.config.service)

    def _parse(self, raw: RawMail) -> Parsed:
        """In the parser workers: this thread waits while a worker parses on a core of its own,
        so messages of several SMTP sessions are parsed at once, each under the workers' limits."""
        return parse_settled(self.pool(), raw.data, self.ctx.blobs.local_root)

    def _process(self, raw: RawMail) -> Outcome:
        outcome = Pipeline(self.ctx, parser=self._parse).process(raw)
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
        pool: ParsePool | None = None,
    ) -> None:
        cfg = ctx.config.intake
        self.host = host or cfg.host
        self.port = port if port is not None else cfg.port
        self.protocol = protocol or cfg.protocol
        self.handler = IntakeHandler(ctx, self.protocol, on_stored, observe, pool=pool)
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
        self.handler.pool()  # the parser workers start with the listener, not on the first message
        self.controller.start()
        log.info(
            "intake listening",
            extra={"fields": {"protocol": self.protocol, "host": self.host, "port": self.port}},
        )

    def stop(self, timeout: float = 60.0) -> None:
        _stop(self.controller, self.handler, timeout)


def _stop(controller: Controller | UnixSocketController, handler: IntakeHandler, timeout: float) -> None:
    """Refuse new connections, let the messages in hand finish, then stop the server."""
    server = controller.server
    if server is not None:
        controller.loop.call_soon_threadsafe(server.close)
    started = time.monotonic()
    if not handler.wait_idle(timeout):
        log.warning("intake stopped with messages in flight; their senders will retry",
                    extra={"fields": {"source": handler.source,
                                      "waited": round(time.monotonic() - started, 1)}})
    controller.stop()
    handler.executor.shutdown(wait=True)


# -- the ingest socket: plain `mailticket ingest` hands its message to the daemon (handoff.py) ---


class PipeHandler(IntakeHandler):
    """Each message as an in-process `ingest` stores it (source "pipe", no envelope recipients:
    the pipe has none, so routing is the same), answered with the line `ingest` prints."""

    def __init__(
        self, ctx: AppContext, on_stored: Callable[[Outcome], None] | None = None,
        observe: Observer | None = None,
    ) -> None:
        super().__init__(ctx, "lmtp", on_stored, observe, source="pipe")

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        """Keep MAIL FROM's SIZE: the length of the message `handoff.frame` sent."""
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    def raw_mail(self, envelope: Any, where: str) -> RawMail:
        size = next((int(o[5:]) for o in envelope.mail_options if o.upper().startswith("SIZE=")), None)
        data = handoff.unframe(bytes(envelope.original_content or b""), size)
        return RawMail(data=data, source=self.source, position=handoff.SOCKET_NAME)

    def answer(self, outcome: Outcome) -> str:
        """The line `ingest` prints: the socket's client is the local pipe, not a sender's MTA."""
        return f"250 2.0.0 {_one_line(handoff.said(outcome.status, outcome.ticket_ref, outcome.reason))}"

    def refusal(self, exc: Exception) -> str:
        return f"451 4.3.0 {_one_line(f'{type(exc).__name__}: {exc}')}"


def _one_line(text: str) -> str:
    return printable(text, multiline=False)[: handoff.MAX_REPLY]


# A message with bare LF line ends is one DATA "line" to aiosmtpd: no line limit, and no size
# limit (data_size_limit=None), so an oversized message is quarantined as in-process.
_PIPE_SERVER: type[SMTP] = type("PipeLMTP", (_counting(LMTP),), {"line_length_limit": 1 << 40})


class _SocketController(UnixSocketController):
    def __init__(self, handler: PipeHandler, sock: socket.socket, path: Path, **kwargs: Any) -> None:
        super().__init__(handler, unix_socket=path, **kwargs)  # the readiness check connects to it
        self.sock = sock

    def factory(self) -> SMTP:
        return _PIPE_SERVER(self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self.loop.create_unix_server(self._factory_invoker, sock=self.sock)


class SocketServer:
    """`data_dir/ingest.sock`, mode 0660: start() (False when another daemon serves it), stop()."""

    def __init__(
        self, ctx: AppContext, *, on_stored: Callable[[Outcome], None] | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.path = handoff.socket_path(ctx.data_dir)
        self.handler = PipeHandler(ctx, on_stored, observe)
        self.controller: _SocketController | None = None
        self.inode = 0  # the socket file's, to remove only our own at stop

    def start(self) -> bool:
        """Listen on the socket; an OSError (a path too long for a socket, a folder that cannot
        be written) means `ingest` stores in-process."""
        if _answers(self.path):
            log.warning("another process serves the ingest socket; this daemon does not",
                        extra={"fields": {"path": str(self.path)}})
            return False
        self.handler.pool()  # the parser workers start with the socket, not on the first message
        sock = _bind(self.path)
        self.inode = self.path.stat().st_ino
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        self.controller = _SocketController(self.handler, sock, self.path, enable_SMTPUTF8=True,
                                            ident="mailticket", data_size_limit=None)
        self.controller.start()
        log.info("ingest socket listening", extra={"fields": {"path": str(self.path)}})
        return True

    def stop(self, timeout: float = 60.0) -> None:
        if self.controller is None:
            return
        _stop(self.controller, self.handler, timeout)
        try:
            if self.path.stat().st_ino == self.inode:  # still ours, not a newer daemon's
                self.path.unlink()
        except FileNotFoundError:
            pass


def _answers(path: Path) -> bool:
    """Something listens on `path` (a socket file left by a killed daemon refuses)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    finally:
        probe.close()
    return True


def _bind(path: Path) -> socket.socket:
    """A socket bound at `path` with mode 0660 from its first connection on: bound under a
    private name, its mode set, then renamed over `path` (at most a stale socket: nothing
    answered it). Not listening yet: the server listens on it."""
    if path.exists() and not path.is_socket():
        raise FileExistsError(f"{path} exists and is not a socket")
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(staging))
        os.chmod(staging, 0o660)
        os.replace(staging, path)
    except OSError:
        sock.close()
        staging.unlink(missing_ok=True)
        raise
    return sock
