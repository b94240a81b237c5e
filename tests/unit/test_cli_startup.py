"""`mailticket --help` and each command load only what they need (docs/operations.md has the figures)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mailticket.cli.main import COMMANDS, main
from tests.daemonproc import DaemonProcess
from tests.factories import mail, write_config


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
    result = CliRunner().invoke(main, ["nonsense"])
    assert result.exit_code == 2 and "No such command 'nonsense'" in result.output


def test_ingest_of_a_plain_message_loads_no_template_dkim_babel_or_migration_code(tmp_path: Path) -> None:
    config = write_config(tmp_path / "mailticket.toml")
    probe = (
        "import sys\n"
        "from mailticket.cli import main\n"
        f"sys.stdin = open({str(tmp_path / 'plain.eml')!r})\n"
        f"try:\n    main(['--config', {str(config)!r}, 'ingest'])\n"
        "except SystemExit as exc:\n    print('EXIT', exc.code)\n"
        "unused = sorted(m for m in ('alembic', 'jinja2', 'babel', 'dkim', 'dns', 'apscheduler',"
        " 'imapclient', 'aiosmtpd', 'sqlalchemy.dialects.postgresql', 'mailticket.oauth.status',"
        " 'mailticket.intake.spool', 'mailticket.intake.workers')"
        " if m in sys.modules)\n"
        "print('UNUSED', unused)\n"
    )
    # The first run creates and migrates the database (Alembic); the second finds it current.
    for n in range(2):
        (tmp_path / "plain.eml").write_bytes(mail(subject=f"Printer {n} on fire"))
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
        assert "EXIT 0" in out and "stored on ticket" in out
    assert "UNUSED []" in out


def test_only_a_command_that_sends_checks_the_templates(tmp_path: Path) -> None:
    """A broken template stops `outbox flush` (it would render with it); `ingest` and `tickets`
    never render, so they store and read as before and the mail is not deferred over a template."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "ack.subject.j2").write_text("Re: {{ ticket.subject }")
    config = str(write_config(tmp_path / "mailticket.toml", service={"templates_dir": str(templates)}))
    runner = CliRunner()
    stored = runner.invoke(main, ["--config", config, "ingest"], input=mail(subject="Printer on fire"))
    assert stored.exit_code == 0, stored.output
    listed = runner.invoke(main, ["--config", config, "tickets", "list"])
    assert listed.exit_code == 0 and "Printer on fire" in listed.output
    flushed = runner.invoke(main, ["--config", config, "outbox", "flush"])
    assert flushed.exit_code == 2 and "ack.subject.j2, line 1" in flushed.output


# What a process that only hands a message on (`--detach`, the handoff client) must not load.
HEAVY_FOR_A_CLIENT = ("sqlalchemy", "sqlmodel", "pydantic", "mailparser", "email.parser", "html2text", "nh3",
                      "jinja2", "babel", "dkim", "aiosmtpd", "mailticket.config", "mailticket.process")


def ingest_probe(config: Path, message: Path, *flags: str) -> str:
    """A script that runs `ingest FLAGS` on `message` in-process, then prints its exit status
    and which of HEAVY_FOR_A_CLIENT it loaded."""
    return (
        "import sys\n"
        "from mailticket.cli import main\n"
        f"sys.stdin = open({str(message)!r})\n"
        f"try:\n    main(['--config', {str(config)!r}, 'ingest', *{flags!r}])\n"
        "except SystemExit as exc:\n    print('EXIT', exc.code)\n"
        f"print('HEAVY', sorted(m for m in {HEAVY_FOR_A_CLIENT!r} if m in sys.modules))\n"
    )


def test_ingest_detach_reads_only_the_config_files_toml(tmp_path: Path) -> None:
    """`--detach` keeps the message without the database, pydantic or a parser (the drainer loads
    them); the drain lock is held here, so no drainer starts."""
    from mailticket.intake.pipe import Incoming

    config = write_config(tmp_path / "mailticket.toml")
    (tmp_path / "plain.eml").write_bytes(mail(subject="Printer on fire"))
    probe = ingest_probe(config, tmp_path / "plain.eml", "--detach")
    incoming = Incoming(tmp_path / "data")
    with incoming.lock() as mine:
        assert mine
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "EXIT 0" in out and "kept as" in out
    assert "HEAVY []" in out
    assert len(incoming.names()) == 1




def test_ingest_with_a_daemon_running_hands_over_without_the_database_or_a_parser(tmp_path: Path) -> None:
    """Plain `ingest` gives the message to the daemon over its socket (intake/handoff.py): the
    client loads neither the database, nor pydantic, nor a parser, and prints the daemon's line."""
    config = write_config(tmp_path / "mailticket.toml")
    (tmp_path / "plain.eml").write_bytes(mail(subject="Printer on fire"))
    probe = ingest_probe(config, tmp_path / "plain.eml")
    with DaemonProcess(config) as daemon:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
        assert 'position="ingest.sock"' in daemon.log()
    assert "EXIT 0" in out and "stored on ticket" in out
    assert "HEAVY []" in out
