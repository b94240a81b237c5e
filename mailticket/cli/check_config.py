"""`mailticket check-config`: validate the config file and the templates it names."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

import click

from mailticket.cli.state import EX_CONFIG_INVALID, State, pass_state
from mailticket.config import RuleConfig
from mailticket.errors import ConfigError
from mailticket.outbound.render import Renderer


def backtracking(rules: Sequence[RuleConfig], timeout_ms: int) -> list[str]:
    """Rule regexes dlint's static check finds catastrophic (nested repetition such as `(a+)+`).

    Warnings, not errors: every search is bounded by `rule_regex_timeout_ms` anyway, but such a
    condition then never holds on the text that makes it backtrack. dlint reads `re` syntax; a
    pattern only the `regex` module reads (`\\p{L}`) is not judged. It misses overlapping
    alternatives (`(a|aa)+`), which the timeout still bounds.
    """
    from dlint.redos.detect import catastrophic

    lines = []
    for i, rule in enumerate(rules):
        for j, cond in enumerate(rule.conditions):
            if not cond.op.endswith("regex"):
                continue
            try:
                found = catastrophic(str(cond.value))
            except re.error:
                continue
            if found:
                lines.append(
                    f"rules[{i}] ({rule.name!r}).conditions[{j}]: regex '{cond.value}' can backtrack "
                    f"catastrophically (nested repetition): on such text a search gives up after "
                    f"{timeout_ms} ms and the condition does not hold; write it without a repeated group "
                    "that itself repeats"
                )
    return lines


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
    for line in backtracking(config.rules, config.security.rule_regex_timeout_ms):
        click.echo(line)
    click.echo(
        f"{config.source}: valid ({len(config.mailboxes)} mailboxes, {len(config.departments)} departments, "
        f"{len(config.agents)} agents, {len(config.rules)} rules)"
    )
