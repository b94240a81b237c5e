"""Render notices from jinja2 templates: `<kind>.subject.j2`, `<kind>.txt.j2`, `<kind>.html.j2`.

One folder per language (`templates/en/`, `templates/de/`, ...); shared pieces (the HTML
layout `_base.html.j2`) sit at the top. A `templates_dir` from the config is searched
first, the shipped `templates/` second, so an admin overrides only the files they want to
change; its top-level files (the layout before languages) override English. A file missing
in a language falls back to the English one, and `missing()` lists such files for
`check-config`. Dates go through the `when` filter: the notice's language (Babel) and the
department's time zone.

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
from typing import TYPE_CHECKING, Any

from markupsafe import Markup, escape

from mailticket.config.messages import did_you_mean
from mailticket.errors import ConfigError
from mailticket.i18n import DEFAULT_LANGUAGE, TAG, format_size, format_when, greeting_name

if TYPE_CHECKING:
    import jinja2

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
    "language": "en",
    "timezone": "UTC",
    "greeting_name": "Carol",
    "created_at": "2026-11-23T16:00:00+00:00",
}
# Extra variables of single kinds.
KIND_VARIABLES: dict[str, dict[str, Any]] = {
    "overdue": {"which": "first response", "due": "2026-11-23T17:00:00+00:00"},
    "command_error": {"problems": ["unknown command '#frobnicate'"], "known": ["#note", "#close"]},
    "unverified_agent": {"reason": "dkim=fail for example.com from mx.example.com", "token_days": 30},
    "reopened": {"reason": "customer replied"},
    "alert": {"digest": {"count": 11, "requester": "flood@spam.example"}, "attachments": [
        {"name": "invoice.pdf", "content_type": "application/pdf", "size": 48_213, "sha256": "0" * 64,
         "content_id": None, "attached": True},
        {"name": "video.mp4", "content_type": "video/mp4", "size": 52_428_800, "sha256": None,
         "content_id": None, "attached": False},
    ]},
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


def _when(context: jinja2.runtime.Context, value: str | None) -> str:
    """A stored ISO time in the notice's language and the department's time zone.

    Anything else (rows queued before times were stored as ISO) is shown as it is.
    """
    try:
        return format_when(value, context["language"], context["timezone"]) if value else ""
    except ValueError:
        return str(value)


def _filesize(context: jinja2.runtime.Context, value: int) -> str:
    return format_size(int(value), context["language"])


def _paragraphs(text: str | None) -> Markup:
    """Plain text as HTML paragraphs (escaped; blank lines part them, line breaks kept).

    Mail clients lay out paragraphs; a <pre> block does not wrap on a phone.
    """
    blocks = [b for b in (text or "").replace("\r\n", "\n").split("\n\n") if b.strip()]
    style = "margin:0 0 12px 0"
    lines = (Markup("<br>\n").join(escape(line) for line in b.split("\n")) for b in blocks)
    return Markup("\n").join(Markup('<p style="{}">{}</p>').format(style, p) for p in lines)


def _folders(root: Path) -> set[str]:
    if not root.is_dir():
        return set()
    return {p.name for p in root.iterdir() if p.is_dir() and TAG.fullmatch(p.name) and any(p.glob("*.j2"))}


class Renderer:
    def __init__(self, templates_dir: Path | None = None) -> None:
        self.templates_dir = templates_dir
        custom = _folders(templates_dir) if templates_dir else set()
        self.languages = frozenset({DEFAULT_LANGUAGE} | _folders(DEFAULT_TEMPLATES) | custom)
        self._envs: dict[str, jinja2.Environment] = {}

    def _roots(self, language: str) -> list[Path]:
        """Where a language's templates are looked for, first match wins."""
        custom = [self.templates_dir] if self.templates_dir is not None else []
        english = [c / DEFAULT_LANGUAGE for c in custom] + custom + [DEFAULT_TEMPLATES / DEFAULT_LANGUAGE]
        if language == DEFAULT_LANGUAGE:
            return [*english, DEFAULT_TEMPLATES]
        own = [c / language for c in custom] + [DEFAULT_TEMPLATES / language]
        return [*own, *english, DEFAULT_TEMPLATES]

    def env(self, language: str) -> jinja2.Environment:
        """The (cached) environment of a language; an unknown language gets English's."""
        language = language if language in self.languages else DEFAULT_LANGUAGE
        if language not in self._envs:
            import jinja2  # only a process that renders pays for it (an MTA's `ingest` never does)

            env = jinja2.Environment(
                loader=jinja2.FileSystemLoader([str(p) for p in self._roots(language)]),
                autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
                undefined=jinja2.StrictUndefined,
                keep_trailing_newline=True,
                # Templates are checked once at start (`check`); an edit takes effect on the next start,
                # never half-checked in a running sender (and no stat() per notice).
                auto_reload=False,
            )
            env.filters["when"] = jinja2.pass_context(_when)
            env.filters["paragraphs"] = _paragraphs
            env.filters["filesize"] = jinja2.pass_context(_filesize)
            self._envs[language] = env
        return self._envs[language]

    def missing(self) -> list[str]:
        """Template files a language lacks (English is used for them), for `check-config`."""
        lines = []
        for language in sorted(self.languages - {DEFAULT_LANGUAGE}):
            own = [DEFAULT_TEMPLATES / language]
            if self.templates_dir is not None:
                own.append(self.templates_dir / language)
            absent = [
                f"{kind}.{part}.j2"
                for kind in KINDS
                for part in PARTS
                if not any((root / f"{kind}.{part}.j2").is_file() for root in own)
            ]
            if absent:
                names = ", ".join(absent)
                lines.append(f"templates {language}/: {len(absent)} missing, English used: {names}")
        return lines

    def check(self) -> None:
        """Compile and test-render every template now, so a mistake stops the start, naming file and line."""
        problems: list[str] = []
        if self.templates_dir is not None and not self.templates_dir.is_dir():
            problems.append(f"templates_dir {self.templates_dir} is not a directory")
            raise ConfigError("templates", problems)
        for language in sorted(self.languages):
            problems += self._check_language(language)
        if problems:
            raise ConfigError("templates", list(dict.fromkeys(problems)))

    def _check_language(self, language: str) -> list[str]:
        import jinja2

        problems: list[str] = []
        env = self.env(language)
        expected = [f"{kind}.{part}.j2" for kind in KINDS for part in PARTS]
        # Names with a folder are other languages' files (each language's own check reads them).
        for name in sorted(n for n in env.list_templates(extensions=["j2"]) if "/" not in n):
            # A near miss of a notice's name is a typo that would silently leave the default in
            # use; any other file may be a partial the templates include or extend (`_name`).
            partial = name.startswith("_")
            if name not in expected and not partial and (hint := did_you_mean(name, expected)):
                problems.append(f"template {name} is not one mailticket uses{hint}: name it "
                                f"<kind>.<{'|'.join(PARTS)}>.j2 with a kind of {', '.join(KINDS)}")
                continue
            try:
                env.get_template(name)
            except jinja2.TemplateSyntaxError as exc:
                problems.append(f"template {exc.filename or name}, line {exc.lineno}: {exc.message}")
        if problems:
            return problems
        for kind in KINDS:
            for part in PARTS:
                template = self._template(env, kind, part)
                if template is None:
                    problems.append(f"template {kind}.{part}.j2 is missing")
                    continue
                try:
                    template.render({**VARIABLES, **KIND_VARIABLES.get(kind, {}), "language": language})
                except jinja2.TemplateError as exc:
                    filename, line = _template_line(exc)
                    where = f"{filename or template.filename}, line {line}" if line else template.filename
                    problems.append(f"template {where}: {exc}{_variable_hint(str(exc), kind)}")
        return problems

    @staticmethod
    def _template(env: jinja2.Environment, kind: str, part: str) -> jinja2.Template | None:
        import jinja2

        try:
            return env.get_template(f"{kind}.{part}.j2")
        except jinja2.TemplateNotFound:
            return None

    def render(
        self, kind: str, context: dict[str, Any], language: str = DEFAULT_LANGUAGE, timezone: str = "UTC"
    ) -> Rendered:
        """One notice in `language` (English for a language without templates), times in `timezone`."""
        env = self.env(language)
        ticket = context.get("ticket") or {}
        context = {
            "greeting_name": greeting_name(ticket.get("requester_name") or ""),
            "created_at": None,
            **context,
            "language": language if language in self.languages else DEFAULT_LANGUAGE,
            "timezone": timezone,
        }
        subject = env.get_template(f"{kind}.subject.j2").render(context)
        text = env.get_template(f"{kind}.txt.j2").render(context)
        html_template = self._template(env, kind, "html")
        html = html_template.render(context) if html_template is not None else None
        return Rendered(one_line(subject), text, html)
