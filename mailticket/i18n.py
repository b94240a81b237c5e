"""Languages of notices: which one a customer gets, how they are greeted, how dates read.

Pure (no I/O): the renderer says which template sets exist, this module chooses among them.
Babel supplies the locale data (month names, date patterns, time-zone names), so no format is
written here by hand; it is imported by the functions that use it, so storing a message whose
headers name no language never loads it.

Order of choice for a ticket, highest first: a rule's ``language`` action, the customer's
``Content-Language`` then ``Accept-Language`` when a template set exists for it, the
department's ``language``. Only the first two are stored on the ticket; a ticket without
one follows its department, also after it moves.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo

from mailticket.models import Decision, ParsedMessage

if TYPE_CHECKING:
    from babel import Locale

DEFAULT_LANGUAGE: Final = "en"

#: A language tag as config and rules write it: "de", "pt-br", "zh-hant". Lower case, "-".
TAG: Final = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,8}){0,2}")

_Q_VALUE: Final = re.compile(r"^\s*q\s*=\s*([01](?:\.\d{0,3})?)\s*$")
_MAX_HEADER: Final = 500
_MAX_TAGS: Final = 20


def normalise_tag(value: str) -> str | None:
    """``"pt_BR"`` -> ``"pt-br"``; None for anything that is not a plain language tag."""
    tag = value.strip().replace("_", "-").lower()
    return tag if TAG.fullmatch(tag) else None


def preferred(headers: Iterable[str]) -> list[str]:
    """The tags of ``Content-Language`` / ``Accept-Language`` values, most preferred first.

    q-values order the list (``de;q=0.5, fr`` -> fr, de); ``*``, ``q=0`` and malformed
    tags are skipped. Header text is the sender's: bounded in length and tag count.
    """
    weighted: list[tuple[float, int, str]] = []
    items = [item for value in headers for item in value[:_MAX_HEADER].split(",")[:_MAX_TAGS]]
    for position, item in enumerate(items):
        tag_text, _, params = item.partition(";")
        tag = normalise_tag(tag_text)
        match = _Q_VALUE.match(params) if params else None
        quality = float(match.group(1)) if match else (1.0 if not params else 0.0)
        if tag and quality > 0:
            weighted.append((-quality, position, tag))
    return list(dict.fromkeys(tag for _, _, tag in sorted(weighted)))


def negotiate(headers: Iterable[str], available: Iterable[str]) -> str | None:
    """The first of the customer's languages that has a template set (``de-at`` finds ``de``)."""
    from babel.core import negotiate_locale

    found = negotiate_locale(preferred(headers), list(available), sep="-")
    return found.lower() if found else None


def ticket_language(decision: Decision, parsed: ParsedMessage, available: Iterable[str]) -> str | None:
    """The language to store on a new ticket: the rule's, else the customer's when templates exist.

    None leaves the choice to the department (and follows the ticket if it moves).
    """
    if decision.language:
        return decision.language
    headers = [*parsed.header_all("Content-Language"), *parsed.header_all("Accept-Language")]
    return negotiate(headers, available) if headers else None


@lru_cache(maxsize=64)
def locale(language: str) -> Locale:
    """Babel's locale for a tag; English when Babel does not know it."""
    from babel import Locale, UnknownLocaleError

    try:
        return Locale.parse(language, sep="-")
    except (UnknownLocaleError, ValueError):
        return Locale.parse(DEFAULT_LANGUAGE)


def format_when(value: datetime | str, language: str, timezone: str) -> str:
    """A date and time as the language writes it, in ``timezone``, with the zone's short name.

    Stored contexts carry ISO strings; naive values are UTC (the database's convention).
    """
    from babel.dates import format_datetime as babel_datetime

    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    zone = ZoneInfo(timezone)
    where = locale(language)
    local = babel_datetime(when, "medium", tzinfo=zone, locale=where)
    # "medium" carries seconds in most locales; a notice does not need them.
    local = re.sub(r"(\d{1,2}:\d{2}):\d{2}", r"\1", local)
    return f"{local} {babel_datetime(when, 'z', tzinfo=zone, locale=where)}"


def format_size(size: int, language: str) -> str:
    """A file size as the language writes numbers: "2.5 MB", "2,5 MB", "820 KB"."""
    from babel.numbers import format_decimal

    if size >= 1024 * 1024:
        return f"{format_decimal(size / 1024 / 1024, '#,##0.0', locale=locale(language))} MB"
    return f"{format_decimal(max(1, round(size / 1024)), '#,##0', locale=locale(language))} KB"


_TITLES: Final = frozenset(
    [
        "mr",
        "mr.",
        "mrs",
        "mrs.",
        "ms",
        "ms.",
        "miss",
        "dr",
        "dr.",
        "prof",
        "prof.",
        "sir",
        "herr",
        "frau",
        "hr.",
        "fr.",
        "m.",
        "mme",
        "mme.",
        "mlle",
        "monsieur",
        "madame",
        "sr",
        "sr.",
        "sra",
        "sra.",
        "srta",
        "señor",
        "señora",
        "don",
        "doña",
        "ing",
        "ing.",
        "mag.",
        "dipl.-ing.",
    ]
)
_ORGANISATION: Final = frozenset(
    [
        "gmbh",
        "ag",
        "kg",
        "ug",
        "inc",
        "inc.",
        "ltd",
        "ltd.",
        "llc",
        "plc",
        "corp",
        "corp.",
        "co.",
        "s.a.",
        "sa",
        "sarl",
        "sas",
        "s.l.",
        "sl",
        "bv",
        "b.v.",
        "nv",
        "team",
        "support",
        "service",
        "services",
        "sales",
        "info",
        "billing",
        "admin",
        "noreply",
        "no-reply",
        "office",
        "helpdesk",
        "department",
        "abteilung",
        "équipe",
        "equipo",
    ]
)
_SURROUNDING: Final = re.compile(r"\([^)]*\)|\[[^\]]*\]|<[^>]*>")


def _is_cjk(text: str) -> bool:
    return any(unicodedata.name(ch, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL")) for ch in text)


def greeting_name(display_name: str) -> str:
    """The name to greet a customer by: the given name, or "" when there is none to use.

    "Jürgen Müller" -> "Jürgen"; "Müller, Jürgen" -> "Jürgen"; "Dr. Anna Schmidt" -> "Anna";
    "JÜRGEN MÜLLER" -> "Jürgen"; "ACME GmbH", "Support Team" or an address -> "". Names in
    Chinese, Japanese or Korean script put the family name first and are kept whole.
    """
    name = " ".join(_SURROUNDING.sub(" ", display_name).split()).strip("\"' ")
    if not name or "@" in name or len(name) > 100:
        return ""
    if _is_cjk(name):
        return name
    last, comma, first = name.partition(",")
    if comma and first.strip():
        name = f"{first.strip()} {last.strip()}"
    words = [w for w in name.split() if w.lower() not in _TITLES]
    if not words or any(w.lower() in _ORGANISATION for w in words):
        return ""
    given = words[0]
    if len(given.rstrip(".")) <= 1:  # "J. Müller": no given name to use
        return ""
    return given.capitalize() if given.isupper() else given
