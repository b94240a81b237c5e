"""Render notices from jinja2 templates: `<kind>.subject.j2`, `<kind>.txt.j2`, `<kind>.html.j2`.

HTML templates autoescape, so customer text can never inject markup; the
subject is flattened to one line so it can never inject a header.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from mailticket.errors import ConfigError

DEFAULT_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
KINDS = ("ack", "alert", "reply", "note_alert", "resolution", "reopened", "overdue")


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None


class Renderer:
    def __init__(self, templates_dir: Path | None = None) -> None:
        loaders: list[jinja2.BaseLoader] = []
        if templates_dir is not None:
            loaders.append(jinja2.FileSystemLoader(str(templates_dir)))
        loaders.append(jinja2.FileSystemLoader(str(DEFAULT_TEMPLATES)))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
        )

    def check(self) -> None:
        """Compile every template now, so a typo is a start-up error naming the file and line."""
        problems = []
        for name in sorted(self.env.list_templates(extensions=["j2"])):
            try:
                self.env.get_template(name)
            except jinja2.TemplateSyntaxError as exc:
                problems.append(f"template {exc.filename or name}, line {exc.lineno}: {exc.message}")
        if problems:
            raise ConfigError("templates", problems)

    def render(self, kind: str, context: dict[str, Any]) -> Rendered:
        subject = self.env.get_template(f"{kind}.subject.j2").render(context)
        text = self.env.get_template(f"{kind}.txt.j2").render(context)
        try:
            html_template = self.env.get_template(f"{kind}.html.j2")
        except jinja2.TemplateNotFound:
            html = None
        else:
            html = html_template.render(context)
        return Rendered(" ".join(subject.split()), text, html)
