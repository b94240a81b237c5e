"""Evaluate rules against a message (placeholder until the full engine lands: applies no rule)."""

from __future__ import annotations

from collections.abc import Sequence

from mailticket.config import RuleConfig
from mailticket.models import Decision, ParsedMessage


def evaluate(
    rules: Sequence[RuleConfig],
    msg: ParsedMessage,
    base: Decision,
    *,
    mailbox: str | None,
    followup: bool,
) -> Decision:
    return base
