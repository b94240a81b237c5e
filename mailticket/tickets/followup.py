"""Mail on an existing ticket, and the rules on replies acting on it.

`followup` files a message that threaded onto a ticket by its kind (bounce, auto-reply,
stranger, agent, customer). Rules with `applies_to = "followups"` or `"all"` then act on it:
a customer's reply can raise the priority, add tags, move or assign the
ticket, or change its status. Every change is an event naming the rules, so
the ticket's history says why. A ticket left closed by its department's
closed-reply policy is not touched.
"""

from __future__ import annotations

from sqlmodel import Session

from mailticket.context import AppContext
from mailticket.models import Classification, Decision, MailKind, ParsedMessage, RawMail, ThreadMatch
from mailticket.rules.engine import evaluate
from mailticket.storage import repository
from mailticket.storage.tables import Entry, Ticket
from mailticket.tickets import actions, notices
from mailticket.tickets.agent_mail import agent_mail
from mailticket.tickets.assignment import pick_agent
from mailticket.tickets.lifecycle import closed_reply
from mailticket.tickets.routing import rule_errors
from mailticket.tickets.sla import due_times
from mailticket.tickets.store import Store


def apply_followup_rules(
    session: Session, ctx: AppContext, ticket: Ticket, parsed: ParsedMessage, mailbox: str | None
) -> Decision | None:
    """Run the followup rules against `parsed` and apply what they decide; None if none matched."""
    if ticket.status == "closed":
        return None
    config = ctx.config
    base = Decision(department=ticket.department, priority=ticket.priority, acknowledge=False)
    decision = evaluate(
        config.rules, parsed, base, mailbox=mailbox, followup=True,
        regex_timeout_ms=config.security.rule_regex_timeout_ms,
    )
    if not decision.hits and not decision.rule_errors:
        return None
    names = [h.rule for h in decision.hits]
    repository.record_event(
        session,
        ctx.clock(),
        ticket,
        "routed",
        None,
        followup=True,
        rules=[{"rule": h.rule, "matched_on": list(h.matched_on)} for h in decision.hits],
        **rule_errors(decision, f"ticket {ticket.ref}"),
    )
    if decision.department != ticket.department:
        repository.record_event(
            session, ctx.clock(), ticket, "department", None,
            old=ticket.department, new=decision.department, rules=names,
        )
        ticket.department = decision.department
    if decision.priority != ticket.priority:
        repository.record_event(
            session, ctx.clock(), ticket, "priority", None,
            old=ticket.priority, new=decision.priority, rules=names,
        )
        ticket.priority = decision.priority
    added = [t for t in decision.tags if t not in ticket.tags]
    if added:
        ticket.tags = [*ticket.tags, *added]
        repository.record_event(session, ctx.clock(), ticket, "tags", None, added=added, rules=names)
    if decision.sla and decision.sla != ticket.sla:
        plan = config.sla_plan(decision.sla)
        repository.record_event(
            session, ctx.clock(), ticket, "sla", None, old=ticket.sla, new=decision.sla, rules=names
        )
        ticket.sla = decision.sla
        ticket.first_response_due, ticket.resolution_due = due_times(plan, ticket.created_at)
    if decision.language and decision.language != ticket.language:
        repository.record_event(
            session, ctx.clock(), ticket, "language", None,
            old=ticket.language, new=decision.language, rules=names,
        )
        ticket.language = decision.language
    if decision.status:
        actions.set_status(session, ctx, ticket, decision.status, None, rules=names)
    if decision.assign:
        agent = pick_agent(session, config, decision)
        if agent != ticket.assignee:
            actions.assign(session, ctx, ticket, agent, None)
    return decision


def followup(
    store: Store, raw: RawMail, parsed: ParsedMessage, cls: Classification, match: ThreadMatch, ticket: Ticket
) -> Entry:
    """A message on an existing ticket, by kind: bounce, auto-reply, stranger, agent, customer."""
    session, ctx = store.session, store.ctx
    sender = parsed.sender
    if cls.kind is MailKind.BOUNCE:
        entry = store.entry(ticket, parsed, "system", ["bounce"])
        repository.record_event(
            session, ctx.clock(), ticket, "bounce", sender,
            entry_id=entry.id, bounced=list(parsed.bounced_message_ids),
        )
        return entry
    if cls.kind in (MailKind.AUTO_REPLY, MailKind.LOOP):
        # Auto-replies never change a ticket's state and trigger no notice.
        return store.entry(ticket, parsed, "system", ["auto-reply"])
    if match.non_participant:
        entry = store.entry(ticket, parsed, "note", ["non-participant"])
        repository.record_event(
            session, ctx.clock(), ticket, "non_participant_mail", sender, entry_id=entry.id
        )
        return entry
    if cls.kind is MailKind.UNVERIFIED_AGENT:
        entry = store.entry(ticket, parsed, "note", ["unverified"])
        repository.record_event(
            session, ctx.clock(), ticket, "unverified_agent_mail", sender,
            entry_id=entry.id, reason=cls.reason,
        )
        notices.note_alert(session, ctx, ticket, entry, exclude=sender)
        if sender:
            notices.unverified_agent(session, ctx, ticket, entry, sender, cls.reason)
        return entry
    if cls.kind is MailKind.AGENT:
        return agent_mail(store, ticket, parsed, match.ticket.participants if match.ticket else frozenset())
    return _customer_followup(store, raw, parsed, match, ticket)


def _customer_followup(
    store: Store, raw: RawMail, parsed: ParsedMessage, match: ThreadMatch, ticket: Ticket
) -> Entry:
    """The customer's reply: the requester's new CCs join, a pending or resolved ticket reopens,
    agents hear of it."""
    session, ctx = store.session, store.ctx
    entry = store.entry(ticket, parsed, "customer", [])
    if parsed.sender == ticket.requester:  # a CC's reply-all adds no one: only the requester does
        known = match.ticket.participants if match.ticket else frozenset()
        store.add_ccs(ticket, (a.email for a in parsed.cc), known)
    if ticket.status in ("pending", "resolved"):
        actions.reopen(session, ctx, ticket, parsed.sender, "customer replied", entry)
    elif ticket.status == "closed":
        closed_reply(session, ctx, ticket, entry, parsed)
    else:
        notices.note_alert(session, ctx, ticket, entry, flags=["customer reply"])
    repository.record_event(
        session, ctx.clock(), ticket, "customer_reply", parsed.sender, entry_id=entry.id, source=raw.source,
    )
    apply_followup_rules(session, ctx, ticket, parsed, raw.mailbox)
    return entry
