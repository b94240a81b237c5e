"""A real `mailticket run` with `[service] metrics`: /metrics scraped, /healthz, and `status` beside it."""

from __future__ import annotations

import json
import smtplib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from mailticket.cli import main
from mailticket.config import load_config
from mailticket.errors import ConfigError
from mailticket.service import health
from tests.daemonproc import DaemonProcess, write_config
from tests.factories import load_ctx, mail
from tests.servers import SmtpSink, free_port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def status(config: Path) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(main, ["--config", str(config), "status", "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_running_daemon_serves_metrics_and_health(tmp_path: Path, db_url: str, smtp_sink: SmtpSink) -> None:
    port, intake = free_port(), free_port()
    config = write_config(tmp_path / "mailticket.toml", db_url=db_url, sink=smtp_sink, intake_port=intake,
                          metrics=f"127.0.0.1:{port}")
    with DaemonProcess(config) as daemon:
        daemon.wait_until(lambda: status(config)[0] == 0, what="a heartbeat")
        code, report = status(config)
        assert report["daemons"][0]["pid"] == daemon.pid  # type: ignore[index]
        with smtplib.SMTP("127.0.0.1", intake, timeout=30) as client:
            client.sendmail("carol@customer.example", ["support@example.com"], mail())
        daemon.wait_until(lambda: len(smtp_sink.messages) == 2, what="the ack and the alert sent")

        def sent() -> float:
            return scrape(port).get(("mailticket_notices_total", (("status", "sent"),)), 0)

        daemon.wait_until(lambda: sent() == 2, what="two notices counted")
        samples = scrape(port)
        assert samples[("mailticket_messages_total", (("outcome", "stored"), ("source", "smtp")))] == 1
        assert samples[("mailticket_message_seconds_count", (("source", "smtp"),))] == 1
        assert samples[("mailticket_outbox_flush_seconds_count", ())] >= 1
        assert samples[("mailticket_outbox_queued", ())] == 0
        assert samples[("mailticket_source_up", (("source", "smtp"),))] == 1
        assert samples[("mailticket_daemons_alive", ())] == 1
        assert samples[("mailticket_healthy", ())] == 1
        assert healthz(port) == (200, "ok\n")

        smtp_sink.reject_all("451 4.3.2 try later")
        with smtplib.SMTP("127.0.0.1", intake, timeout=30) as client:
            client.sendmail("dave@customer.example", ["support@example.com"],
                            mail(sender="dave@customer.example"))
        daemon.wait_until(
            lambda: scrape(port).get(("mailticket_notices_total", (("status", "retrying"),)), 0) >= 1,
            what="a retrying notice counted",
        )
        assert scrape(port)[("mailticket_outbox_queued", ())] >= 1
    code, report = status(config)
    assert code == 1
    assert report["daemons"][0]["stopped_at"] is not None  # type: ignore[index]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_healthz_names_the_problem(tmp_path: Path, db_url: str) -> None:
    port = free_port()
    config = write_config(tmp_path / "mailticket.toml", db_url=db_url, metrics=f"127.0.0.1:{port}")
    with DaemonProcess(config) as daemon:
        daemon.wait_until(lambda: healthz(port)[0] == 200, what="healthy")
        ctx = load_ctx(config)
        health.record_source(ctx, "pipe", ok=False, error="DatabaseUnavailable: locked")
        code, body = healthz(port)
        assert code == 503 and body.startswith("pipe: failing (last error ")
        ctx.engine.dispose()


@pytest.mark.parametrize("value", ["9464", "localhost", "127.0.0.1:0", "127.0.0.1:99999", ":9464"])
def test_check_config_refuses_a_bad_metrics_address(tmp_path: Path, value: str) -> None:
    config = write_config(tmp_path / "mailticket.toml", db_url=None, metrics=value)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert caught.value.problems == [
        f"service.metrics: {value!r} is not a listen address: write host:port, e.g. '127.0.0.1:9464'"
    ]
    ipv6 = load_config(write_config(tmp_path / "ok.toml", db_url=None, metrics="[::1]:9464"))
    assert ipv6.service.metrics == "[::1]:9464"
