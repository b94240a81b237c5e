"""The config's models: frozen pydantic classes, one per TOML section.

Every mistake an admin can make is reported as one line naming the file, the
key (with the rule or section name where there is one) and the fix; all
problems are collected before giving up, so one run of `check-config` lists
them all (messages.py words them, checks.py finds the cross-references).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from mailticket.config.checks import DEFAULT_DEPARTMENTS, EMAIL, agent_departments, cross_reference_problems
from mailticket.config.durations import parse_duration
from mailticket.config.messages import did_you_mean, where
from mailticket.config.oauth2 import OAuth2Config
from mailticket.config_file import DEFAULT_DATA_DIR
from mailticket.i18n import DEFAULT_LANGUAGE, normalise_tag

if TYPE_CHECKING:
    import regex


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


def _check_email(value: str) -> str:
    if not EMAIL.match(value):
        raise ValueError(f"{value!r} is not an email address like name@example.com")
    return value.lower()


Duration = Annotated[str, AfterValidator(_check_duration)]
Email = Annotated[str, AfterValidator(_check_email)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceConfig(_Model):
    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str | None = None
    # "postgres": raw mail and attachments in the database (every host reads them); needs PostgreSQL
    blob_store: Literal["folder", "postgres"] = "folder"
    # Fetched mail waits in a table that every daemon on the database processes (intake/spool.py)
    spool: bool = False
    support_address: Email = "support@example.com"
    support_name: str = "Support"
    templates_dir: Path | None = None
    message_id_domain: str | None = None
    max_message_mb: float = Field(default=30, gt=0)
    workers: int = Field(default=0, ge=0)  # parser processes (intake/workers.py); 0 = one per core
    worker_memory_mb: int = Field(default=512, ge=16)  # address space a parser worker may add (RLIMIT_AS)
    worker_cpu_seconds: int = Field(default=30, ge=1)  # CPU one message may cost its worker (RLIMIT_CPU)
    metrics: str | None = None  # "host:port" of the daemon's HTTP /metrics and /healthz; off when unset
    # The daemon's LMTP socket data_dir/ingest.sock, to which plain `ingest` hands its message
    ingest_socket: bool = True

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: str | None) -> str | None:
        if value is not None:
            listen_address(value)
        return value

    @model_validator(mode="after")
    def _blob_store_needs_postgres(self) -> ServiceConfig:
        if self.blob_store == "postgres" and not self.db_url.startswith("postgresql"):
            raise ValueError("blob_store = 'postgres' keeps blobs in the database: set a postgresql:// "
                             "database_url, or blob_store = 'folder'")
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'mailticket.db'}"

    @property
    def id_domain(self) -> str:
        return self.message_id_domain or self.support_address.split("@", 1)[1]


Security = Literal["ssl", "starttls", "none"]
Auth = Literal["password", "oauth2"]


def _auth_problem(auth: Auth, password: SecretStr | None, oauth2: bool) -> str | None:
    """A password mailbox needs a password; an OAuth mailbox needs its oauth2 table and no password."""
    if auth == "oauth2":
        if password is not None:
            return "password is not used with auth = 'oauth2'; remove it"
        if not oauth2:
            return ("auth = 'oauth2' needs an oauth2 table, e.g. "
                    "oauth2 = { provider = 'microsoft', client_id = '...' }")
        return None
    if oauth2:
        return "an oauth2 table is only used with auth = 'oauth2': set auth = 'oauth2' or remove the table"
    if password is None:
        return "required key 'password' is missing; add it (or use auth = 'oauth2')"
    return None


class MailboxConfig(_Model):
    name: str
    enabled: bool = True
    host: str
    port: int = Field(default=993, gt=0, lt=65536)
    security: Security = "ssl"
    username: str
    auth: Auth = "password"
    password: SecretStr | None = None
    oauth2: OAuth2Config | None = None
    ca_file: Path | None = None
    folder: str = "INBOX"
    processed_folder: str | None = None
    quarantine_folder: str = "Quarantine"
    poll_seconds: int = Field(default=60, ge=1)
    idle: bool = False
    batch_size: int = Field(default=100, ge=1, le=1000)
    department: str | None = None

    @model_validator(mode="after")
    def _auth(self) -> MailboxConfig:
        problem = _auth_problem(self.auth, self.password, self.oauth2 is not None)
        if problem:
            raise ValueError(problem)
        return self


class SmtpConfig(_Model):
    transport: Literal["smtp", "file", "console"] = "smtp"
    host: str = "localhost"
    port: int = Field(default=587, gt=0, lt=65536)
    security: Security = "starttls"
    username: str | None = None  # with auth = "oauth2": default, the oauth2_mailbox's username
    password: SecretStr | None = None
    auth: Auth = "password"
    oauth2_mailbox: str | None = None  # the mailbox whose OAuth tokens SMTP logs in with
    ca_file: Path | None = None
    timeout_seconds: float = Field(default=30, gt=0)
    retry_base_seconds: float = Field(default=60, gt=0)
    retry_max_seconds: float = Field(default=3600, gt=0)
    max_attempts: int = Field(default=10, ge=1)
    batch_size: int = Field(default=100, ge=1)

    @model_validator(mode="after")
    def _auth(self) -> SmtpConfig:
        if self.auth == "oauth2" and self.password is not None:
            raise ValueError("password is not used with auth = 'oauth2'; remove it")
        if self.auth == "oauth2" and not self.oauth2_mailbox:
            raise ValueError("auth = 'oauth2' needs oauth2_mailbox = the name of a mailbox with "
                             "auth = 'oauth2'")
        return self


def listen_address(value: str) -> tuple[str, int]:
    """'127.0.0.1:9464' or '[::1]:9464' -> (host, port); anything else is refused with the fix."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"{value!r} is not a listen address: write host:port, e.g. '127.0.0.1:9464'"
        )
    return host, int(port)


