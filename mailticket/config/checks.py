"""Cross-reference checks: names that point nowhere, duplicates, contradictions between sections.

They work on plain dicts (the TOML as read, or a dumped Config), so check-config reports them
beside the per-field errors in one run.
"""

from __future__ import annotations

import re
from typing import Any

from mailticket.config.messages import did_you_mean
from mailticket.config_file import Loc

EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
DEFAULT_DEPARTMENTS = [{"name": "general"}]
POLICIES = ("round-robin", "least-open")
ADDRESS_CUTOFF = 0.85  # alice@exmaple.com suggests alice@example.com; carol@ never suggests alice@


def _items(data: dict[str, Any], section: str) -> list[tuple[int, dict[str, Any]]]:
    value = data.get(section)
    return [(i, v) for i, v in enumerate(value) if isinstance(v, dict)] if isinstance(value, list) else []


def agent_departments(data: dict[str, Any]) -> dict[str, list[str]]:
    """Department name -> emails of the [[agents]] that list it under `departments`."""
    joins: dict[str, list[str]] = {}
    for _, agent in _items(data, "agents"):
        email, deps = agent.get("email"), agent.get("departments")
        if isinstance(email, str) and EMAIL.match(email) and isinstance(deps, list):
            for dep in deps:
                if isinstance(dep, str):
                    joins.setdefault(dep, []).append(email.lower())
    return joins


