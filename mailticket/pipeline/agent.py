"""A verified agent's mail on a ticket: commands at the top, the rest a public reply.

Commands sit on their own lines before any other text: `#note`, `#close`,
`#resolve`, `#pending`, `#assign <email>`, `#priority <level>`,
`#department <name>`. They are applied and never relayed. An unknown command
stops everything: the agent gets an error notice and nothing is relayed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlmodel import Session

from mailticket import actions
from mailticket.config import PRIORITIES
from mailticket.context import AppContext
from mailticket.models import ParsedMessage
from mailticket.outbound.outbox import enqueue
from mailticket.storage import repository
from mailticket.storage.tables import Entry, Ticket

_COMMAND = re.compile(r"^#([a-z_]+)\b[ \t]*(.*)$", re.I)
KNOWN = ("note", "close", "resolve", "pending", "assign", "priority", "department")


@dataclass(frozen=True)
class Command:
    name: str
    arg: str


def split_commands(text: str) -> tuple[list[Command], str, list[str]]:
    """(commands, remaining text, unknown command lines) from the top of an agent's text."""
    lines = text.splitlines()
    commands: list[Command] = []
    unknown: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if not line:
            index += 1
            continue
        match = _COMMAND.match(line)
        if not match:
            break
        name = match.group(1).lower()
        if name in KNOWN:
            commands.append(Command(name, match.group(2).strip()))
        else:
            unknown.append(line)
        index += 1
    return commands, "\n".join(lines[index:]).strip(), unknown


def _check(ctx: AppContext, cmd: Command) -> str | None:
    if cmd.name == "assign" and not ctx.config.is_agent(cmd.arg.lower()):
        return f"#assign {cmd.arg}: not a configured agent"
    if cmd.name == "priority" and cmd.arg.lower() not in PRIORITIES:
        return f"#priority {cmd.arg}: use one of {', '.join(PRIORITIES)}"
    if cmd.name == "department" and cmd.arg not in {d.name for d in ctx.config.departments}:
        return f"#department {cmd.arg}: unknown department"
    return None


EntryMaker = Callable[[Session, Ticket, ParsedMessage, str, list[str]], Entry]


def agent_mail(
    session: Session, ctx: AppContext, ticket: Ticket, parsed: ParsedMessage, make_entry: EntryMaker
) -> Entry:
    agent = parsed.sender or ""
    commands, rest, unknown = split_commands(parsed.visible_text)
    problems = [f"unknown command {line!r}" for line in unknown]
    problems += [p for c in commands if (p := _check(ctx, c))]
    if problems:
        entry = make_entry(session, ticket, parsed, "note", ["command-error"])
        repository.record_event(session, ticket, "command_error", agent, problems=problems)
        enqueue(
            session,
            ctx,
            ticket,
            "note_alert",
            [agent],
            {
                **actions.entry_context(entry, ["command error"]),
                "entry": {
                    "author": "mailticket",
                    "author_name": "",
                    "body": "Nothing was done and nothing was sent to the customer:\n"
                    + "\n".join(f"- {p}" for p in problems)
                    + f"\nKnown commands: {', '.join('#' + k for k in KNOWN)}",
                },
            },
            automatic=False,
        )
        return entry
    names = {c.name for c in commands}
    entry = make_entry(session, ticket, parsed, "note" if "note" in names else "agent", [])
    entry.body_text = rest
    if "note" not in names and rest:
        if ticket.first_response_at is None:
            ticket.first_response_at = ctx.clock()
        requester, cc = actions.customers(session, ticket)
        enqueue(
            session,
            ctx,
            ticket,
            "reply",
            [requester],
            actions.entry_context(entry),
            cc=cc,
            automatic=False,
        )
        repository.record_event(session, ticket, "reply", agent, entry_id=entry.id)
    elif "note" in names:
        repository.record_event(session, ticket, "note", agent, entry_id=entry.id)
    for cmd in commands:
        if cmd.name == "assign":
            actions.assign(session, ctx, ticket, cmd.arg.lower(), agent)
        elif cmd.name == "priority":
            repository.record_event(
                session, ticket, "priority", agent, old=ticket.priority, new=cmd.arg.lower()
            )
            ticket.priority = cmd.arg.lower()
        elif cmd.name == "department":
            repository.record_event(session, ticket, "department", agent, old=ticket.department, new=cmd.arg)
            ticket.department = cmd.arg
        elif cmd.name == "pending":
            actions.set_status(session, ctx, ticket, "pending", agent)
        elif cmd.name in ("resolve", "close"):
            actions.set_status(session, ctx, ticket, "closed" if cmd.name == "close" else "resolved", agent)
            requester, cc = actions.customers(session, ticket)
            enqueue(
                session,
                ctx,
                ticket,
                "resolution",
                [requester],
                actions.entry_context(None if "note" in names else entry),
                cc=cc,
            )
    return entry
