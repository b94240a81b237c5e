"""Staff actions from the shell have the same effects and notices as the same action by mail."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import patch

import pytest
from click.testing import CliRunner
from sqlmodel import Session, col, select

from mailticket.cli import main
from mailticket.context import AppContext
from mailticket.storage import repository
from mailticket.storage.tables import OutboxMessage
from tests.daemonproc import write_config
from tests.factories import ingest, load_ctx, mail

AUTH = "mx.example.com; dkim=pass header.d=example.com"
@pytest.fixture
def setup(tmp_path: Path, db_url: str) -> Iterator[tuple[Path, AppContext]]:
    config = write_config(tmp_path / "mailticket.toml", db_url=db_url)
    ctx = load_ctx(config)
    yield config, ctx
    ctx.engine.dispose()


def cli(config: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def notices(ctx: AppContext, ref: str) -> list[tuple[str, str]]:
    with Session(ctx.engine) as session:
        ticket = repository.ticket_by_ref(session, ref)
        assert ticket is not None
        rows = session.exec(
            select(OutboxMessage).where(OutboxMessage.ticket_id == ticket.id).order_by(col(OutboxMessage.id))
        ).all()
        return [(r.kind, r.to_addr) for r in rows]


def state(ctx: AppContext, ref: str) -> tuple[str, str | None, bool, list[str]]:
    with Session(ctx.engine) as session:
        ticket = repository.ticket_by_ref(session, ref)
        assert ticket is not None
        # What the customer can see; a mailed command is kept as a note, a shell command leaves none.
        public = [e.kind for e in repository.entries(session, ticket) if e.kind != "note"]
        return ticket.status, ticket.assignee, ticket.first_response_at is not None, public


def by_mail(ctx: AppContext, ref: str, text: str) -> None:
    outcome = ingest(ctx, mail(sender="alice@example.com", subject=f"Re: Cannot log in [#{ref}]", body=text,
                               headers={"Authentication-Results": AUTH}))
    assert outcome.status == "stored"


def two_tickets(ctx: AppContext, config: Path) -> tuple[str, str]:
    """One opened by mail, one from the shell: the same notices for both."""
    by_post = ingest(ctx, mail()).ticket_ref
    by_shell = cli(config, "tickets", "open", "--requester", "carol@customer.example",
                   "--subject", "Cannot log in", "--body", "Hello").strip()
    assert by_post and notices(ctx, by_post) == notices(ctx, by_shell)
    assert notices(ctx, by_post) == [("ack", "carol@customer.example"), ("alert", "alice@example.com")]
    return by_post, by_shell


CAROL = "carol@customer.example"
AS_ALICE = ["--as", "alice@example.com"]


@pytest.mark.parametrize(
    "command, args, expect_status, expect_notice",
    [
        ("Thanks, fixed.", ["reply", "--body", "Thanks, fixed.", *AS_ALICE], "open", ("reply", CAROL)),
        ("#note\nCustomer is on the legacy plan.",
         ["note", "--body", "Customer is on the legacy plan.", *AS_ALICE], "open", None),
        ("#close\nReset done.", ["close", "--closed", "--resolution", "Reset done.", *AS_ALICE], "closed",
         ("resolution", CAROL)),
        ("#resolve", ["close", *AS_ALICE], "resolved", ("resolution", CAROL)),
        ("#pending\nScreenshot?", ["reply", "--pending", "--body", "Screenshot?", *AS_ALICE], "pending",
         ("reply", CAROL)),
    ],
)
def test_shell_matches_mail(
    setup: tuple[Path, AppContext],
    command: str,
    args: list[str],
    expect_status: str,
    expect_notice: tuple[str, str] | None,
) -> None:
    config, ctx = setup
    mailed, shelled = two_tickets(ctx, config)
    by_mail(ctx, mailed, command)
    cli(config, "tickets", args[0], shelled, *args[1:])
    assert state(ctx, mailed) == state(ctx, shelled)
    assert state(ctx, mailed)[0] == expect_status
    if args[0] == "note":
        with Session(ctx.engine) as session:
            for ref in (mailed, shelled):
                ticket = repository.ticket_by_ref(session, ref)
                assert ticket is not None
                assert repository.entries(session, ticket)[-1].body_text == "Customer is on the legacy plan."
    assert notices(ctx, mailed)[2:] == notices(ctx, shelled)[2:] == ([expect_notice] if expect_notice else [])


def test_assign_and_reopen(setup: tuple[Path, AppContext]) -> None:
    config, ctx = setup
    mailed, shelled = two_tickets(ctx, config)
    by_mail(ctx, mailed, "#assign bob@example.com")
    cli(config, "tickets", "assign", shelled, "bob@example.com", "--as", "alice@example.com")
    assert state(ctx, mailed)[1] == state(ctx, shelled)[1] == "bob@example.com"
    cli(config, "tickets", "close", shelled, "--closed", "--as", "bob@example.com")
    cli(config, "tickets", "reopen", shelled, "--as", "alice@example.com")
    assert state(ctx, shelled)[0] == "open"
    assert notices(ctx, shelled)[-1] == ("reopened", "bob@example.com")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tickets", "assign", "{ref}", "mallory@example.com"],
         "mallory@example.com is not a configured agent"),
        (["tickets", "open", "--requester", "no-at-sign", "--subject", "x"], "is not an email address"),
        (["tickets", "open", "--requester", "a@b.example", "--subject", "x", "--department", "nope"],
         "unknown department 'nope'"),
    ],
)
def test_a_refused_action_is_one_line_and_exit_1(
    setup: tuple[Path, AppContext], args: list[str], message: str
) -> None:
    """TicketActionError reaches the shell as one line naming the problem (and the ticket), no traceback."""
    config, ctx = setup
    ref = ingest(ctx, mail(subject="Cannot log in")).ticket_ref
    assert ref is not None
    result = CliRunner().invoke(main, ["--config", str(config), *(a.format(ref=ref) for a in args)])
    assert result.exit_code == 1
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_locked_database_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A database that stays locked is an expected failure: one line naming it, exit 1."""
    config = write_config(tmp_path / "mailticket.toml", db_url=f"sqlite:///{tmp_path / 'desk.db'}")
    ctx = load_ctx(config)
    ref = ingest(ctx, mail(subject="Cannot log in")).ticket_ref
    ctx.engine.dispose()
    holder = sqlite3.connect(tmp_path / "desk.db")
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock for the whole command
    try:
        with patch("mailticket.storage.db.BUSY_TIMEOUT_MS", 200):
            result = CliRunner().invoke(
                main, ["--config", str(config), "tickets", "note", str(ref), "--body", "hello"]
            )
    finally:
        holder.rollback()
        holder.close()
    assert result.exit_code == 1
    assert "DatabaseUnavailable" in result.stderr and "database is locked" in result.stderr
    assert "Traceback" not in result.output and "INSERT" not in result.output