class _Names:
    """What the sections define, for checking the names that other sections refer to."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.departments = (
            _items(data, "departments") if "departments" in data else list(enumerate(DEFAULT_DEPARTMENTS))
        )
        self.dept_names = [d["name"] for _, d in self.departments if isinstance(d.get("name"), str)]
        self.plans = [s["name"] for _, s in _items(data, "sla") if isinstance(s.get("name"), str)]
        self.mailboxes = [m["name"] for _, m in _items(data, "mailboxes") if isinstance(m.get("name"), str)]
        self.agents = {
            a["email"].lower() for _, a in _items(data, "agents") if isinstance(a.get("email"), str)
        }
        joins = agent_departments(data)
        self.members = {
            d["name"]: {str(a).lower() for a in d.get("agents") or [] if isinstance(a, str)}
            | set(joins.get(d["name"], []))
            for _, d in self.departments
            if isinstance(d.get("name"), str)
        }
        self.problems: list[tuple[Loc, str]] = []

    def department(self, loc: Loc, name: Any) -> None:
        if isinstance(name, str) and name not in self.dept_names:
            known = ", ".join(sorted(self.dept_names)) or "none"
            hint = did_you_mean(name, self.dept_names)
            self.problems.append((loc, f"unknown department {name!r}{hint}; known: {known}"))

    def sla(self, loc: Loc, name: Any) -> None:
        if isinstance(name, str) and name not in self.plans:
            known = ", ".join(sorted(self.plans)) or "none yet: add an [[sla]] table"
            hint = did_you_mean(name, self.plans)
            self.problems.append((loc, f"unknown sla {name!r}{hint}; known: {known}"))


def cross_reference_problems(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """Mistakes no single section can see: names that point nowhere, duplicates, contradictions."""
    names = _Names(data)
    names.problems += _duplicates(data)
    if isinstance(data.get("departments"), list) and not data["departments"]:
        names.problems.append(
            (("departments",), "no department defined: add a [[departments]] table (the first is the "
             "fallback)")
        )
    for i, box in _items(data, "mailboxes"):
        names.department(("mailboxes", i, "department"), box.get("department"))
    names.problems += _smtp_oauth_mailbox(data)
    _check_departments(names)
    for i, agent in _items(data, "agents"):
        for k, dep in enumerate(agent.get("departments") or []):
            names.department(("agents", i, "departments", k), dep)
    for i, rule in _items(data, "rules"):
        _check_rule(names, i, rule)
    return names.problems


def _smtp_oauth_mailbox(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """`[smtp] oauth2_mailbox` must name a mailbox whose OAuth tokens SMTP can borrow."""
    smtp = data.get("smtp")
    name = smtp.get("oauth2_mailbox") if isinstance(smtp, dict) else None
    if not isinstance(name, str) or not name:
        return []
    oauth = [b["name"] for _, b in _items(data, "mailboxes") if b.get("auth") == "oauth2" and "name" in b]
    if name in oauth:
        return []
    known = ", ".join(str(n) for n in oauth) or "none"
    hint = did_you_mean(name, oauth)
    text = f"no mailbox {name!r} with auth = 'oauth2'{hint}; those with it: {known}"
    return [(("smtp", "oauth2_mailbox"), text)]


def _duplicates(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for section, key, kind, fix in (
        ("departments", "name", "department name", "rename one of them"),
        ("sla", "name", "sla name", "rename one of them"),
        ("mailboxes", "name", "mailbox name", "rename one of them"),
        ("rules", "name", "rule name", "rename one of them"),
        ("agents", "email", "agent", "remove the second [[agents]] table"),
        ("departments", "address", "address", "give each department its own address"),
    ):
        seen: dict[str, int] = {}
        for i, item in _items(data, section):
            name = item.get(key)
            if not isinstance(name, str):
                continue
            name = name.lower() if key in ("email", "address") else name
            if name in seen:
                problems.append(
                    ((section, i, key), f"{kind} {name!r} is already used by {section}[{seen[name]}]; {fix}")
                )
            seen.setdefault(name, i)
    return problems


def _check_departments(names: _Names) -> None:
    for i, dep in names.departments:
        names.sla(("departments", i, "sla"), dep.get("sla"))
        for k, email in enumerate(dep.get("agents") or []):
            if isinstance(email, str) and EMAIL.match(email) and email.lower() not in names.agents:
                hint = did_you_mean(email.lower(), names.agents, ADDRESS_CUTOFF)
                names.problems.append(
                    (("departments", i, "agents", k), f"{email!r} is not a configured agent{hint}; "
                     f"add an [[agents]] table with email = {email!r}")
                )
        if dep.get("assign") in ("round-robin", "least-open") and not names.members.get(dep.get("name")):
            names.problems.append(
                (("departments", i, "assign"), f"assign = {dep['assign']!r} needs agents: "
                 "list them in agents = [...] or set assign = 'none'")
            )


def _check_mailbox_conditions(names: _Names, i: int, rule: dict[str, Any]) -> None:
    """`field = "mailbox"` compared with a name no [[mailboxes]] table has never matches: a typo."""
    known = {m.casefold() for m in names.mailboxes}
    for k, cond in _items(rule, "conditions"):
        if cond.get("field") != "mailbox":
            continue
        if str(cond.get("op", "")).removeprefix("not_") not in ("equals", "in"):
            continue
        value = cond.get("value")
        for name in value if isinstance(value, list) else [value]:
            if isinstance(name, str) and name.casefold() not in known:
                listed = ", ".join(names.mailboxes) or "none: add a [[mailboxes]] table"
                names.problems.append(
                    (("rules", i, "conditions", k, "value"),
                     f"unknown mailbox {name!r}{did_you_mean(name, names.mailboxes)}; known: {listed}")
                )


def _check_rule(names: _Names, i: int, rule: dict[str, Any]) -> None:
    _check_mailbox_conditions(names, i, rule)
    act: dict[str, Any] = rule["actions"] if isinstance(rule.get("actions"), dict) else {}
    names.department(("rules", i, "actions", "department"), act.get("department"))
    names.sla(("rules", i, "actions", "sla"), act.get("sla"))
    assign = act["assign"].strip().lower() if isinstance(act.get("assign"), str) else None
    if assign is not None and assign not in (*POLICIES, *names.agents):
        hint = did_you_mean(assign, [*POLICIES, *names.agents], ADDRESS_CUTOFF)
        names.problems.append(
            (("rules", i, "actions", "assign"), f"{act['assign']!r} is not a configured agent{hint}; "
             "use an [[agents]] email, 'round-robin' or 'least-open'")
        )
    target = act.get("department")
    if assign in ("round-robin", "least-open") and target in names.members and not names.members[target]:
        names.problems.append(
            (("rules", i, "actions", "assign"), f"assign = {assign!r} but department {target!r} "
             "has no agents; add agents to it or assign a named agent")
        )
    if rule.get("match") == "any" and not rule.get("conditions"):
        names.problems.append(
            (("rules", i, "match"), "match = 'any' with no conditions never matches; "
             "add conditions or remove match (no conditions with 'all' matches every message)")
        )
    if act.get("drop") is True and rule.get("applies_to", "new") != "new":
        names.problems.append(
            (("rules", i, "actions", "drop"), "drop only applies to new mail (a reply on a ticket is "
             "always kept): set applies_to = 'new' or remove drop")
        )
