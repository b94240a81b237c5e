"""Render notices from jinja2 templates: `<kind>.subject.j2`, `<kind>.txt.j2`, `<kind>.html.j2`.

A `templates_dir` from the config is searched first, the shipped `templates/`
second, so an admin overrides only the files they want to change.

HTML templates autoescape, so customer text can never inject markup; the
subject is flattened to one line without control characters, so it can never
inject a header. `Renderer.check()` compiles and test-renders every template at
start-up with the variables `VARIABLES` documents: a typo or an unknown
variable is a ConfigError naming the file and the line, not a failed notice
at three in the morning.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from mailticket.config.messages import did_you_mean
from mailticket.errors import ConfigError

# The top-level templates/ folder, reached through the mailticket/templates symlink so
# that a built wheel carries the same files as a checkout.
DEFAULT_TEMPLATES = Path(__file__).parents[1] / "templates"
KINDS = (
    "ack", "alert", "reply", "note_alert", "resolution", "reopened", "overdue", "closed_reject",
    "command_error", "unverified_agent",
)
PARTS = ("subject", "txt", "html")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

_TICKET_SAMPLE: dict[str, Any] = {
    "ref": "ABCD-EFGH",
    "subject": "Cannot log in",
    "status": "open",
    "priority": "normal",
    "department": "general",
    "assignee": None,
    "requester": "carol@customer.example",
    "requester_name": "Carol",
}
_ENTRY_SAMPLE: dict[str, Any] = {"author": "carol@customer.example", "author_name": "Carol", "body": "Hello"}

# The variables every template sees, with a sample value each (the start-up check renders with them).
VARIABLES: dict[str, Any] = {
    "ticket": _TICKET_SAMPLE,
    "entry": _ENTRY_SAMPLE,
    "flags": [],
    "support_name": "Example Support",
    "support_address": "support@example.com",
    "recipient": "carol@customer.example",
    "for_agent": False,
}
# Extra variables of single kinds.
KIND_VARIABLES: dict[str, dict[str, Any]] = {
    "overdue": {"which": "first response", "due": "2026-11-23 17:00 UTC"},
    "command_error": {"problems": ["unknown command '#frobnicate'"], "known": ["#note", "#close"]},
    "unverified_agent": {"reason": "dkim=fail for example.com from mx.example.com", "token_days": 30},
}


def one_line(text: str) -> str:
    """Header-safe text: control characters (CR, LF, NUL, ...) and runs of spaces become one space."""
    return " ".join(_CONTROL.sub(" ", text).split())


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None


def _template_line(exc: BaseException) -> tuple[str | None, int | None]:
    """Where in a template a render error happened: jinja puts template frames in the traceback."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.endswith(".j2"):
            return frame.filename, frame.lineno
    return None, None


_UNDEFINED = re.compile(r"'(\w+)' is undefined|has no attribute '(\w+)'")


def _variable_hint(message: str, kind: str) -> str:
    """' (did you mean ...?)' for a misspelt variable or field of an undefined-variable error."""
    found = _UNDEFINED.search(message)
    if found is None:
        return ""
    if found.group(1):
        return did_you_mean(found.group(1), [*VARIABLES, *KIND_VARIABLES.get(kind, {})])
    return did_you_mean(found.group(2), [*_TICKET_SAMPLE, *_ENTRY_SAMPLE])


class Renderer:
    def __init__(self, templates_dir: Path | None = None) -> None:
        self.templates_dir = templates_dir
        loaders: list[jinja2.BaseLoader] = []
        if templates_dir is not None:
            loaders.append(jinja2.FileSystemLoader(str(templates_dir)))
        loaders.append(jinja2.FileSystemLoader(str(DEFAULT_TEMPLATES)))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            # Templates are checked once at start (`check`); an edit takes effect on the next start,
            # never half-checked in a running sender (and no stat() per notice).
            auto_reload=False,
        )

    def check(self) -> None:
        """Compile and test-render every template now, so a mistake stops the start, naming file and line."""
        problems: list[str] = []
        if self.templates_dir is not None and not self.templates_dir.is_dir():
            problems.append(f"templates_dir {self.templates_dir} is not a directory")
        expected = [f"{kind}.{part}.j2" for kind in KINDS for part in PARTS]
        for name in sorted(self.env.list_templates(extensions=["j2"])):
            # A near miss of a notice's name is a typo that would silently leave the default in
            # use; any other file may be a partial the templates include or extend.
            if name not in expected and (hint := did_you_mean(name, expected)):
                problems.append(f"template {name} is not one mailticket uses{hint}: name it "
                                f"<kind>.<{'|'.join(PARTS)}>.j2 with a kind of {', '.join(KINDS)}")
                continue
            try:
                self.env.get_template(name)
            except jinja2.TemplateSyntaxError as exc:
                problems.append(f"template {exc.filename or name}, line {exc.lineno}: {exc.message}")
        if not problems:
            for kind in KINDS:
                for part in PARTS:
                    template = self._template(kind, part)
                    if template is None:
                        problems.append(f"template {kind}.{part}.j2 is missing")
                        continue
                    try:
                        template.render({**VARIABLES, **KIND_VARIABLES.get(kind, {})})
                    except jinja2.TemplateError as exc:
                        filename, line = _template_line(exc)
                        where = f"{filename or template.filename}, line {line}" if line else template.filename
                        problems.append(f"template {where}: {exc}{_variable_hint(str(exc), kind)}")
        if problems:
            raise ConfigError("templates", problems)

    def _template(self, kind: str, part: str) -> jinja2.Template | None:
        try:
            return self.env.get_template(f"{kind}.{part}.j2")
        except jinja2.TemplateNotFound:
            return None

    def render(self, kind: str, context: dict[str, Any]) -> Rendered:
        subject = self.env.get_template(f"{kind}.subject.j2").render(context)
        text = self.env.get_template(f"{kind}.txt.j2").render(context)
        html_template = self._template(kind, "html")
        html = html_template.render(context) if html_template is not None else None
        return Rendered(one_line(subject), text, html)
