"""What the stage that stores a message does with the rules engine's errors (it is pure: it only
returns them): a rule regex that timed out is logged, one line each, and recorded in the event."""

from __future__ import annotations

import logging

from mailticket.models import Decision

log = logging.getLogger("mailticket.rules")


def rule_errors(decision: Decision, where: str) -> dict[str, list[dict[str, object]]]:
    """Log each of the decision's rule errors for `where` (a ticket, a message); the fields an
    event records them in, {} when there are none."""
    for error in decision.rule_errors:
        log.warning("%s: %s", where, error)
    return {"rule_errors": [e.as_event() for e in decision.rule_errors]} if decision.rule_errors else {}
