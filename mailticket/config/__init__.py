"""The TOML config: one file, read once, validated into frozen models.

    load.py        file -> expanded dict -> Config (or one ConfigError listing every problem)
    schema.py      the models, one per section
    checks.py      cross-references between sections (unknown department, duplicate names, ...)
    messages.py    problems worded for the admin: where, what, the fix
    durations.py   '8h', '3d', '1d12h'
    oauth2.py      the `oauth2` table of a mailbox with auth = "oauth2"
"""

from mailticket import CONFIG_ENV
from mailticket.config.durations import parse_duration
from mailticket.config.load import load_config
from mailticket.config.oauth2 import OAuth2Config
from mailticket.config.schema import (
    PRIORITIES,
    ActionsConfig,
    AgentConfig,
    ConditionConfig,
    Config,
    DepartmentConfig,
    HealthConfig,
    IntakeConfig,
    MailboxConfig,
    RuleConfig,
    SecurityConfig,
    ServiceConfig,
    SlaConfig,
    SmtpConfig,
    TicketsConfig,
    listen_address,
)

__all__ = [
    "CONFIG_ENV",
    "PRIORITIES",
    "ActionsConfig",
    "AgentConfig",
    "ConditionConfig",
    "Config",
    "DepartmentConfig",
    "HealthConfig",
    "IntakeConfig",
    "MailboxConfig",
    "OAuth2Config",
    "RuleConfig",
    "SecurityConfig",
    "ServiceConfig",
    "SlaConfig",
    "SmtpConfig",
    "TicketsConfig",
    "listen_address",
    "load_config",
    "parse_duration",
]
