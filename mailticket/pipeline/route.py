"""Route stage: department, priority, assignee, tags and acknowledgement for a message.

The base department comes from where the mail was sent (a department's own
address), else the mailbox's department, else the first department; the rules
engine then refines it, and a department's `assign` policy fills in the
assignee when no rule named one.
"""

from __future__ import annotations

from dataclasses import replace

from mailticket.config import Config
from mailticket.models import Decision, ParsedMessage
from mailticket.rules.engine import RuleTrace, evaluate, trace


def recipients(msg: ParsedMessage, envelope: tuple[str, ...] = ()) -> list[str]:
    return [
        *(a.email for a in (*msg.to, *msg.cc)),
        *msg.delivered_to,
        *(e.lower() for e in envelope),
    ]


def base_department(
    msg: ParsedMessage, config: Config, mailbox: str | None, envelope: tuple[str, ...] = ()
) -> str:
    by_address = {d.address: d.name for d in config.departments if d.address}
    for address in recipients(msg, envelope):
        if address in by_address:
            return by_address[address]
    box = next((m for m in config.mailboxes if m.name == mailbox), None)
    if box and box.department:
        return box.department
    return config.default_department


def _base(msg: ParsedMessage, config: Config, mailbox: str | None, envelope: tuple[str, ...]) -> Decision:
    return Decision(
        department=base_department(msg, config, mailbox, envelope),
        acknowledge=config.tickets.acknowledge,
    )


def _department_assign(decision: Decision, config: Config) -> Decision:
    """The department's own assign policy, when no rule chose an assignee."""
    if decision.assign is None and not decision.drop:
        policy = config.department(decision.department).assign
        if policy != "none":
            return replace(decision, assign=policy)
    return decision


def route(
    msg: ParsedMessage,
    config: Config,
    *,
    mailbox: str | None,
    followup: bool,
    envelope: tuple[str, ...] = (),
) -> Decision:
    base = _base(msg, config, mailbox, envelope)
    decision = evaluate(
        config.rules, msg, base, mailbox=mailbox, followup=followup,
        regex_timeout_ms=config.security.rule_regex_timeout_ms,
    )
    return _department_assign(decision, config)


def explain(
    msg: ParsedMessage,
    config: Config,
    *,
    mailbox: str | None,
    followup: bool,
    envelope: tuple[str, ...] = (),
) -> tuple[Decision, tuple[RuleTrace, ...]]:
    """`route` with every rule's result, for `mailticket rules test`."""
    base = _base(msg, config, mailbox, envelope)
    decision, traces = trace(
        config.rules, msg, base, mailbox=mailbox, followup=followup,
        regex_timeout_ms=config.security.rule_regex_timeout_ms,
    )
    return _department_assign(decision, config), traces
