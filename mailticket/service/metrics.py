"""The daemon's optional HTTP endpoint (`[service] metrics = "host:port"`): `/metrics` and `/healthz`.

    /metrics   Prometheus text format (prometheus_client, a registry of our own):
               counters and latencies observed by this process since it started,
                 mailticket_messages_total{source, outcome}   stored | duplicate | quarantined |
                                                              dropped | failed
                 mailticket_notices_total{status}             sent | retrying | failed
                 mailticket_message_seconds{source}           one SMTP/LMTP message, 354 to answer
                 mailticket_poll_seconds{mailbox}             one pass over a mailbox
                 mailticket_outbox_flush_seconds              one outbox flush
               and, read from the database at each scrape (so every process agrees),
                 mailticket_outbox_queued / _failed / _oldest_queued_age_seconds,
                 mailticket_quarantine_messages, mailticket_spool_depth, mailticket_source_backlog{source},
                 mailticket_source_up{source}, mailticket_daemons_alive, mailticket_healthy
    /healthz   200 and "ok" when `mailticket status` would exit 0, else 503 and its problems
               (one a line), for a load balancer or a systemd watchdog script

The endpoint has no authentication: bind it to loopback (the default in the example) or to a
network only the monitoring system reaches. A scrape runs a handful of small queries.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from mailticket.config import listen_address
from mailticket.context import AppContext
from mailticket.errors import MailticketError
from mailticket.intake.imap import PollResult
from mailticket.models import Outcome, RawMail
from mailticket.outbound.send import FlushResult
from mailticket.service import health

log = logging.getLogger("mailticket.service.metrics")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Metrics:
    """What this daemon observed; the database-backed gauges are added at scrape time."""

    def __init__(self, ctx: AppContext) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter("mailticket_messages", "Messages taken in, by source and outcome",
                                ["source", "outcome"], registry=self.registry)
        self.notices = Counter("mailticket_notices", "Outbox send attempts, by result", ["status"],
                               registry=self.registry)
        self.message_seconds = Histogram("mailticket_message_seconds", "Time to store one SMTP/LMTP message",
                                         ["source"], registry=self.registry)
        self.poll_seconds = Histogram("mailticket_poll_seconds", "Time of one pass over a mailbox",
                                      ["mailbox"], registry=self.registry,
                                      buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf")))
        self.flush_seconds = Histogram("mailticket_outbox_flush_seconds", "Time of one outbox flush",
                                       registry=self.registry)
        self.registry.register(_Depths(ctx))

    def message(self, source: str, outcome: str, seconds: float) -> None:
        self.messages.labels(source, outcome).inc()
        self.message_seconds.labels(source).observe(seconds)

    def polled(self, result: PollResult) -> None:
        source = health.mailbox_source(result.mailbox)
        counts = {"stored": result.stored, "duplicate": result.duplicates, "quarantined": result.quarantined,
                  "dropped": result.dropped, "failed": result.failed}
        for outcome, count in counts.items():
            if count:
                self.messages.labels(source, outcome).inc(count)
        if not result.busy:
            self.poll_seconds.labels(result.mailbox).observe(result.seconds)

    def spooled(self, raw: RawMail, outcome: Outcome) -> None:
        """A message this daemon stored from the spool (whichever daemon fetched it)."""
        self.messages.labels(health.mailbox_source(raw.mailbox or ""), outcome.status).inc()

    def flushed(self, result: FlushResult, seconds: float) -> None:
        for status in ("sent", "retrying", "failed"):
            if count := getattr(result, status):
                self.notices.labels(status).inc(count)
        self.flush_seconds.observe(seconds)


class _Depths(Collector):
    """Queue depths and health from the database, read when Prometheus scrapes."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def describe(self) -> Iterable[Metric]:
        return []  # the families depend on the config's sources: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        try:
            report = health.collect(self.ctx)
        except MailticketError as exc:
            log.warning("metrics: health not readable: %s", exc)
            yield GaugeMetricFamily("mailticket_healthy", "1 when `mailticket status` exits 0", value=0)
            return
        out = report.outbox
        yield GaugeMetricFamily("mailticket_outbox_queued", "Notices waiting to be sent", value=out["queued"])
        yield GaugeMetricFamily("mailticket_outbox_failed", "Notices given up on", value=out["failed"])
        yield GaugeMetricFamily("mailticket_outbox_oldest_queued_age_seconds",
                                "Oldest queued notice's age", value=out["oldest_queued_age_seconds"] or 0)
        yield GaugeMetricFamily("mailticket_quarantine_messages", "Mail kept without a ticket",
                                value=report.quarantine["count"])
        yield GaugeMetricFamily("mailticket_spool_depth", "Fetched mail waiting in the spool to be stored",
                                value=report.spool["waiting"])
        backlog = GaugeMetricFamily("mailticket_source_backlog", "Messages waiting at a source after its "
                                    "last pass", labels=["source"])
        up = GaugeMetricFamily("mailticket_source_up", "1 unless the source is failing or paused",
                               labels=["source"])
        for src in report.sources:
            if src["backlog"] is not None:
                backlog.add_metric([src["source"]], src["backlog"])
            up.add_metric([src["source"]], 0 if src["failing"] or src["paused_reason"] else 1)
        yield backlog
        yield up
        yield GaugeMetricFamily("mailticket_daemons_alive", "Daemons with a fresh heartbeat",
                                value=sum(1 for d in report.daemons if d["alive"]))
        yield GaugeMetricFamily("mailticket_healthy", "1 when `mailticket status` exits 0",
                                value=int(report.healthy))


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Every scrape would be a log line."""


class MetricsServer:
    """The HTTP endpoint in a thread: start() binds (OSError when the port is taken), stop() ends it."""

    def __init__(self, ctx: AppContext, metrics: Metrics, address: str) -> None:
        self.ctx = ctx
        self.host, port = listen_address(address)
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._server = make_server(self.host, port, self._app, ThreadingWSGIServer, handler_class=_Quiet)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics listening", extra={"fields": {"host": self.host, "port": self.port}})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10.0)

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            return self._healthz(start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics or /healthz\n"]

    def _healthz(self, start_response: StartResponse) -> Iterable[bytes]:
        try:
            problems = health.collect(self.ctx).problems
        except MailticketError as exc:
            problems = [f"health not readable: {exc}"]
        body = "\n".join(problems or ["ok"]) + "\n"
        start_response("200 OK" if not problems else "503 Service Unavailable",
                       [("Content-Type", "text/plain; charset=utf-8")])
        return [body.encode()]
