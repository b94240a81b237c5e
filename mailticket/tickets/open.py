"""A new ticket from a message: the ticket, its participants, the first entry, events, notices."""

from __future__ import annotations

from mailticket.i18n import ticket_language
from mailticket.models import Classification, Decision, MailKind, ParsedMessage, RawMail
from mailticket.storage import repository
from mailticket.storage.tables import Entry, Event, Participant, Ticket
from mailticket.tickets import actions, notices
from mailticket.tickets.assignment import pick_agent
from mailticket.tickets.routing import rule_errors
from mailticket.tickets.store import Store, clean_subject


def open_ticket(
    store: Store, raw: RawMail, parsed: ParsedMessage, cls: Classification, decision: Decision
) -> tuple[Ticket, Entry]:
    """Open the ticket the routing `decision` describes; the sender is its requester."""
    session, ctx = store.session, store.ctx
    plan = ctx.config.sla_plan(decision.sla or ctx.config.department(decision.department).sla)
    requester = parsed.sender or "unknown@invalid"
    ticket = actions.new_ticket(
        session,
        ctx,
        sla=plan.name if plan else None,
        subject=clean_subject(parsed.subject),
        status=decision.status or "open",
        priority=decision.priority,
        department=decision.department,
        requester=requester,
        requester_name=parsed.from_.name if parsed.from_ else "",
        tags=list(decision.tags),
        language=ticket_language(decision, parsed, ctx.renderer.languages),
    )
    repository.add_row(session, Participant, ticket_id=ticket.id, email=requester, role="requester")
    store.add_ccs(ticket, (a.email for a in (*parsed.to, *parsed.cc)), frozenset({requester}))
    flags = ["auto-reply"] if cls.kind is MailKind.AUTO_REPLY else []
    entry = store.entry(ticket, parsed, "customer", flags)
    created = repository.event(
        ctx.clock(), ticket, "created", requester, source=raw.source, classification=cls.kind.value
    )
    routed = repository.event(
        ctx.clock(),
        ticket,
        "routed",
        None,
        rules=[{"rule": h.rule, "matched_on": list(h.matched_on)} for h in decision.hits],
        department=ticket.department,
        priority=ticket.priority,
        tags=ticket.tags,
        assign=decision.assign,
        acknowledge=decision.acknowledge,
        **rule_errors(decision, f"ticket {ticket.ref}"),
    )
    repository.add_rows(session, Event, [created, routed])
    if decision.assign:
        actions.assign(session, ctx, ticket, pick_agent(session, ctx.config, decision), None)
    notices.new_ticket(session, ctx, ticket, entry, acknowledge=decision.acknowledge and cls.may_auto_reply)
    return ticket, entry
