"""Load the TOML config into frozen, validated models.

Every mistake an admin can make is reported as one line naming the file, the
key (with the rule or section name where there is one) and the fix; all
problems are collected before giving up, so one run of `check-config` lists
them all.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from mailticket.errors import ConfigError

CONFIG_ENV = "MAILTICKET_CONFIG"

_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


def parse_duration(text: str) -> timedelta:
    """'8h', '3d', '1d12h', '90m' -> timedelta; anything else is refused with the fix."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(
            f"bad duration {text!r}: write a number and a unit s, m, h, d or w, e.g. '8h' or '1d12h'"
        )
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


def _check_email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError(f"{value!r} is not an email address like name@example.com")
    return value.lower()


Duration = Annotated[str, AfterValidator(_check_duration)]
Email = Annotated[str, AfterValidator(_check_email)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceConfig(_Model):
    data_dir: Path = Path("./data")
    database_url: str | None = None
    support_address: Email = "support@example.com"
    support_name: str = "Support"
    templates_dir: Path | None = None
    message_id_domain: str | None = None
    max_message_mb: float = Field(default=30, gt=0)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'mailticket.db'}"

    @property
    def id_domain(self) -> str:
        return self.message_id_domain or self.support_address.split("@", 1)[1]


Security = Literal["ssl", "starttls", "none"]


class MailboxConfig(_Model):
    name: str
    enabled: bool = True
    host: str
    port: int = Field(default=993, gt=0, lt=65536)
    security: Security = "ssl"
    username: str
    password: SecretStr
    ca_file: Path | None = None
    folder: str = "INBOX"
    processed_folder: str | None = None
    quarantine_folder: str = "Quarantine"
    poll_seconds: int = Field(default=60, ge=1)
    idle: bool = False
    batch_size: int = Field(default=100, ge=1, le=1000)
    department: str | None = None


class SmtpConfig(_Model):
    transport: Literal["smtp", "file", "console"] = "smtp"
    host: str = "localhost"
    port: int = Field(default=587, gt=0, lt=65536)
    security: Security = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None
    timeout_seconds: float = Field(default=30, gt=0)
    retry_base_seconds: float = Field(default=60, gt=0)
    retry_max_seconds: float = Field(default=3600, gt=0)
    max_attempts: int = Field(default=10, ge=1)
    batch_size: int = Field(default=100, ge=1)


class IntakeConfig(_Model):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=2525, gt=0, lt=65536)
    protocol: Literal["smtp", "lmtp"] = "smtp"


class TicketsConfig(_Model):
    reopen_within_days: int = Field(default=30, ge=0)
    autoclose_after_days: int = Field(default=7, ge=0)
    max_attachment_mb: float = Field(default=25, gt=0)
    acknowledge: bool = True
    acks_per_sender_per_hour: int = Field(default=5, ge=0)
    auto_mail_per_recipient_per_day: int = Field(default=40, ge=0)
    auto_mail_per_ticket_per_hour: int = Field(default=10, ge=0)


class SecurityConfig(_Model):
    trusted_authserv_ids: list[str] = []
    agent_auth: list[Literal["dkim", "dmarc", "spf"]] = ["dkim", "dmarc"]
    reply_token_secret: SecretStr | None = None


class DepartmentConfig(_Model):
    name: str
    address: Email | None = None
    agents: list[Email] = []
    sla: str | None = None
    on_closed_reply: Literal["reopen", "new", "reject"] = "reopen"
    assign: Literal["none", "round-robin", "least-open"] = "none"
    escalation_contact: Email | None = None


