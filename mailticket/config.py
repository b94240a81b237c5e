"""Load the TOML config into frozen, validated models.

Every mistake an admin can make is reported as one line naming the file, the
key (with the rule or section name where there is one) and the fix; all
problems are collected before giving up, so one run of `check-config` lists
them all.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
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
    batch_size: int = Field(default=50, ge=1)


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
        if value is not None and not re.fullmatch(r"\d{2}:\d{2}-\d{2}:\d{2}", value):
            raise ValueError(f"bad business_hours {value!r}: write it as '09:00-17:00'")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}: use an IANA name like 'Europe/Berlin'")
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


class ConditionConfig(_Model):
    field: str
    op: str = "contains"
    value: str | bool | list[str]

    @field_validator("field")
    @classmethod
    def _field(cls, value: str) -> str:
        if value in RULE_FIELDS_FIXED or (value.startswith("header:") and len(value) > 7):
            return value
        raise ValueError(
            f"unknown field {value!r}: use one of {', '.join(RULE_FIELDS_FIXED)} or 'header:<Name>'"
        )

    @field_validator("op")
    @classmethod
    def _op(cls, value: str) -> str:
        if value not in RULE_OPS:
            raise ValueError(f"unknown op {value!r}: use one of {', '.join(BASE_OPS)} (or not_<op>)")
        return value

    @model_validator(mode="after")
    def _value_shape(self) -> ConditionConfig:
        base = self.op.removeprefix("not_")
        if base == "in" and not isinstance(self.value, list):
            raise ValueError("op 'in' needs a list value, e.g. value = ['a@x.com', 'b@x.com']")
        if base != "in" and isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a single value; use op 'in' for a list")
        if base == "regex":
            try:
                re.compile(str(self.value))
            except re.error as exc:
                raise ValueError(f"bad regex {self.value!r}: {exc}") from None
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


class RuleConfig(_Model):
    name: str
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

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        problems = _cross_reference_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _cross_reference_problems(cfg: Config) -> list[str]:
    """Mistakes no single section can see: names that point nowhere, duplicates."""
    problems: list[str] = []
    departments = {d.name for d in cfg.departments}
    plans = {s.name for s in cfg.sla}
    agents = {a.email for a in cfg.agents}
    dept_list = ", ".join(sorted(departments))

    def dup(kind: str, names: list[str]) -> None:
        seen: set[str] = set()
        for name in names:
            if name in seen:
                problems.append(f"{kind} {name!r} is defined twice: give each a unique name")
            seen.add(name)

    dup("department", [d.name for d in cfg.departments])
    dup("sla", [s.name for s in cfg.sla])
    dup("mailbox", [m.name for m in cfg.mailboxes])
    dup("rule", [r.name for r in cfg.rules])
    dup("agent", [a.email for a in cfg.agents])
    if not cfg.departments:
        problems.append("departments: define at least one [[departments]] table")
    for m in cfg.mailboxes:
        if m.department and m.department not in departments:
            problems.append(
                f"mailboxes ({m.name!r}).department: unknown department {m.department!r}; known: {dept_list}"
            )
    for d in cfg.departments:
        if d.sla and d.sla not in plans:
            problems.append(f"departments ({d.name!r}).sla: unknown sla {d.sla!r}; add a [[sla]] table")
        for email in d.agents:
            if email not in agents:
                problems.append(
                    f"departments ({d.name!r}).agents: {email!r} is not a configured agent; "
                    "add it under [[agents]]"
                )
    for a in cfg.agents:
        for dep in a.departments:
            if dep not in departments:
                problems.append(
                    f"agents ({a.email!r}).departments: unknown department {dep!r}; known: {dept_list}"
                )
    for r in cfg.rules:
        act = r.actions
        if act.department and act.department not in departments:
            problems.append(
                f"rules ({r.name!r}).actions.department: unknown department {act.department!r}; "
                f"known: {dept_list}"
            )
        if act.sla and act.sla not in plans:
            problems.append(f"rules ({r.name!r}).actions.sla: unknown sla {act.sla!r}")
        if act.assign and act.assign not in ("round-robin", "least-open") and act.assign not in agents:
            problems.append(
                f"rules ({r.name!r}).actions.assign: {act.assign!r} is not a configured agent; "
                "use an [[agents]] email, 'round-robin' or 'least-open'"
            )
        if not r.conditions and r.match == "any":
            problems.append(f"rules ({r.name!r}): match = 'any' with no conditions never matches")
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
                out += f" ({node.get('name') or node.get('email')!r})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


def _problems_from(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        where = _where(loc, raw)
        kind = err["type"]
        msg = err["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden":
            msg = f"unknown key {str(loc[-1])!r}: check the spelling against config.example.toml"
            where = _where(loc[:-1], raw) or "top level"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind == "literal_error":
            msg = f"{msg} (got {err.get('input')!r})"
        for line in msg.split("\n"):
            problems.append(f"{where}: {line}" if where else line)
    return problems


def load_config(path: str | Path | None = None) -> Config:
    """Read, expand and validate; raise ConfigError listing every problem."""
    location = Path(path or os.environ.get(CONFIG_ENV) or "mailticket.toml")
    try:
        raw = tomllib.loads(location.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(location), ["file not found (pass --config or set MAILTICKET_CONFIG)"])
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
        raise ConfigError(str(location), problems + _problems_from(exc, raw)) from None
    if problems:
        raise ConfigError(str(location), problems)
    return config.model_copy(update={"source": location})
