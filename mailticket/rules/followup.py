"""Rules on replies: `applies_to = "followups"` or `"all"` rules acting on an existing ticket.

A customer's reply can raise the priority, add tags, move or assign the
ticket, or change its status. Every change is an event naming the rules, so
the ticket's history says why. A ticket left closed by its department's
closed-reply policy is not touched.
"""

from __future__ import annotations

from sqlmodel import Session

from mailticket import actions
from mailticket.context import AppContext
from mailticket.models import Decision, ParsedMessage
from mailticket.rules.assign import pick_agent
from mailticket.rules.engine import evaluate
from mailticket.sla import due_times
from mailticket.storage import repository
from mailticket.storage.tables import Ticket


def apply_followup_rules(
    session: Session, ctx: AppContext, ticket: Ticket, parsed: ParsedMessage, mailbox: str | None
) -> Decision | None:
    """Run the followup rules against `parsed` and apply what they decide; None if none matched."""
    if ticket.status == "closed":
        return None
    config = ctx.config
    base = Decision(department=ticket.department, priority=ticket.priority, acknowledge=False)
    decision = evaluate(config.rules, parsed, base, mailbox=mailbox, followup=True)
    if not decision.hits:
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
    if decision.status:
        actions.set_status(session, ctx, ticket, decision.status, None, rules=names)
    if decision.assign:
        agent = pick_agent(session, config, decision)
        if agent != ticket.assignee:
            actions.assign(session, ctx, ticket, agent, None)
    return decision