class SlaConfig(_Model):
    name: str
    first_response: Duration
    resolution: Duration
    business_hours: str | None = None  # "09:00-17:00"
    business_days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = [
        "mon",
        "tue",
        "wed",
        "thu",
        "fri",
    ]
    timezone: str = "UTC"

    @field_validator("business_hours")
    @classmethod
    def _hours(cls, value: str | None) -> str | None:
        if value is None:
            return value
        clock = r"([01]\d|2[0-3]):[0-5]\d"
        if not re.fullmatch(f"{clock}-{clock}", value) or value[:5] >= value[6:]:
            raise ValueError(f"bad business_hours {value!r}: write it as '09:00-17:00' (opening first)")
        return value

    @field_validator("business_days")
    @classmethod
    def _days(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("business_days is empty: list at least one day, e.g. ['mon', 'tue']")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}: use an IANA name like 'Europe/Berlin'") from None
        return value


class AgentConfig(_Model):
    email: Email
    name: str | None = None
    departments: list[str] = []


RULE_FIELDS_FIXED = (
    "from",
    "from_domain",
    "to",
    "cc",
    "recipient",
    "subject",
    "body",
    "mailbox",
    "has_attachment",
    "attachment_name",
)
BASE_OPS = ("equals", "contains", "starts_with", "ends_with", "regex", "in")
RULE_OPS = BASE_OPS + tuple(f"not_{op}" for op in BASE_OPS)
PRIORITIES = ("low", "normal", "high", "urgent")
Priority = Literal["low", "normal", "high", "urgent"]


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for a near miss, else ''."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


class ConditionConfig(_Model):
    field: str
    op: str = "contains"
    value: str | bool | list[str]
    _pattern: re.Pattern[str] | None = PrivateAttr(default=None)

    @property
    def pattern(self) -> re.Pattern[str] | None:
        """The compiled regex of a regex / not_regex condition: compiled once, at load."""
        return self._pattern

    @field_validator("field")
    @classmethod
    def _field(cls, value: str) -> str:
        if value in RULE_FIELDS_FIXED or (value.startswith("header:") and len(value) > 7):
            return value
        raise ValueError(
            f"unknown field {value!r}{_did_you_mean(value, RULE_FIELDS_FIXED)}: "
            f"use one of {', '.join(RULE_FIELDS_FIXED)} or 'header:<Name>'"
        )

    @field_validator("op")
    @classmethod
    def _op(cls, value: str) -> str:
        if value not in RULE_OPS:
            raise ValueError(
                f"unknown op {value!r}{_did_you_mean(value, RULE_OPS)}: "
                f"use one of {', '.join(BASE_OPS)}, or not_<op> for the negation"
            )
        return value

    @field_validator("value", mode="before")
    @classmethod
    def _value_type(cls, value: Any) -> Any:
        ok = isinstance(value, str | bool) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        )
        if not ok:
            raise ValueError(
                f"value {value!r}: write text in quotes (e.g. value = '{value}'), true/false for "
                "has_attachment, or a list of texts for op 'in'"
            )
        return value

    @model_validator(mode="after")
    def _value_shape(self) -> ConditionConfig:
        base = self.op.removeprefix("not_")
        if self.field == "has_attachment":
            if not isinstance(self.value, bool) or base != "equals":
                raise ValueError(
                    "has_attachment takes op 'equals' (or 'not_equals') and value = true or false"
                )
            return self
        if isinstance(self.value, bool):
            raise ValueError(
                f"field {self.field!r} needs a text value, not {str(self.value).lower()}: "
                f"quote it, value = '{str(self.value).lower()}'"
            )
        if base == "in" and not isinstance(self.value, list):
            raise ValueError("op 'in' needs a list value, e.g. value = ['a@x.com', 'b@x.com']")
        if base == "in" and not self.value:
            raise ValueError("op 'in' needs at least one value in its list")
        if base != "in" and isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a single value; use op 'in' for a list")
        if base == "regex":
            try:
                self._pattern = re.compile(str(self.value))
            except re.error as exc:
                raise ValueError(
                    f"bad regex '{self.value}': {exc}; fix the pattern (to match a literal '(' write '\\(')"
                ) from None
        return self


