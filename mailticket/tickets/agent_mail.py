"""A verified agent's mail on a ticket: commands at the top, the rest a public reply.

Commands sit on their own lines before any other text: `#note`, `#close`,
`#resolve`, `#pending`, `#assign <email>`, `#priority <level>`,
`#department <name>`. They are applied and never relayed. With `#note` the
text stays internal; with `#resolve` or `#close` it is the resolution text of
the resolution notice (one mail to the customer, not a reply and a notice);
otherwise it is relayed to the requester and CCs as a reply. An unknown or
malformed command stops everything: the agent gets an error notice, the mail
is kept as an internal note, and nothing is relayed or changed.

Mail that is automatic but says nothing of it (an out-of-office answering each alert, from
a client that sets no Auto-Submitted) shows itself by repetition: the same text from the same
agent on the same ticket within `agent_repeat_minutes` is kept as a note flagged `automatic`,
recorded as an `agent_mail_held` event, and neither relayed nor alerted. (Mail with automatic
headers never gets here: it is classified an auto-reply.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import select

from mailticket.config import PRIORITIES, Config
from mailticket.models import ParsedMessage
from mailticket.storage import repository
from mailticket.storage.tables import Entry, Ticket
from mailticket.tickets import actions, notices
from mailticket.tickets.store import Store

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


def agent_mail(store: Store, ticket: Ticket, parsed: ParsedMessage, known: frozenset[str]) -> Entry:
    """A verified agent's mail: held if it repeats itself, else its commands checked (all or
    nothing), then applied in order. A public reply's CCs join the ticket (`known`: its
    participants) before it is relayed."""
    commands, rest, unknown = split_commands(parsed.visible_text)
    if why := _repeated(store, ticket, parsed.sender or "", rest, commands):
        return _hold(store, ticket, parsed, rest, why)
    return _apply(store, ticket, parsed, known, (commands, rest, unknown))


def _apply(
    store: Store,
    ticket: Ticket,
    parsed: ParsedMessage,
    known: frozenset[str],
    split: tuple[list[Command], str, list[str]],
) -> Entry:
    commands, rest, unknown = split
    session, ctx = store.session, store.ctx
    agent = parsed.sender or ""
    problems = [f"unknown command {line!r}" for line in unknown]
    problems += [p for c in commands if (p := check_command(ctx.config, c))]
    if problems:
        return _refuse(store, ticket, parsed, problems)
    names = [c.name for c in commands]
    closing = next((n for n in reversed(names) if n in ("close", "resolve")), None)
    internal = "note" in names or not rest
    entry = store.entry(ticket, parsed, "note" if internal else "agent", [])
    entry.body_text = rest or "\n".join(f"#{c.name} {c.arg}".strip() for c in commands)
    if commands:
        repository.record_event(
            session, ctx.clock(), ticket, "commands", agent,
            entry_id=entry.id, commands=[f"#{n}" for n in names],
        )
    if internal:
        if rest:
            repository.record_event(session, ctx.clock(), ticket, "note", agent, entry_id=entry.id)
            notices.note_alert(session, ctx, ticket, entry, exclude=agent)
    else:
        store.add_ccs(ticket, (a.email for a in parsed.cc), known)
        if closing is None:
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


def _repeated(store: Store, ticket: Ticket, agent: str, text: str, commands: list[Command]) -> str | None:
    """Why `text` (without commands) looks automatic: this agent sent the same here a moment ago."""
    if not text or commands:
        return None
    minutes = store.ctx.config.tickets.agent_repeat_minutes
    since = store.ctx.clock() - timedelta(minutes=minutes)
    found = store.session.exec(
        select(Entry.id)
        .where(Entry.ticket_id == ticket.id, Entry.author == agent)
        .where(Entry.body_text == text, Entry.created_at >= since)
        .limit(1)
    ).first()
    return f"the same text as this agent's mail on the ticket within {minutes} minutes" if found else None


def _hold(store: Store, ticket: Ticket, parsed: ParsedMessage, text: str, why: str) -> Entry:
    """Keep automatic-looking agent mail as a note: nothing relayed, nobody alerted."""
    entry = store.entry(ticket, parsed, "note", ["automatic"])
    entry.body_text = text
    session, now = store.session, store.ctx.clock()
    agent = parsed.sender
    repository.record_event(session, now, ticket, "agent_mail_held", agent, entry_id=entry.id, reason=why)
    return entry


def _refuse(store: Store, ticket: Ticket, parsed: ParsedMessage, problems: list[str]) -> Entry:
    """Nothing is applied; the mail is kept as a note and the agent is told which lines failed."""
    session, ctx = store.session, store.ctx
    agent = parsed.sender or ""
    entry = store.entry(ticket, parsed, "note", ["command-error"])
    repository.record_event(
        session, ctx.clock(), ticket, "command_error", agent, entry_id=entry.id, problems=problems
    )
    notices.command_error(session, ctx, ticket, entry, agent, problems, [f"#{k}" for k in KNOWN])
    return entry
