"""A verified agent's mail on a ticket: commands at the top, the rest a public reply.

Commands sit on their own lines before any other text: `#note`, `#close`,
`#resolve`, `#pending`, `#assign <email>`, `#priority <level>`,
`#department <name>`. They are applied and never relayed. With `#note` the
text stays internal; with `#resolve` or `#close` it is the resolution text of
the resolution notice (one mail to the customer, not a reply and a notice);
otherwise it is relayed to the requester and CCs as a reply. An unknown or
malformed command stops everything: the agent gets an error notice, the mail
is kept as an internal note, and nothing is relayed or changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlmodel import Session

from mailticket import actions
from mailticket.config import PRIORITIES, Config
from mailticket.context import AppContext
from mailticket.models import ParsedMessage
from mailticket.outbound.outbox import enqueue
from mailticket.storage import repository
from mailticket.storage.tables import Entry, Ticket

# html2text escapes a leading '#' as '\#' when an agent's mail has only an HTML part.
_COMMAND = re.compile(r"^\\?#([a-z_]+)\b[ \t]*(.*)$", re.I)
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


def check_command(config: Config, cmd: Command) -> str | None:
    """Why a known command cannot be applied as written, or None."""
    if cmd.name == "assign" and not config.is_agent(cmd.arg.lower()):
        return f"#assign {cmd.arg}: not a configured agent"
    if cmd.name == "priority" and cmd.arg.lower() not in PRIORITIES:
        return f"#priority {cmd.arg}: use one of {', '.join(PRIORITIES)}"
    if cmd.name == "department" and cmd.arg not in {d.name for d in config.departments}:
        return f"#department {cmd.arg}: unknown department"
    return None


EntryMaker = Callable[[Session, Ticket, ParsedMessage, str, list[str]], Entry]


def agent_mail(
    session: Session, ctx: AppContext, ticket: Ticket, parsed: ParsedMessage, make_entry: EntryMaker
) -> Entry:
    agent = parsed.sender or ""
    commands, rest, unknown = split_commands(parsed.visible_text)
    problems = [f"unknown command {line!r}" for line in unknown]
    problems += [p for c in commands if (p := check_command(ctx.config, c))]
    if problems:
        return _refuse(session, ctx, ticket, parsed, make_entry, problems)
    names = [c.name for c in commands]
    closing = next((n for n in reversed(names) if n in ("close", "resolve")), None)
    internal = "note" in names or not rest
    entry = make_entry(session, ticket, parsed, "note" if internal else "agent", [])
    entry.body_text = rest or "\n".join(f"#{c.name} {c.arg}".strip() for c in commands)
    if commands:
        repository.record_event(
            session, ctx.clock(), ticket, "commands", agent,
            entry_id=entry.id, commands=[f"#{n}" for n in names],
        )
    if internal:
        if rest:
            repository.record_event(session, ctx.clock(), ticket, "note", agent, entry_id=entry.id)
            enqueue(
                session,
                ctx,
                ticket,
                "note_alert",
                actions.agents_to_alert(ctx, ticket, exclude=agent),
                actions.entry_context(entry),
            )
    elif closing is None:
        actions.relay_reply(session, ctx, ticket, entry)
    for cmd in commands:
        if cmd.name == "assign":
            actions.assign(session, ctx, ticket, cmd.arg.lower(), agent)
        elif cmd.name == "priority":
            actions.set_priority(session, ctx, ticket, cmd.arg.lower(), agent)
        elif cmd.name == "department":
            actions.set_department(session, ctx, ticket, cmd.arg, agent)
        elif cmd.name == "pending":
            actions.set_pending(session, ctx, ticket, agent)
    if closing is not None:
        actions.resolve(
            session, ctx, ticket, agent, close=closing == "close", entry=None if internal else entry
        )
    return entry


def _refuse(
    session: Session,
    ctx: AppContext,
    ticket: Ticket,
    parsed: ParsedMessage,
    make_entry: EntryMaker,
    problems: list[str],
) -> Entry:
    agent = parsed.sender or ""
    entry = make_entry(session, ticket, parsed, "note", ["command-error"])
    repository.record_event(
        session, ctx.clock(), ticket, "command_error", agent, entry_id=entry.id, problems=problems
    )
    enqueue(
        session,
        ctx,
        ticket,
        "command_error",
        [agent],
        {**actions.entry_context(entry), "problems": problems, "known": [f"#{k}" for k in KNOWN]},
        automatic=False,
    )
    return entry