class ActionsConfig(_Model):
    department: str | None = None
    priority: Priority | None = None
    assign: str | None = None  # an agent's email, "round-robin" or "least-open"
    tags: list[str] = []
    status: Literal["open", "pending", "resolved", "closed"] | None = None
    sla: str | None = None
    acknowledge: bool | None = None
    drop: bool = False

    @field_validator("assign")
    @classmethod
    def _assign(cls, value: str | None) -> str | None:
        return value.strip().lower() if value else value


class RuleConfig(_Model):
    name: str = Field(min_length=1)
    match: Literal["all", "any"] = "all"
    conditions: list[ConditionConfig] = []
    actions: ActionsConfig = ActionsConfig()
    stop: bool = False
    applies_to: Literal["new", "followups", "all"] = "new"


class Config(_Model):
    service: ServiceConfig = ServiceConfig()
    mailboxes: list[MailboxConfig] = []
    smtp: SmtpConfig = SmtpConfig(transport="file")
    intake: IntakeConfig = IntakeConfig()
    tickets: TicketsConfig = TicketsConfig()
    security: SecurityConfig = SecurityConfig()
    departments: list[DepartmentConfig] = [DepartmentConfig(name="general")]
    sla: list[SlaConfig] = []
    agents: list[AgentConfig] = []
    rules: list[RuleConfig] = []
    source: Path | None = Field(default=None, exclude=True)

    def department(self, name: str) -> DepartmentConfig:
        return next(d for d in self.departments if d.name == name)

    def sla_plan(self, name: str | None) -> SlaConfig | None:
        return next((s for s in self.sla if s.name == name), None)

    def is_agent(self, email: str) -> bool:
        return any(a.email == email.lower() for a in self.agents)

    @property
    def own_addresses(self) -> set[str]:
        """Addresses mailticket sends from or receives at: never auto-mailed, never Cc'd."""
        found = {self.service.support_address}
        found |= {d.address for d in self.departments if d.address}
        found |= {m.username.lower() for m in self.mailboxes if "@" in m.username}
        return found

    @property
    def default_department(self) -> str:
        return self.departments[0].name

    @model_validator(mode="before")
    @classmethod
    def _agents_join_departments(cls, data: Any) -> Any:
        """An agent's `departments` list puts it among those departments' agents."""
        if not isinstance(data, dict) or not isinstance(data.get("agents"), list):
            return data
        joins = _agent_departments(data)
        if not joins:
            return data
        departments = data.get("departments", _DEFAULT_DEPARTMENTS)
        if not isinstance(departments, list):
            return data
        merged = []
        for dep in departments:
            if isinstance(dep, dict) and dep.get("name") in joins and isinstance(dep.get("agents", []), list):
                listed = dep.get("agents", [])
                have = {str(a).lower() for a in listed}
                dep = {**dep, "agents": [*listed, *(e for e in joins[dep["name"]] if e not in have)]}
            merged.append(dep)
        return {**data, "departments": merged}

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        data = self.model_dump()
        problems = [f"{_where(loc, data)}: {msg}" for loc, msg in _cross_reference_problems(data)]
        if problems:
            raise ValueError("\n".join(problems))
        return self


_DEFAULT_DEPARTMENTS = [{"name": "general"}]
Loc = tuple[int | str, ...]


def _items(data: dict[str, Any], section: str) -> list[tuple[int, dict[str, Any]]]:
    value = data.get(section)
    return [(i, v) for i, v in enumerate(value) if isinstance(v, dict)] if isinstance(value, list) else []


def _agent_departments(data: dict[str, Any]) -> dict[str, list[str]]:
    """Department name -> emails of the [[agents]] that list it under `departments`."""
    joins: dict[str, list[str]] = {}
    for _, agent in _items(data, "agents"):
        email, deps = agent.get("email"), agent.get("departments")
        if isinstance(email, str) and _EMAIL.match(email) and isinstance(deps, list):
            for dep in deps:
                if isinstance(dep, str):
                    joins.setdefault(dep, []).append(email.lower())
    return joins


