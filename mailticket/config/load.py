"""Read the TOML file, expand ${VAR}, validate; every problem is one line of a ConfigError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mailticket.config.checks import cross_reference_problems
from mailticket.config.locate import key_lines, line_of
from mailticket.config.messages import location as _location
from mailticket.config.messages import problems_from, where
from mailticket.config.schema import Config
from mailticket.config_file import Problem, anchor, expand_env, locate, read
from mailticket.errors import ConfigError

_SQLITE = "sqlite:///"


def load_config(path: str | Path | None = None, *, text: str | None = None) -> Config:
    """Read (or take `text` as the file's content), expand, validate; ConfigError lists every problem."""
    location = locate(path)
    source, raw = read(location, text)
    problems: list[Problem] = []
    expanded = expand_env(raw, (), problems)
    # A disabled mailbox may name variables that are not set on this machine.
    disabled = {
        ("mailboxes", i) for i, m in enumerate(raw.get("mailboxes") or [])
        if isinstance(m, dict) and m.get("enabled") is False
    }
    problems = [p for p in problems if p[0][:2] not in disabled]
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        # Cross-references are checked on the file as read, so they are reported even when
        # some fields are wrong; the model's own check (location ()) would repeat them.
        errors = [e for e in exc.errors() if _location(e)]
        bad = [_location(e) for e in errors]
        problems += problems_from(Config, errors, raw)
        problems += [
            (loc, msg, loc) for loc, msg in cross_reference_problems(expanded)
            if not any(loc[: len(b)] == b for b in bad)
        ]
        raise _located(location, source, raw, problems) from None
    if problems:
        raise _located(location, source, raw, problems)
    return _anchored(config, location.parent).model_copy(update={"source": location})


def _anchored(config: Config, base: Path) -> Config:
    """Relative paths (data_dir, templates_dir, ca_file, a sqlite:/// URL) taken from the config
    file's folder (`config_file.anchor`), so an MTA pipe and cron find the same desk as the
    admin's shell."""

    def at(path: Path | None) -> Path | None:
        return None if path is None else anchor(base, path)

    service = config.service
    url = service.database_url
    if url is not None and url.startswith(_SQLITE) and url[len(_SQLITE):] not in ("", ":memory:"):
        url = _SQLITE + str(anchor(base, Path(url[len(_SQLITE):])))
    return config.model_copy(
        update={
            "service": service.model_copy(
                update={"data_dir": at(service.data_dir), "templates_dir": at(service.templates_dir),
                        "database_url": url}
            ),
            "smtp": config.smtp.model_copy(update={"ca_file": at(config.smtp.ca_file)}),
            "mailboxes": [m.model_copy(update={"ca_file": at(m.ca_file)}) for m in config.mailboxes],
        }
    )


def _located(location: Path, text: str, raw: dict[str, Any], problems: list[Problem]) -> ConfigError:
    """One ConfigError: each problem as `where: what`, with the line of the file it points at."""
    lines = key_lines(text)
    return ConfigError(
        str(location),
        [f"{where(place, raw) or 'top level'}: {msg}" for place, msg, _ in problems],
        [line_of(key, lines) for _, _, key in problems],
    )
