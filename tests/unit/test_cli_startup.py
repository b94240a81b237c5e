"""`mailticket --help` and each command load only what they need (docs/operations.md has the figures)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest

from mailticket.cli.main import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_help_line_shown_before_loading_is_the_commands_own(name: str) -> None:
    module, attribute, line = COMMANDS[name]
    command = getattr(importlib.import_module(module), attribute)
    assert isinstance(command, click.Command)
    assert command.name == name
    assert line == (command.help or "").strip().splitlines()[0]


def test_help_imports_no_database_mail_or_scheduler_code() -> None:
    probe = (
        "import sys\n"
        "from mailticket.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('sqlalchemy', 'sqlmodel', 'alembic', 'pydantic', 'apscheduler',"
        " 'imapclient', 'aiosmtpd', 'mailparser', 'jinja2') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "ingest" in out and "tickets" in out


def test_an_unknown_command_is_a_usage_error() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["nonsense"])
    assert result.exit_code == 2 and "No such command 'nonsense'" in result.output
