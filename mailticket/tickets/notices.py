"""Every notice a ticket change implies, queued in the change's transaction: the one caller of `enqueue`.

Who hears what:

    ack            new ticket            -> requester (unless a rule or a loop check says no)
    alert          new or moved ticket   -> assignee, else the department's agents
    note_alert     note, customer reply  -> assignee, else the department's agents
    reply          agent's public reply  -> requester, CCs on the first copy (never automatic)
    resolution     resolved              -> requester and CCs
    reopened       back to open          -> assignee, else the department's agents
    overdue        SLA missed            -> agents; the escalation contact
    closed_reject  reply to a closed ticket under the `reject` policy -> its sender
    command_error  an agent's bad #command -> that agent (never automatic)
    unverified_agent  mail from an agent's address that is not verified -> that agent, why and
                   how to get verified (at most one an hour per agent: a forger cannot flood)

A notice that must not go out (loop safety, caps, an undeliverable address) becomes a
`notice_suppressed` event inside `enqueue`; the ticket change still commits. New-ticket
alerts have a cap per requester and hour (`alerts_per_sender_per_hour`): the ticket past it
alerts once more, as a digest saying how many came, and later ones are suppressed (an event
each), so a flood from one address cannot bury the agents.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, func, select

from mailticket.context import AppContext
from mailticket.outbound.outbox import enqueue
from mailticket.pipeline.untrusted import FALLBACK_FILENAME, safe_filename
from mailticket.storage import repository
from mailticket.storage.prepared import run
from mailticket.storage.tables import Attachment, Entry, Participant, Ticket

# Built once: every new ticket and every reply runs them, and building a statement costs more
# than running it (docs/benchmarks.md). Core reads: nothing of the session needs flushing first.
_FILES = (
    sa_select(col(Attachment.filename), col(Attachment.content_type), col(Attachment.size),
              col(Attachment.sha256), col(Attachment.content_id))
    .where(col(Attachment.entry_id) == bindparam("entry_id"))
    .order_by(col(Attachment.id))
)
_OPENED_SINCE = select(func.count()).where(
    col(Ticket.requester) == bindparam("requester"), col(Ticket.created_at) >= bindparam("since")
)


def entry_context(entry: Entry | None, flags: list[str] | None = None) -> dict[str, Any]:
    """The template variables of the entry a notice is about (JSON, stored with the notice)."""
    if entry is None:
        return {"entry": {"author": None, "author_name": "", "body": ""}, "flags": flags or []}
    return {
        "entry": {
            "author": entry.author,
            "author_name": entry.author_name,
            "body": entry.body_text,
        },
        "flags": flags or list(entry.flags),
    }


def files_context(session: Session, ctx: AppContext, entry: Entry | None) -> dict[str, Any]:
    """The entry's files for a notice: each named with its size, stored ones attached in order
    while their total stays within `tickets.notice_attachments_mb`; inline ones keep their
    Content-ID so the HTML part can show them."""
    if entry is None or entry.id is None:
        return {"attachments": []}
    rows = run(session.connection(), _FILES, {"entry_id": entry.id}).all()
    room = int(ctx.config.tickets.notice_attachments_mb * 1024 * 1024)
    files = []
    for row in rows:
        attach = row.sha256 is not None and row.size <= room
        room -= row.size if attach else 0
        files.append(
            {
                "name": safe_filename(row.filename) or FALLBACK_FILENAME,
                "content_type": row.content_type,
                "size": row.size,
                "sha256": row.sha256 if attach else None,
                "content_id": row.content_id,
                "attached": attach,
            }
        )
    return {"attachments": files}


def customers(session: Session, ticket: Ticket) -> tuple[str, list[str]]:
    """(requester, CCs) of a ticket: who hears public replies."""
    rows = session.exec(
        select(Participant.email).where(Participant.ticket_id == ticket.id, Participant.role == "cc")
    ).all()
    return ticket.requester, list(rows)


def agents_to_alert(ctx: AppContext, ticket: Ticket, exclude: str | None = None) -> list[str]:
    """The assignee, else every agent of the ticket's department; never `exclude` (who acted)."""
    if ticket.assignee:
        found = [ticket.assignee]
    else:
        dept = next((d for d in ctx.config.departments if d.name == ticket.department), None)
        found = list(dept.agents) if dept else []
    return [a for a in found if a != exclude]


def new_ticket(session: Session, ctx: AppContext, ticket: Ticket, entry: Entry, *, acknowledge: bool) -> None:
    """The requester's acknowledgement (when `acknowledge`) and the agents' alert."""
    context = entry_context(entry)
    if acknowledge:
        enqueue(session, ctx, ticket, "ack", [ticket.requester], context)
    alert = _alert_flood(session, ctx, ticket, {**context, **files_context(session, ctx, entry)})
    if alert is not None:
        enqueue(session, ctx, ticket, "alert", agents_to_alert(ctx, ticket), alert)


