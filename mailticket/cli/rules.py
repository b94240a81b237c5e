"""`mailticket rules test FILE.eml`: a dry run of routing for one message.

Shows every rule (matched, no match with each condition's result, or skipped
and why) and the final department, priority, assignee, tags and
acknowledgement. It reads the config and the file only: no database, nothing
stored, nothing sent.
"""

from __future__ import annotations

from typing import Any, BinaryIO

import click
from rich.table import Table

from mailticket.cli.output import console, print_json
from mailticket.cli.state import State
from mailticket.config import Config
from mailticket.errors import ParseError
from mailticket.models import Decision, ParsedMessage
from mailticket.pipeline.parse import parse
from mailticket.pipeline.route import base_department, explain
from mailticket.rules.engine import RuleTrace


@click.group()
def rules() -> None:
    """Routing rules: try them on a message."""


def report(
    config: Config,
    msg: ParsedMessage,
    decision: Decision,
    traces: tuple[RuleTrace, ...],
    *,
    mailbox: str | None,
    followup: bool,
) -> dict[str, Any]:
    """The dry run as plain data: what `--json` prints and the table shows."""
    dept = config.department(decision.department)
    policy = decision.assign in ("round-robin", "least-open")
    return {
        "message": {
            "message_id": msg.message_id,
            "from": msg.sender,
            "to": [a.email for a in msg.to],
            "cc": [a.email for a in msg.cc],
            "subject": msg.subject,
        },
        "mailbox": mailbox,
        "followup": followup,
        "base_department": base_department(msg, config, mailbox),
        "rules": [
            {
                "name": t.rule,
                "result": t.result,
                "matched_on": list(t.matched_on),
                "conditions": [{"condition": text, "matched": held} for text, held in t.conditions],
                "reason": t.reason,
            }
            for t in traces
        ],
        "decision": {
            "department": decision.department,
            "priority": decision.priority,
            "assignee": decision.assign,
            "assignee_pool": list(dept.agents) if policy else [],
            "tags": list(decision.tags),
            "status": decision.status,
            "sla": decision.sla or dept.sla,
            "acknowledge": decision.acknowledge,
            "drop": decision.drop,
            "matched_rules": [h.rule for h in decision.hits],
            "rule_errors": [str(e) for e in decision.rule_errors],
        },
    }


def _print_table(data: dict[str, Any]) -> None:
    msg = data["message"]
    console.print(f"From: {msg['from'] or '-'}  Subject: {msg['subject']}", markup=False, highlight=False)
    table = Table("#", "rule", "result", "matched on / conditions")
    for i, rule in enumerate(data["rules"]):
        if rule["result"] == "matched":
            detail = "\n".join(rule["matched_on"])
        elif rule["result"] == "skipped":
            detail = rule["reason"]
        else:
            detail = "\n".join(
                f"{'yes' if c['matched'] else 'no '} {c['condition']}" for c in rule["conditions"]
            )
        table.add_row(str(i), rule["name"], rule["result"], detail)
    console.print(table)
    d = data["decision"]
    for error in d["rule_errors"]:
        console.print(f"error: {error}", markup=False, highlight=False)
    assignee = d["assignee"] or "-"
    if d["assignee_pool"]:
        assignee += f" among {', '.join(d['assignee_pool'])}"
    status = d["status"] or ("unchanged" if data["followup"] else "open")
    for label, value in (
        ("department", f"{d['department']} (before rules: {data['base_department']})"),
        ("priority", d["priority"]),
        ("assignee", assignee),
        ("tags", ", ".join(d["tags"]) or "-"),
        ("status", status),
        ("sla", d["sla"] or "-"),
        ("acknowledge", "yes" if d["acknowledge"] else "no"),
        ("drop", "yes: kept in quarantine, no ticket" if d["drop"] else "no"),
    ):
        console.print(f"{label:<12} {value}", markup=False, highlight=False)
    console.print("(dry run: nothing was stored or sent)", markup=False, highlight=False)


@rules.command("test")
@click.argument("file", type=click.File("rb"))
@click.option("--mailbox", help="Evaluate as if the mail came in through this [[mailboxes]] name.")
@click.option("--followup", is_flag=True, help="Evaluate as a reply on an existing ticket.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def rules_test(state: State, file: BinaryIO, mailbox: str | None, followup: bool, as_json: bool) -> None:
    """Dry run: which rules match FILE and the routing that results; stores nothing."""
    config = state.config()
    if mailbox is not None and mailbox not in {m.name for m in config.mailboxes}:
        known = ", ".join(m.name for m in config.mailboxes) or "none configured"
        raise click.BadParameter(f"unknown mailbox {mailbox!r}; known: {known}", param_hint="--mailbox")
    try:
        msg = parse(file.read())
    except ParseError as exc:
        raise click.ClickException(f"{file.name}: cannot parse: {exc}") from None
    decision, traces = explain(msg, config, mailbox=mailbox, followup=followup)
    data = report(config, msg, decision, traces, mailbox=mailbox, followup=followup)
    if as_json:
        print_json(data)
    else:
        _print_table(data)
