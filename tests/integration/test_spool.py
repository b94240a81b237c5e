"""The intake spool (`[service] spool`): rows wait for what they may thread with, a row that keeps
killing its processor is quarantined, and `fetch` stores a mailbox through it exactly once with
the tickets of a serial run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text, update
from sqlmodel import Session, select

from benchmarks.ingest import generate
from mailticket.cli import main
from mailticket.context import AppContext
from mailticket.intake import spool
from mailticket.intake.workers import ParsePool, limits_of
from mailticket.pipeline.parse import header_thread_ids
from mailticket.refs import subject_token
from mailticket.service import health
from mailticket.service.metrics import Metrics
from mailticket.storage import lease
from mailticket.storage.tables import IntakeRecord, SpoolRow
from tests import factories
from tests.daemonproc import serial_threads, threads
from tests.factories import DIE, ingest, load_ctx, mail, make_ctx, misbehaving_parse
from tests.servers import Dovecot

SOURCE = "imap:support/INBOX"


def spooled(ctx: AppContext, *mails: bytes) -> None:
    assert spool.add(ctx, "support", SOURCE, [(f"uid={i}", m) for i, m in enumerate(mails, 1)]) == len(mails)


def subjects(rows: list[spool.Claimed]) -> list[str]:
    return [header_thread_ids(row.raw.data)[2] for row in rows]


def other_processor(ctx: AppContext) -> spool.Processor:
    """A processor of another (live) daemon."""
    processor = spool.Processor(ctx)
    processor.owner = lease.make_owner_id()
    return processor


def test_a_row_waits_while_an_earlier_row_it_may_thread_with_is_spooled(tmp_path: Path, db_url: str) -> None:
    ctx = make_ctx(tmp_path, db_url, service={"spool": True})
    known = ingest(ctx, mail(subject="Known", message_id="known@c.example"))
    assert known.ticket_ref is not None
    spooled(
        ctx,
        mail(subject="A", message_id="a@c.example"),
        mail(subject="B", message_id="b@c.example", in_reply_to="a@c.example"),
        mail(subject="C", message_id="c@c.example", in_reply_to="b@c.example"),  # waits for B's wait too
        mail(subject="D", message_id="d@c.example"),
        mail(subject=f"E {subject_token(known.ticket_ref)}", message_id="e@c.example"),
        mail(subject="F", message_id="f@c.example", in_reply_to="known@c.example"),  # Known's ticket, as E
    )
    first, second = spool.Processor(ctx), other_processor(ctx)
    claimed = first._claim()
    token = subject_token(known.ticket_ref)
    assert subjects(claimed) == ["A", "D", f"E {token}"]
    assert second._claim() == []  # B, C and F each wait for an earlier row in the first one's hands
    assert [outcome.status for _, outcome in first._group(claimed, first._parse(claimed))] == ["stored"] * 3
    claimed = second._claim()
    assert subjects(claimed) == ["B", "F"]
    assert first._claim() == []  # C waits for B
    second._group(claimed, second._parse(claimed))
    assert first.drain() and second.drain() == []
    with Session(ctx.engine) as s:
        tickets = dict(s.exec(select(IntakeRecord.dedup_key, IntakeRecord.ticket_id)).all())
    assert tickets["mid:b@c.example"] == tickets["mid:c@c.example"] == tickets["mid:a@c.example"]
    assert tickets["mid:e@c.example"] == tickets["mid:f@c.example"] == tickets["mid:known@c.example"]
    ctx.engine.dispose()


def dead_owner() -> str:
    """The owner name of a process of this host that has exited."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    return f"{lease._host_id()}:{int(finished.stdout)}:deadbeef"