def _alert_flood(
    session: Session, ctx: AppContext, ticket: Ticket, context: dict[str, Any]
) -> dict[str, Any] | None:
    """The alert's context: as is within the requester's hourly cap, a digest just past it, else None."""
    cap = ctx.config.tickets.alerts_per_sender_per_hour
    since = ctx.clock() - timedelta(hours=1)
    opened = run(
        session.connection(), _OPENED_SINCE, {"requester": ticket.requester, "since": since}
    ).scalar_one()
    if opened <= cap:
        return context
    if opened > cap + 1:
        reason = f"alert cap of {cap} new tickets per hour from {ticket.requester} (a digest went out)"
        repository.record_event(
            session, ctx.clock(), ticket, "notice_suppressed", None, notice="alert", reason=reason
        )
        return None
    repository.record_event(
        session, ctx.clock(), ticket, "alert_digest", None, requester=ticket.requester, count=opened
    )
    # Said in the alert's language by the templates' _digest partial (templates/<language>/).
    digest = {"count": opened, "requester": ticket.requester}
    return {**context, "digest": digest, "flags": ["digest", *context["flags"]]}


def moved(session: Session, ctx: AppContext, ticket: Ticket, first: Entry | None, actor: str | None) -> None:
    """An unassigned ticket moved to another department: its agents hear of it as of a new one."""
    context = {
        **entry_context(first, [f"moved to {ticket.department}"]),
        **files_context(session, ctx, first),
    }
    enqueue(session, ctx, ticket, "alert", agents_to_alert(ctx, ticket, exclude=actor), context)


def note_alert(
    session: Session,
    ctx: AppContext,
    ticket: Ticket,
    entry: Entry,
    *,
    exclude: str | None = None,
    flags: list[str] | None = None,
) -> None:
    """Agents hear of a note or a customer's reply (never `exclude`, who wrote it), with its files."""
    to = agents_to_alert(ctx, ticket, exclude=exclude)
    context = {**entry_context(entry, flags), **files_context(session, ctx, entry)}
    enqueue(session, ctx, ticket, "note_alert", to, context)


def reply(session: Session, ctx: AppContext, ticket: Ticket, entry: Entry) -> None:
    """An agent's public reply to the requester and CCs: sent even to an auto-replying address."""
    requester, cc = customers(session, ticket)
    context = {**entry_context(entry), **files_context(session, ctx, entry)}
    enqueue(session, ctx, ticket, "reply", [requester], context, cc=cc, automatic=False)


def resolution(session: Session, ctx: AppContext, ticket: Ticket, entry: Entry | None) -> None:
    requester, cc = customers(session, ticket)
    enqueue(session, ctx, ticket, "resolution", [requester], entry_context(entry), cc=cc)


def reopened(
    session: Session, ctx: AppContext, ticket: Ticket, actor: str | None, why: str, entry: Entry | None
) -> None:
    """Agents hear who reopened the ticket, why, and what was written (the customer's reply)."""
    context = {**entry_context(entry), **files_context(session, ctx, entry), "reason": why}
    if entry is None:
        context["entry"] = {"author": actor, "author_name": "", "body": ""}
    enqueue(session, ctx, ticket, "reopened", agents_to_alert(ctx, ticket, exclude=actor), context)


def overdue(
    session: Session, ctx: AppContext, ticket: Ticket, which: str, due: str, contact: str | None
) -> None:
    """The agents hear that `which` deadline passed; an escalation contact gets its own copy."""
    context = {**entry_context(None, ["overdue"]), "which": which, "due": due}
    enqueue(session, ctx, ticket, "overdue", agents_to_alert(ctx, ticket), context)
    if contact:
        enqueue(session, ctx, ticket, "overdue", [contact], {**context, "flags": ["overdue", "escalation"]})


def closed_reject(
    session: Session, ctx: AppContext, ticket: Ticket, entry: Entry, sender: str | None
) -> None:
    enqueue(session, ctx, ticket, "closed_reject", [sender] if sender else [], entry_context(entry))


def unverified_agent(
    session: Session, ctx: AppContext, ticket: Ticket, entry: Entry, agent: str, reason: str
) -> None:
    """Tell the agent their mail did nothing, why, and how to get verified."""
    context = {**entry_context(entry), "reason": reason, "token_days": ctx.config.security.reply_token_days}
    enqueue(session, ctx, ticket, "unverified_agent", [agent], context)


def command_error(
    session: Session, ctx: AppContext, ticket: Ticket, entry: Entry, agent: str, problems: list[str],
    known: list[str],
) -> None:
    """Tell the agent which commands failed: an answer to a person, so never suppressed as automatic."""
    context = {**entry_context(entry), "problems": problems, "known": known}
    enqueue(session, ctx, ticket, "command_error", [agent], context, automatic=False)