def _cross_reference_problems(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """Mistakes no single section can see: names that point nowhere, duplicates, contradictions.

    Works on plain dicts (the TOML as read, or a dumped Config) and skips whatever
    is malformed, so check-config reports these beside the per-field errors in one run.
    """
    problems: list[tuple[Loc, str]] = []
    departments = _items(data, "departments") if "departments" in data else list(
        enumerate(_DEFAULT_DEPARTMENTS)
    )
    dept_names = [d["name"] for _, d in departments if isinstance(d.get("name"), str)]
    plans = [s["name"] for _, s in _items(data, "sla") if isinstance(s.get("name"), str)]
    agents = {a["email"].lower() for _, a in _items(data, "agents") if isinstance(a.get("email"), str)}
    dept_list = ", ".join(sorted(dept_names)) or "none"
    plan_list = ", ".join(sorted(plans)) or "none yet: add an [[sla]] table"
    joins = _agent_departments(data)
    members = {
        d["name"]: {str(a).lower() for a in d.get("agents") or [] if isinstance(a, str)}
        | set(joins.get(d["name"], []))
        for _, d in departments
        if isinstance(d.get("name"), str)
    }

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
    if isinstance(data.get("departments"), list) and not data["departments"]:
        problems.append(
            (("departments",), "no department defined: add a [[departments]] table (the first is the "
             "fallback)")
        )

    def department_ref(loc: Loc, name: Any) -> None:
        if isinstance(name, str) and name not in dept_names:
            problems.append((loc, f"unknown department {name!r}; known: {dept_list}"))

    def sla_ref(loc: Loc, name: Any) -> None:
        if isinstance(name, str) and name not in plans:
            problems.append((loc, f"unknown sla {name!r}; known: {plan_list}"))

    for i, box in _items(data, "mailboxes"):
        department_ref(("mailboxes", i, "department"), box.get("department"))
    for i, dep in departments:
        sla_ref(("departments", i, "sla"), dep.get("sla"))
        for k, email in enumerate(dep.get("agents") or []):
            if isinstance(email, str) and _EMAIL.match(email) and email.lower() not in agents:
                problems.append(
                    (("departments", i, "agents", k), f"{email!r} is not a configured agent; "
                     f"add an [[agents]] table with email = {email!r}")
                )
        if dep.get("assign") in ("round-robin", "least-open") and not members.get(dep.get("name")):
            problems.append(
                (("departments", i, "assign"), f"assign = {dep['assign']!r} needs agents: "
                 "list them in agents = [...] or set assign = 'none'")
            )
    for i, agent in _items(data, "agents"):
        for k, dep in enumerate(agent.get("departments") or []):
            department_ref(("agents", i, "departments", k), dep)
    for i, rule in _items(data, "rules"):
        act: dict[str, Any] = rule["actions"] if isinstance(rule.get("actions"), dict) else {}
        department_ref(("rules", i, "actions", "department"), act.get("department"))
        sla_ref(("rules", i, "actions", "sla"), act.get("sla"))
        assign = act["assign"].strip().lower() if isinstance(act.get("assign"), str) else None
        if assign is not None and assign not in ("round-robin", "least-open", *agents):
            problems.append(
                (("rules", i, "actions", "assign"), f"{act['assign']!r} is not a configured agent; "
                 "use an [[agents]] email, 'round-robin' or 'least-open'")
            )
        target = act.get("department")
        if assign in ("round-robin", "least-open") and target in members and not members[target]:
            problems.append(
                (("rules", i, "actions", "assign"), f"assign = {assign!r} but department {target!r} "
                 "has no agents; add agents to it or assign a named agent")
            )
        if rule.get("match") == "any" and not rule.get("conditions"):
            problems.append(
                (("rules", i, "match"), "match = 'any' with no conditions never matches; "
                 "add conditions or remove match (no conditions with 'all' matches every message)")
            )
        if act.get("drop") is True and rule.get("applies_to", "new") != "new":
            problems.append(
                (("rules", i, "actions", "drop"), "drop only applies to new mail (a reply on a ticket is "
                 "always kept): set applies_to = 'new' or remove drop")
            )
    return problems


def _expand_env(node: Any, path: str, problems: list[str]) -> Any:
    """Replace ${VAR} in every string; a missing variable is a problem, not an empty string."""
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else k, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                problems.append(
                    f"{path}: environment variable {name} is not set (export {name}=... "
                    "before starting mailticket)"
                )
                return ""
            return os.environ[name]

        return _ENV_REF.sub(sub, node)
    return node


def _where(loc: tuple[int | str, ...], raw: dict[str, Any]) -> str:
    """('rules', 2, 'actions', 'x') -> "rules[2] ('Name').actions.x": the admin's vocabulary."""
    out = ""
    node: Any = raw
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and ("name" in node or "email" in node):
                out += f" ({node.get('email') or node.get('name')!r})"  # an agent's name is only display
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The config model a location points into: where to look up the keys it allows."""
    model: type[BaseModel] | None = Config
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _inner_model(field.annotation) if field else None
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for arg in get_args(annotation) if (m := _inner_model(arg))), None)


def _unknown_key(loc: Loc) -> str:
    key = str(loc[-1])
    model = _model_at(loc[:-1])
    known = [k for k, f in model.model_fields.items() if not f.exclude] if model else []
    hint = _did_you_mean(key, known)
    if hint:
        return f"unknown key {key!r}{hint}"
    return f"unknown key {key!r}: remove it; known keys here: {', '.join(known)}"


def _location(err: Any) -> Loc:
    return tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))


def _problems_from(errors: list[Any], raw: dict[str, Any]) -> list[str]:
    problems = []
    for err in errors:
        loc = _location(err)
        where = _where(loc, raw)
        kind = err["type"]
        msg = err["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden":
            msg = _unknown_key(loc)
            where = _where(loc[:-1], raw) or "top level"
        elif kind == "missing":
            msg = f"required key {str(loc[-1])!r} is missing; add it"
            where = _where(loc[:-1], raw) or "top level"
        elif kind == "literal_error":
            msg = f"{msg} (got {err.get('input')!r})"
        for line in msg.split("\n"):
            problems.append(f"{where}: {line}" if where else line)
    return problems


def load_config(path: str | Path | None = None, *, text: str | None = None) -> Config:
    """Read (or take `text` as the file's content), expand, validate; ConfigError lists every problem."""
    location = Path(path or os.environ.get(CONFIG_ENV) or "mailticket.toml")
    try:
        raw = tomllib.loads(text if text is not None else location.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            str(location), ["file not found (pass --config or set MAILTICKET_CONFIG)"]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(location), [f"not valid TOML: {exc}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(location), [f"cannot read: {exc}"]) from None
    problems: list[str] = []
    expanded = _expand_env(raw, "", problems)
    # A disabled mailbox may name variables that are not set on this machine.
    disabled = [
        f"mailboxes[{i}]." for i, m in enumerate(raw.get("mailboxes") or [])
        if isinstance(m, dict) and m.get("enabled") is False
    ]
    problems = [p for p in problems if not p.startswith(tuple(disabled))] if disabled else problems
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        # Cross-references are checked on the file as read, so they are reported even when
        # some fields are wrong; the model's own check (location ()) would repeat them.
        errors = [e for e in exc.errors() if _location(e)]
        bad = [_location(e) for e in errors]
        cross = [
            f"{_where(loc, raw)}: {msg}"
            for loc, msg in _cross_reference_problems(expanded)
            if not any(loc[: len(b)] == b for b in bad)
        ]
        raise ConfigError(str(location), problems + _problems_from(errors, raw) + cross) from None
    if problems:
        raise ConfigError(str(location), problems)
    return config.model_copy(update={"source": location})