class HealthConfig(_Model):
    """When `mailticket status` (and /healthz) call the desk unhealthy."""

    expect_daemon: bool = True  # false for cron-only set-ups (`fetch` / `outbox flush` from cron)
    heartbeat_max_age: Duration = "1m"
    notice_max_age: Duration = "15m"
    incoming_max_age: Duration = "5m"  # mail kept by `ingest --detach` and not stored yet


class IntakeConfig(_Model):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=2525, gt=0, lt=65536)
    protocol: Literal["smtp", "lmtp"] = "smtp"


class TicketsConfig(_Model):
    reopen_within_days: int = Field(default=30, ge=0)
    autoclose_after_days: int = Field(default=7, ge=0)
    max_attachment_mb: float = Field(default=25, gt=0)
    # Files sent with one notice, in total (an agent's reply, an alert with the customer's files);
    # the rest are named with their size.
    notice_attachments_mb: float = Field(default=10, ge=0)
    acknowledge: bool = True
    acks_per_sender_per_hour: int = Field(default=5, ge=0)
    auto_mail_per_recipient_per_day: int = Field(default=40, ge=0)
    auto_mail_per_ticket_per_hour: int = Field(default=10, ge=0)
    max_cc_per_ticket: int = Field(default=10, ge=0)
    # Loop brakes that hold whatever headers the other side sends (docs/outbound.md).
    customer_mail_per_ticket_per_hour: int = Field(default=20, ge=0)  # relayed agent replies too
    agent_repeat_minutes: int = Field(default=30, ge=0)  # an agent's same text again: a note
    alerts_per_sender_per_hour: int = Field(default=10, ge=0)  # new-ticket alerts; then one digest


# A rule regex's time on one field of one message: a well-written pattern takes microseconds on
# the 64 KiB it reads; a catastrophically backtracking one is cut off here (docs/rules.md).
RULE_REGEX_TIMEOUT_MS = 100


class SecurityConfig(_Model):
    trusted_authserv_ids: list[str] = []
    agent_auth: list[Literal["dkim", "dmarc", "spf"]] = ["dkim", "dmarc"]
    reply_token_secret: SecretStr | None = None
    reply_token_days: int = Field(default=30, ge=1)
    hops_after_border: int = Field(default=0, ge=0, le=10)  # parse.MAX_HOPS_AFTER_BORDER
    verify_dkim: bool = False
    rule_regex_timeout_ms: int = Field(default=RULE_REGEX_TIMEOUT_MS, ge=1, le=10_000)


def _zone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {value!r}: use an IANA name like 'Europe/Berlin'") from None
    return value


def _language_tag(value: str) -> str:
    tag = normalise_tag(value)
    if tag is None:
        raise ValueError(f"bad language {value!r}: write a language tag like 'de' or 'pt-br'")
    return tag


class DepartmentConfig(_Model):
    name: str
    address: Email | None = None
    agents: list[Email] = []
    sla: str | None = None
    on_closed_reply: Literal["reopen", "new", "reject"] = "reopen"
    assign: Literal["none", "round-robin", "least-open"] = "none"
    escalation_contact: Email | None = None
    # Notices' language (templates/<language>/) when neither a rule nor the customer's mail
    # chose one; agents' notices always use it. Dates in notices are in `timezone` (else the
    # department's SLA plan's, else UTC).
    language: str = DEFAULT_LANGUAGE
    timezone: str | None = None

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        return _language_tag(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        return value if value is None else _zone(value)


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
        return _zone(value)


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
    _pattern: regex.Pattern[str] | None = PrivateAttr(default=None)

    @property
    def pattern(self) -> regex.Pattern[str] | None:
        """The compiled regex of a regex / not_regex condition: compiled once, at load."""
        return self._pattern

    @field_validator("field")
    @classmethod
    def _field(cls, value: str) -> str:
        if value in RULE_FIELDS_FIXED or (value.startswith("header:") and len(value) > 7):
            return value
        raise ValueError(
            f"unknown field {value!r}{did_you_mean(value, RULE_FIELDS_FIXED)}: "
            f"use one of {', '.join(RULE_FIELDS_FIXED)} or 'header:<Name>'"
        )

    @field_validator("op")
    @classmethod
    def _op(cls, value: str) -> str:
        if value not in RULE_OPS:
            raise ValueError(
                f"unknown op {value!r}{did_you_mean(value, RULE_OPS)}: "
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
            import regex  # the maintained `regex` module: its searches take a timeout (rules/engine.py)

            try:
                self._pattern = regex.compile(str(self.value))
            except regex.error as exc:
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
    language: str | None = None  # the ticket's notices' language from now on

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        return value if value is None else _language_tag(value)

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
    health: HealthConfig = HealthConfig()
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

    def timezone(self, department: str) -> str:
        """The time zone notices of a department write dates in."""
        dept = next((d for d in self.departments if d.name == department), None)
        if dept is None:
            return "UTC"
        plan = self.sla_plan(dept.sla)
        return dept.timezone or (plan.timezone if plan else "UTC")

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
        joins = agent_departments(data)
        if not joins:
            return data
        departments = data.get("departments", DEFAULT_DEPARTMENTS)
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
        problems = [f"{where(loc, data)}: {msg}" for loc, msg in cross_reference_problems(data)]
        if problems:
            raise ValueError("\n".join(problems))
        return self


