"""`mailticket check-config`: validate the config file and the templates it names."""

from __future__ import annotations

import sys

import click

from mailticket.cli.state import EX_CONFIG_INVALID, State, pass_state
from mailticket.errors import ConfigError
from mailticket.outbound.render import Renderer


@click.command("check-config")
@pass_state
def check_config(state: State) -> None:
    """Validate the config file (and templates): exit 0 valid, 2 invalid."""
    config = state.config()
    try:
        renderer = Renderer(config.service.templates_dir)
        renderer.check()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EX_CONFIG_INVALID)
    # Not errors: a language without a file uses the English one.
    for line in renderer.missing():
        click.echo(line)
    for dept in config.departments:
        if dept.language not in renderer.languages:
            click.echo(f"department {dept.name}: no templates for language {dept.language!r}, English used")
    click.echo(
        f"{config.source}: valid ({len(config.mailboxes)} mailboxes, {len(config.departments)} departments, "
        f"{len(config.agents)} agents, {len(config.rules)} rules)"
    )
