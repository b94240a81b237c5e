"""Text that came in a mail, made safe where it leaves: a terminal, a file name.

Mail decides these characters, so any of them may be an attack on what shows them: C0 and C1
controls are terminal commands (ESC and CSI clear the screen, recolour, retitle the window,
write hyperlinks; CR overwrites a line), and the Unicode bidi controls reorder what the reader
sees (`invoice\u202egpj.exe` shows as `invoiceexe.jpg`). `printable` escapes them visibly for
human output; `safe_filename` drops them and makes the rest a plain file name.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from pathvalidate import sanitize_filename

# C0 but TAB and LF, DEL, C1, and the bidi marks, embeddings, overrides and isolates.
_UNSAFE: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_LINE_BREAKS: Final = re.compile("[\t\n\u2028\u2029]")
MAX_FILENAME_CHARS: Final = 200
_MAX_EXTENSION_CHARS: Final = 16
FALLBACK_FILENAME: Final = "attachment"


def _escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, multiline: bool = True) -> str:
    """`text` with every control and bidi character shown as an escape (`\\x1b`, `\\u202e`).

    Single-line output (a table cell, a log field) also turns tabs and line breaks into spaces.
    """
    if not multiline:
        text = _LINE_BREAKS.sub(" ", text)
    return _UNSAFE.sub(_escape, text)


def json_safe(text: str) -> str:
    """Dumped JSON with every control and bidi character left in it as a `\\uXXXX` escape.

    Only string contents can hold them, where the escape means the same character.
    """
    return _UNSAFE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def safe_filename(name: str | None) -> str | None:
    """A name fit to store, show and attach: no path, no controls, no reserved name, short.

    Only the last path component is kept (a sender's `../../etc/cron.d/x` is `x`), control and
    format characters (bidi overrides, zero-width) are dropped, pathvalidate removes what any
    file system refuses and suffixes Windows device names (`CON` -> `CON_`), and a long name
    keeps its extension. None or a name with nothing left becomes None or "attachment".
    """
    if name is None:
        return None
    base = re.split(r"[/\\]", name[-4 * MAX_FILENAME_CHARS :])[-1]
    base = "".join(c for c in base if unicodedata.category(c) not in ("Cc", "Cf"))
    base = " ".join(base.split()).strip(" .")
    if len(base) > MAX_FILENAME_CHARS:
        stem, dot, extension = base.rpartition(".")
        if not dot or len(extension) > _MAX_EXTENSION_CHARS:
            stem, extension = base, ""
        keep = MAX_FILENAME_CHARS - len(extension) - (1 if extension else 0)
        base = stem[:keep].rstrip(" .") + (f".{extension}" if extension else "")
    base = sanitize_filename(base, platform="universal", replacement_text="_").strip(" .")
    return base or FALLBACK_FILENAME
