"""`mailticket tickets ...`: list, show and work tickets from the shell."""

from __future__ import annotations

import mimetypes
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.text import Text
from sqlmodel import Session, col, select

from mailticket.cli.output import (
    Grid,
    console,
    force_utc,
    listing_options,
    page,
    print_json,
    report_cut,
    row_limit,
    ticket_session,
    when,
)
from mailticket.cli.state import State, pass_state
from mailticket.intake.staff import open_ticket
from mailticket.models import AttachmentPart
from mailticket.pipeline.untrusted import printable
from mailticket.storage.serialize import ticket_dict
from mailticket.storage.tables import Ticket
from mailticket.tickets import actions


@click.group()
def tickets() -> None:
    """List, show and work tickets."""


@tickets.command("list")
@click.option("--status", type=click.Choice(actions.STATUSES))
@click.option("--department")
@click.option("--assignee")
@listing_options
@pass_state
def tickets_list(state: State, status: str | None, department: str | None, assignee: str | None,
                 limit: int | None, as_json: bool) -> None:
    """Tickets, newest first."""
    ctx = state.ctx()
    with Session(ctx.engine) as session:
        stmt = select(Ticket).order_by(col(Ticket.id).desc())
        if status:
            stmt = stmt.where(Ticket.status == status)
        if department:
            stmt = stmt.where(Ticket.department == department)
        if assignee:
            stmt = stmt.where(Ticket.assignee == assignee.lower())
        found, total = page(session, stmt, row_limit(limit, as_json))
        rows = [ticket_dict(session, t) for t in found]
    if as_json:
        print_json(rows)
    else:
        grid = Grid("ref", "status", "priority", "department", "assignee", "requester", "subject", "updated",
                    keep=("ref", "status", "updated"))
        for r in rows:
            grid.add_row(r["ref"], r["status"], r["priority"], r["department"], r["assignee"] or "-",
                         r["requester"], r["subject"], when(r["updated_at"], state))
        grid.print(console)
    report_cut(len(rows), total, as_json=as_json)


@tickets.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.option("--utc", is_flag=True, expose_value=False, callback=force_utc, help="Times in UTC.")
@pass_state
def tickets_show(state: State, ref: str, as_json: bool) -> None:
    """One ticket with its conversation."""
    with ticket_session(state, ref) as (session, ticket, _ctx):
        data = ticket_dict(session, ticket, with_entries=True)
    if as_json:
        print_json(data)
        return
    console.print(Text.assemble((data["ref"], "bold"), "  ", printable(data["subject"], multiline=False)))
    console.print(
        f"status={data['status']} priority={data['priority']} department={data['department']} "
        f"assignee={data['assignee'] or '-'} requester={data['requester']} tags={','.join(data['tags'])}"
    )
    for e in data["entries"]:
        flags = f" [{', '.join(e['flags'])}]" if e["flags"] else ""
        console.rule(f"{when(e['created_at'], state)} {e['kind']} {e['author'] or ''}{flags}")
        console.print(e["body_text"])
        for a in e["attachments"]:
            console.print(f"  attachment: {a['filename']} ({a['content_type']}, {a['size']} bytes)")
    history = Grid("at", "event", "actor", "details", keep=("at", "event"), title="history")
    for ev in data["events"]:
        details = " ".join(f"{k}={_detail(v)}" for k, v in ev["data"].items() if v not in (None, [], ""))
        history.add_row(when(ev["at"], state), ev["kind"], ev["actor"] or "-", details)
    history.print(console)


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
    ctx = state.ctx()
    text = sys.stdin.read() if body == "-" else body
    ref = open_ticket(ctx, requester=requester, subject=subject, body=text, department=department,
                      priority=priority, actor=actor)
    click.echo(ref)


def _body(text: str) -> str:
    return sys.stdin.read() if text == "-" else text


@_staff_action("reply", "Post a public reply, mailed to the requester and CCs.")
@click.argument("ref")
@click.option("--body", required=True, help="Text ('-' reads stdin).")
@click.option("--as", "actor", required=True, help="The agent replying.")
@click.option("--pending", is_flag=True, help="Then wait for the customer (like #pending by mail).")
@click.option(
    "--attach", "attach", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file sent with the reply (repeatable).",
)
@pass_state
def tickets_reply(
    state: State, ref: str, body: str, actor: str, pending: bool, attach: tuple[Path, ...]
) -> None:
    octets = "application/octet-stream"
    files = [
        AttachmentPart(path.name, mimetypes.guess_type(path.name)[0] or octets, path.read_bytes())
        for path in attach
    ]
    with ticket_session(state, ref) as (session, ticket, ctx):
        if not ctx.config.is_agent(actor):
            raise click.ClickException(f"{actor} is not a configured agent")
        actions.public_reply(session, ctx, ticket, actor.lower(), _body(body), files)
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
        actions.assign(session, ctx, ticket, None if nobody else (agent or "").lower(), actor)
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
