"""The command line: parse arguments, call the app, print tables or JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlmodel import Session, col, select

from mailticket import actions, app, commands, logs
from mailticket.config import CONFIG_ENV, Config, load_config
from mailticket.context import AppContext
from mailticket.errors import ConfigError
from mailticket.intake import cli as intake_cli
from mailticket.models import RawMail
from mailticket.pipeline.process import Pipeline
from mailticket.refs import normalise_ref
from mailticket.rules import cli as rules_cli
from mailticket.serialize import iso, outbox_dict, ticket_dict
from mailticket.storage import repository
from mailticket.storage.tables import IntakeRecord, OutboxMessage, Ticket

EX_OK, EX_CONFIG_INVALID, EX_DATAERR, EX_TEMPFAIL = 0, 2, 65, 75

# Wide tables when piped into a file or pager; rich only sizes to a real terminal.
# Subjects, addresses and reasons come from strangers' mail: never read as rich markup or emoji codes.
console = Console(width=None if sys.stdout.isatty() else 200, markup=False, emoji=False, highlight=False)


class State:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None
        self._ctx: AppContext | None = None

    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                click.echo(str(exc), err=True)
                sys.exit(EX_CONFIG_INVALID)
        return self._config

    def ctx(self) -> AppContext:
        if self._ctx is None:
            try:
                self._ctx = app.build(self.config())
            except ConfigError as exc:
                click.echo(str(exc), err=True)
                sys.exit(EX_CONFIG_INVALID)
        return self._ctx


pass_state = click.make_pass_decorator(State)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@contextmanager
def ticket_session(state: State, ref: str) -> Iterator[tuple[Session, Ticket, AppContext]]:
    """A transaction around one ticket; a bad ref is a clear error with exit code 1."""
    ctx = state.ctx()
    canonical = normalise_ref(ref)
    with Session(ctx.engine) as session, session.begin():
        ticket = repository.ticket_by_ref(session, canonical) if canonical else None
        if ticket is None:
            raise click.ClickException(f"no ticket {ref!r}")
        yield session, ticket, ctx


@click.group()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar=CONFIG_ENV,
              help="Config file (default: $MAILTICKET_CONFIG or ./mailticket.toml).")
@click.option("--log-level", default="INFO", show_default=True)
@click.pass_context
def main(click_ctx: click.Context, config_path: str | None, log_level: str) -> None:
    """mailticket: a help desk that lives in the mailbox."""
    logs.setup(log_level.upper())
    click_ctx.obj = State(config_path)


@main.command("check-config")
@pass_state
def check_config(state: State) -> None:
    """Validate the config file (and templates): exit 0 valid, 2 invalid."""
    config = state.config()
    try:
        from mailticket.outbound.render import Renderer

        Renderer(config.service.templates_dir).check()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EX_CONFIG_INVALID)
    click.echo(
        f"{config.source}: valid ({len(config.mailboxes)} mailboxes, {len(config.departments)} departments, "
        f"{len(config.agents)} agents, {len(config.rules)} rules)"
    )


main.add_command(rules_cli.rules)
main.add_command(intake_cli.fetch)
main.add_command(commands.run)
main.add_command(commands.report)


@main.command()
@click.argument("file", type=click.File("rb"), default="-")
@pass_state
def ingest(state: State, file: Any) -> None:
    """Ingest one raw message from FILE or stdin (MTA pipe).

    Exit 0 stored (or already stored), 65 rejected but kept, 75 temporary failure.
    """
    data = file.read()
    try:
        ctx = state.ctx()
        outcome = Pipeline(ctx).process(RawMail(data=data, source="pipe", position=getattr(file, "name", "")))
    except SystemExit:
        raise
    except Exception as exc:  # the MTA keeps the message and retries
        click.echo(f"temporary failure, retry later: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EX_TEMPFAIL)
    click.echo(f"{outcome.status} {outcome.ticket_ref or ''} {outcome.reason}".strip())
    sys.exit(EX_DATAERR if outcome.status in ("quarantined", "dropped") else EX_OK)


@main.group()
def tickets() -> None:
    """List, show and work tickets."""


@tickets.command("list")
@click.option("--status", type=click.Choice(actions.STATUSES))
@click.option("--department")
@click.option("--assignee")
@click.option("--limit", type=int, default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_state
def tickets_list(state: State, status: str | None, department: str | None, assignee: str | None,
                 limit: int, as_json: bool) -> None:
    """Tickets, newest first."""
    ctx = state.ctx()
    with Session(ctx.engine) as session:
        stmt = select(Ticket).order_by(col(Ticket.id).desc()).limit(limit)
        if status:
            stmt = stmt.where(Ticket.status == status)
        if department:
            stmt = stmt.where(Ticket.department == department)
        if assignee:
            stmt = stmt.where(Ticket.assignee == assignee.lower())
        rows = [ticket_dict(session, t) for t in session.exec(stmt).all()]
    if as_json:
        print_json(rows)
        return
    table = Table("ref", "status", "priority", "department", "assignee", "requester", "subject", "updated")
    for r in rows:
        table.add_row(r["ref"], r["status"], r["priority"], r["department"], r["assignee"] or "-",
                      r["requester"], r["subject"][:60], (r["updated_at"] or "")[:16])
    console.print(table)


@tickets.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def tickets_show(state: State, ref: str, as_json: bool) -> None:
    """One ticket with its conversation."""
    with ticket_session(state, ref) as (session, ticket, _ctx):
        data = ticket_dict(session, ticket, with_entries=True)
    if as_json:
        print_json(data)
        return
    console.print(Text.assemble((data["ref"], "bold"), "  ", data["subject"]))
    console.print(
        f"status={data['status']} priority={data['priority']} department={data['department']} "
        f"assignee={data['assignee'] or '-'} requester={data['requester']} tags={','.join(data['tags'])}"
    )
    for e in data["entries"]:
        flags = f" [{', '.join(e['flags'])}]" if e["flags"] else ""
        console.rule(f"{e['created_at'][:19]} {e['kind']} {e['author'] or ''}{flags}")
        console.print(e["body_text"])
        for a in e["attachments"]:
            console.print(f"  attachment: {a['filename']} ({a['content_type']}, {a['size']} bytes)")
    history = Table("at", "event", "actor", "details", title="history")
    for ev in data["events"]:
        details = " ".join(f"{k}={_detail(v)}" for k, v in ev["data"].items() if v not in (None, [], ""))
        history.add_row(ev["at"][:19], ev["kind"], ev["actor"] or "-", details)
    console.print(history)


def _detail(value: Any) -> str:
    """An event's value on one line; a routing event's rule hits by name (`--json` has their reasons)."""
    if isinstance(value, list):
        return ",".join(str(v["rule"]) if isinstance(v, dict) and "rule" in v else str(v) for v in value)
    return str(value)


def _staff_action(name: str, help_text: str) -> Callable[[Callable[..., None]], click.Command]:
    def wrap(fn: Callable[..., None]) -> click.Command:
        return tickets.command(name, help=help_text)(fn)

    return wrap


@_staff_action("open", "Open a ticket for a requester (sends the usual ack and alert).")
@click.option("--requester", required=True)
@click.option("--subject", required=True)
@click.option("--body", default="", help="Text of the request ('-' reads stdin).")
@click.option("--department")
@click.option("--priority", type=click.Choice(["low", "normal", "high", "urgent"]))
@click.option("--as", "actor", help="Agent opening the ticket.")
@pass_state
def tickets_open(state: State, requester: str, subject: str, body: str, department: str | None,
                 priority: str | None, actor: str | None) -> None:
    from mailticket.staff import open_ticket

    ctx = state.ctx()
    text = sys.stdin.read() if body == "-" else body
    try:
        ref = open_ticket(ctx, requester=requester, subject=subject, body=text, department=department,
                          priority=priority, actor=actor)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(ref)


def _body(text: str) -> str:
    return sys.stdin.read() if text == "-" else text


@_staff_action("reply", "Post a public reply, mailed to the requester and CCs.")
@click.argument("ref")
@click.option("--body", required=True, help="Text ('-' reads stdin).")
@click.option("--as", "actor", required=True, help="The agent replying.")
@click.option("--pending", is_flag=True, help="Then wait for the customer (like #pending by mail).")
@pass_state
def tickets_reply(state: State, ref: str, body: str, actor: str, pending: bool) -> None:
    with ticket_session(state, ref) as (session, ticket, ctx):
        if not ctx.config.is_agent(actor):
            raise click.ClickException(f"{actor} is not a configured agent")
        actions.public_reply(session, ctx, ticket, actor.lower(), _body(body))
        if pending:
            actions.set_pending(session, ctx, ticket, actor.lower())
    click.echo(f"replied on {ref}")


@_staff_action("note", "Add an internal note (agents are alerted; the customer is not).")
@click.argument("ref")
@click.option("--body", required=True, help="Text ('-' reads stdin).")
@click.option("--as", "actor", help="Who writes the note.")
@pass_state
def tickets_note(state: State, ref: str, body: str, actor: str | None) -> None:
    with ticket_session(state, ref) as (session, ticket, ctx):
        actions.internal_note(session, ctx, ticket, actor.lower() if actor else None, _body(body))
    click.echo(f"noted on {ref}")


@_staff_action("assign", "Assign to an agent (or --nobody).")
@click.argument("ref")
@click.argument("agent", required=False)
@click.option("--nobody", is_flag=True)
@click.option("--as", "actor")
@pass_state
def tickets_assign(state: State, ref: str, agent: str | None, nobody: bool, actor: str | None) -> None:
    if not agent and not nobody:
        raise click.UsageError("give an AGENT email or --nobody")
    with ticket_session(state, ref) as (session, ticket, ctx):
        try:
            actions.assign(session, ctx, ticket, None if nobody else (agent or "").lower(), actor)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"{ref} assigned to {agent or 'nobody'}")


@_staff_action("close", "Resolve (default) or close a ticket; the requester gets the resolution notice.")
@click.argument("ref")
@click.option("--resolution", default="", help="Resolution text for the customer.")
@click.option("--closed", "hard_close", is_flag=True, help="Close at once instead of resolving.")
@click.option("--as", "actor")
@pass_state
def tickets_close(state: State, ref: str, resolution: str, hard_close: bool, actor: str | None) -> None:
    with ticket_session(state, ref) as (session, ticket, ctx):
        actions.resolve(session, ctx, ticket, actor.lower() if actor else None, resolution, close=hard_close)
    click.echo(f"{ref} {'closed' if hard_close else 'resolved'}")


@_staff_action("reopen", "Reopen a resolved or closed ticket.")
@click.argument("ref")
@click.option("--as", "actor")
@click.option("--reason", default="reopened by staff")
@pass_state
def tickets_reopen(state: State, ref: str, actor: str | None, reason: str) -> None:
    with ticket_session(state, ref) as (session, ticket, ctx):
        actions.reopen(session, ctx, ticket, actor, reason)
    click.echo(f"{ref} reopened")


@main.group()
def outbox() -> None:
    """The outbound queue."""


@outbox.command("list")
@click.option("--status", type=click.Choice(["queued", "sent", "failed"]))
@click.option("--limit", type=int, default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_state
def outbox_list(state: State, status: str | None, limit: int, as_json: bool) -> None:
    ctx = state.ctx()
    with Session(ctx.engine) as session:
        stmt = select(OutboxMessage).order_by(col(OutboxMessage.id).desc()).limit(limit)
        if status:
            stmt = stmt.where(OutboxMessage.status == status)
        rows = [outbox_dict(session, r) for r in session.exec(stmt).all()]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "ticket", "kind", "to", "status", "attempts", "subject", "last error")
    for r in rows:
        table.add_row(str(r["id"]), r["ticket"] or "-", r["kind"], r["to"], r["status"], str(r["attempts"]),
                      (r["subject"] or f"({r['kind']}, not rendered yet)")[:50], (r["last_error"] or "")[:60])
    console.print(table)


@outbox.command("flush")
@pass_state
def outbox_flush(state: State) -> None:
    """Send every queued message now, ignoring back-off timers."""
    from mailticket.outbound.send import flush

    result = flush(state.ctx(), ignore_backoff=True)
    click.echo(f"sent {result.sent}, retrying {result.retrying}, failed {result.failed}")


@outbox.command("retry")
@click.argument("row_id", metavar="ID", type=int)
@pass_state
def outbox_retry(state: State, row_id: int) -> None:
    """Queue a failed message again (after fixing the address or the server); the next flush sends it."""
    from mailticket.outbound.send import retry

    if not retry(state.ctx(), row_id):
        click.echo(f"no unsent outbox message {row_id}", err=True)
        sys.exit(EX_DATAERR)
    click.echo(f"outbox message {row_id} queued")


@main.group()
def quarantine() -> None:
    """Mail that was kept but opened no ticket (unparseable, dropped, unmatched bounces)."""


@quarantine.command("list")
@click.option("--limit", type=int, default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_state
def quarantine_list(state: State, limit: int, as_json: bool) -> None:
    ctx = state.ctx()
    with Session(ctx.engine) as session:
        rows = session.exec(
            select(IntakeRecord)
            .where(col(IntakeRecord.status).in_(("quarantined", "dropped")))
            .order_by(col(IntakeRecord.id).desc())
            .limit(limit)
        ).all()
        data: list[dict[str, Any]] = [
            {"id": r.id, "status": r.status, "reason": r.reason, "source": r.source,
             "sha256": r.raw_sha256, "received_at": iso(r.created_at)}
            for r in rows
        ]
    if as_json:
        print_json(data)
        return
    table = Table("id", "status", "received", "source", "reason")
    for r in data:
        table.add_row(str(r["id"]), r["status"], (r["received_at"] or "")[:19], r["source"], r["reason"])
    console.print(table)


@quarantine.command("show")
@click.argument("record_id", type=int)
@pass_state
def quarantine_show(state: State, record_id: int) -> None:
    """Write the kept raw message to stdout (e.g. to re-ingest it after a fix)."""
    ctx = state.ctx()
    with Session(ctx.engine) as session:
        record = session.get(IntakeRecord, record_id)
        if record is None:
            raise click.ClickException(f"no quarantine record {record_id}")
        sha = record.raw_sha256
    try:
        sys.stdout.buffer.write(ctx.blobs.get(sha))
    except FileNotFoundError:
        raise click.ClickException(f"raw message {sha} is missing from {ctx.blobs.root}") from None