def test_a_row_that_keeps_killing_its_processor_is_quarantined_on_its_fourth_claim_alone(
    tmp_path: Path, db_url: str
) -> None:
    ctx = make_ctx(tmp_path, db_url, service={"spool": True})
    spooled(ctx, mail(subject="Poison", message_id="poison@c.example"))
    processor = spool.Processor(ctx)
    charged = [row.attempts for row in processor._claim()]  # in a fresh group: charged to no one
    for _ in range(4):
        with ctx.engine.begin() as conn:  # the processor dies: its claim stays, held by a dead process
            conn.execute(update(SpoolRow).values(claimed_by=dead_owner()))
        if len(charged) == 4:
            break
        assert processor._claim() == []
        assert processor._free_stale_claims() == 1
        charged += [row.attempts for row in processor._claim()]  # alone now, charged first
    assert charged == [0, 1, 2, 3]
    ((_raw, outcome),) = processor.drain()
    assert outcome.status == "quarantined" and "did not finish in 3 attempts" in (outcome.reason or "")
    with ctx.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM spool")).scalar_one() == 0
    ctx.engine.dispose()


def test_fetch_through_the_spool_stores_each_message_once_with_the_tickets_of_a_serial_run(
    tmp_path: Path, db_url: str, dovecot: Dovecot
) -> None:
    corpus = list(generate(150, seed=7))  # a third are replies threading by In-Reply-To/References
    dovecot.load_maildir(corpus)
    config = factories.write_config(
        tmp_path / "mt.toml", db_url=db_url, service={"spool": True},
        mailboxes=[{"name": "support", "host": dovecot.host, "port": dovecot.port, "security": "none",
                    "username": dovecot.user, "password": dovecot.password, "batch_size": 40}],
    )
    result = CliRunner().invoke(main, ["--config", str(config), "fetch", "--json"])
    assert result.exit_code == 0, result.output
    (box,) = json.loads(result.stdout)["mailboxes"]
    ctx = load_ctx(config)
    status = json.loads(CliRunner().invoke(main, ["--config", str(config), "status", "--json"]).stdout)
    assert (box["stored"], box["duplicates"], box["error"]) == (150, 0, None)
    assert status["spool"] == {"waiting": 0, "claimed": 0, "oldest_age_seconds": None}
    assert threads(ctx.engine) == serial_threads(tmp_path / "serial", corpus)
    assert all(b"\\Seen" in flags for flags in dovecot.flags().values())
    ctx.engine.dispose()


def test_a_message_whose_parser_worker_dies_is_parsed_again_then_quarantined_with_the_reason(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx(tmp_path, db_url, service={"spool": True})
    with ParsePool(1, limits_of(ctx.config.service), parser=misbehaving_parse) as pool:
        monkeypatch.setattr(spool, "shared_pool", lambda *_: pool)
        spooled(ctx, mail(subject="Kills its parser", body=DIE.decode()), mail(subject="Fine"))
        done = {header_thread_ids(raw.data)[2]: outcome for raw, outcome in spool.Processor(ctx).drain()}
    assert done["Fine"].status == "stored"
    assert done["Kills its parser"].status == "quarantined"
    assert "parser worker" in (done["Kills its parser"].reason or "")
    with ctx.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM spool")).scalar_one() == 0
    ctx.engine.dispose()


def test_status_and_metrics_show_what_waits_in_the_spool(tmp_path: Path, db_url: str) -> None:
    ctx = make_ctx(tmp_path, db_url, service={"spool": True})
    spooled(ctx, mail(subject="A"), mail(subject="B"), mail(subject="C"))
    assert len(spool.Processor(ctx)._claim()) == 3
    spooled_again = spool.add(ctx, "support", SOURCE, [("uid=9", mail(subject="D"))])
    report = health.collect(ctx)
    assert spooled_again == 1
    assert (report.spool["waiting"], report.spool["claimed"]) == (4, 3)
    assert report.spool["oldest_age_seconds"] is not None
    depth = {f.name: f for f in Metrics(ctx).registry.collect()}["mailticket_spool_depth"]
    assert [sample.value for sample in depth.samples] == [4]
    ctx.engine.dispose()
