"""Where quoted history starts, in the languages of the major mail clients.

``email_reply_parser`` knows English only. This module finds, line by line, the first place
below which everything is history, so ``reply.visible_reply`` can cut there before the English
parser runs. Four kinds of places, all language-independent in shape:

* the reply marker every notice carries (``##- ... -##``, whatever language it is written in):
  everything from it down is removed, quoted or not;
* a separator line ("-----Original Message-----", "---------- Forwarded message ---------",
  their translations) or a forwarded-header block (a From line, then Sent/Date/To/Subject lines
  within a few lines, in the client's language: Outlook, Gmail, Apple Mail, Thunderbird; a
  dated line just above the From line, "Message du : 12/12/2016 13:20", belongs to it);
* a device line ("Sent from my iPhone", "Gesendet von Outlook für Android<https://aka.ms/..>")
  below written text: mobile clients put it at the end of what was typed and the history,
  often unquoted, below it;
* an attribution line ("On ... wrote:", "Am ... schrieb ...:", "Le ... a écrit :", Gmail's
  "пн, 15 янв. 2025 г. в 17:03, Name <a@b>:", "... 写道：") over up to three lines, when what
  follows is only quotation, or only unquoted text (clients that quote without ``>``). When the
  writer answered inline (a paragraph after quoted lines), nothing is cut: the English parser
  keeps the quote the answer refers to. A wrapped quote line left unquoted between quoted
  ones, and a quoted mail's footer below "-- ", are not answers.

Every pattern is matched against one line, or at most three joined lines of bounded length, so
the work is linear in the body. The phrases were collected from the clients' own output; the
expectation sets in tests/reply_i18n/ (written here, and public/ from other parsers' test
suites) hold an example of each.
"""

from __future__ import annotations

import re
from typing import Final

#: The reply marker: any text between ``##-`` and ``-##`` on one line, quoted or not.
MARKER: Final = re.compile(r"^[>\s]*##-\s.{1,200}\s-##\s*$")

_QUOTED: Final = re.compile(r"^\s*>")
_SIG_DASHES: Final = re.compile(r"^--\s*$")
#: A quoted line at least this long may have been wrapped by the client.
_WRAPPED_WIDTH: Final = 50
_MAX_LINE: Final = 300

_VERBS: Final = (
    r"wrote|schrieb|a\s+écrit|escribió|ha\s+scritto|schreef|escreveu|skrev|kirjoitti|"
    r"napisał\(a\)|napisała?|написал\(а\)|написала?|写道|寫道|のメール|のメッセージ|さんは書きました|書きました|"
    r"ha\s+escrit|작성"
)
#: A line that ends an attribution: the verb and a colon, or (Gmail in Russian, Japanese and
#: Polish without a verb) a date with digits and an address in angle brackets, then a colon.
_ATTRIBUTION: Final = re.compile(
    rf"(?:(?:^|[\s>)(,]|\d)(?:{_VERBS})\s*[:：]|^\D{{0,40}}\d[^<>]{{0,160}}<[^<>\s@]+@[^<>\s]+>\)?\s*[:：])\s*$",
    re.IGNORECASE,
)
#: The verb before the name ("Am ... schrieb Support:", "15.01.2025 17:03, Support пишет:").
#: Counted only on a line with a date, see ``_attribution_cut``.
_VERB_FIRST: Final = re.compile(
    r"\b(?:schrieb|skrev|schreef|geschreven|pisze|пишет|написал\(а\)|написала?|napisał\(a\)|napsal\(a\)|"
    r"escribió|escreveu|wrote|écrit|scritto|kirjoitti)\b[^:：]{0,160}[:：]\s*$",
    re.IGNORECASE,
)

#: "On ... Name <a@b> wrote" without the colon (crisp's fixtures): counted only with a date and an
#: address on the line, see ``_attribution_end``.
_NO_COLON: Final = re.compile(rf"(?:^|\s)(?:{_VERBS})\s*$", re.IGNORECASE)
_ADDRESS: Final = re.compile(r"<[^<>\s@]+@[^<>\s]+>")
#: Outlook renders a linked address as "a@b<mailto:a@b>"; the link is dropped before matching.
_MAILTO: Final = re.compile(r"<mailto:[^<>]{0,200}>", re.IGNORECASE)

_SEPARATOR_PHRASES: Final = (
    r"original message|forwarded message|ursprüngliche nachricht|original-nachricht|"
    r"weitergeleitete nachricht|message d'origine|message transféré|mensaje original|"
    r"mensaje reenviado|messaggio originale|messaggio inoltrato|oorspronkelijk bericht|"
    r"doorgestuurd bericht|mensagem original|mensagem encaminhada|ursprungligt meddelande|"
    r"vidarebefordrat meddelande|oryginalna wiadomość|wiadomość oryginalna|przekazana wiadomość|"
    r"исходное сообщение|пересылаемое сообщение|переадресованное сообщение|原始邮件|原始郵件|"
    r"转发邮件|轉寄郵件|元のメッセージ|転送メッセージ|オリジナル メッセージ"
)
#: "-----Original Message-----" and its translations, and Apple Mail's "Begin forwarded message:".
_SEPARATOR: Final = re.compile(
    rf"^[>\s]*(?:[-—_=]{{2,}}\s*(?:{_SEPARATOR_PHRASES})\s*[-—_=]{{2,}}"
    r"|(?:begin forwarded message|anfang der weitergeleiteten nachricht|début du message réexpédié"
    r"|inicio del mensaje reenviado|inizio messaggio inoltrato|begin doorgestuurd bericht"
    r"|início da mensagem reencaminhada|vidarebefordrat brev|początek przekazywanej wiadomości"
    r"|начало переадресованного сообщения|転送されたメッセージ|转发的邮件)\s*[:：])\s*$",
    re.IGNORECASE,
)

_FROM_KEYS: Final = (
    r"from|von|de|da|van|från|fra|od|от|差出人|发件人|發件人|寄件者|寄件人|expéditeur|remitente|mittente|"
    r"afzender|avsändare|nadawca|отправитель"
)
_OTHER_KEYS: Final = (
    r"sent|date|to|subject|cc|sendt|dato|til|emne|kopi|gesendet|datum|an|betreff|envoyé|à|objet|enviado(?:\s+el|\s+em)?|"
    r"enviada\s+em|fecha|para|asunto|assunto|inviato|data|a|oggetto|verzonden|aan|onderwerp|skickat|"
    r"till|ämne|wysłano|wysłane|do|temat|dw|kopia|отправлено|дата|кому|тема|копия|送信日時|日時|宛先|"
    r"件名|日付|发送时间|发送日期|时间|日期|收件人|主题|抄送|寄件日期|傳送時間|收件者|主旨|副本"
)
_HEADER_KEY: Final = r"^[>\s*]*(?:{keys})\s*[*]*\s*[:：]"
_FROM_LINE: Final = re.compile(_HEADER_KEY.format(keys=_FROM_KEYS), re.IGNORECASE)
_OTHER_LINE: Final = re.compile(_HEADER_KEY.format(keys=_OTHER_KEYS) + r"\s*\S", re.IGNORECASE)

#: A header block's From line is followed by another header line within this many lines.
_HEADER_REACH: Final = 4

_DEVICE: Final = r"[^\s,;:!?]+(?:\s+[^\s,;:!?]+){0,4}"
#: "Sent from my iPhone", "Get Outlook for Android" and their translations, as a whole line.
_SENT_FROM: Final = re.compile(
    r"^(?:"
    + "|".join(
        p.replace("DEVICE", _DEVICE)
        for p in (
            r"sent (?:from|via|with|using) (?:my|outlook|mail|yahoo|gmail|aol|proton|superhuman|"
            r"samsung|bluemail|spark|blackberry|iphone|ipad|android)\b(?:\s+DEVICE)?",
            r"get outlook for DEVICE",
            r"von meinem DEVICE gesendet",
            r"gesendet (?:von|mit|vom|über|aus) DEVICE",
            r"outlook für DEVICE (?:beziehen|herunterladen)",
            r"envoyé (?:de|depuis|à partir de|avec) DEVICE",
            r"(?:obtenir|télécharger) outlook pour DEVICE",
            r"enviado (?:desde|con|do|pelo|via|a partir do) DEVICE",
            r"(?:obtener|descargar|obter|baixar|obtenha|baixe) (?:o )?outlook (?:para|pro) DEVICE",
            r"inviato (?:da|dal|con) DEVICE",
            r"scarica outlook per DEVICE",
            r"(?:verzonden|verstuurd) (?:vanaf|met|via|van) DEVICE",
            r"outlook voor DEVICE (?:downloaden|ophalen)",
            r"skickat (?:från|via|med) DEVICE",
            r"skaffa outlook för DEVICE",
            r"wysłane (?:z|ze|przez) DEVICE",
            r"wysłano (?:z|ze|przez) DEVICE",
            r"pobierz (?:aplikację )?outlook dla DEVICE",
            r"отправлено (?:с|из|через) DEVICE",
            r"получите? outlook для DEVICE",
            r"\S{1,30}\s?から送信",
            r"\S{1,30}\s?outlook\s?を入手",
            r"发自我的\s?\S{1,30}",
            r"从我的\s?\S{1,30}\s?发送",
            r"從我的\s?\S{1,30}\s?傳送",
            r"获取\s?\S{0,20}\s?outlook\s?\S{0,20}",
        )
    )
    + r")\.?(?:\s*<https?://[^<>\s]{1,200}>)?$",
    re.IGNORECASE,
)
#: Lines that only rule a signature off: "-- ", underscores, em dashes (Chinese clients).
_RULE: Final = re.compile(r"^\s*(?:--\s*|[_—－=]{8,}|-{8,})\s*$")
_WIDE_RULE: Final = re.compile(r"^\s*[—－＿]{8,}\s*$")
#: How far above the end an em-dash rule may start a signature.
_SIGNATURE_LINES: Final = 7


def _is_quoted(line: str) -> bool:
    return _QUOTED.match(line) is not None


_DIGIT: Final = re.compile(r"\d")


def _has_date(text: str) -> bool:
    """Two digits or more: a date or a time. A search that stops at the second digit: counting
    every character's isdigit() was a tenth of the parse stage (1.64 -> 1.48 ms a message on
    benchmarks/ingest.py's mail, docs/benchmarks.md)."""
    first = _DIGIT.search(text)
    return first is not None and _DIGIT.search(text, first.end()) is not None


def _wrapped_quote_line(lines: list[str], index: int) -> bool:
    """A long quoted line the client wrapped without quoting its continuation (Gmail, Outlook):
    a line wedged between quoted ones, right after a long one, going on in lower case. A short
    answer typed between two quoted lines ("> Does it work?" / "Yes." / "> And ...") is not."""
    if not 0 < index < len(lines) - 1:
        return False
    above, line, below = lines[index - 1], lines[index].strip(), lines[index + 1]
    return (
        _is_quoted(above)
        and _is_quoted(below)
        and len(above.lstrip("> ")) >= _WRAPPED_WIDTH
        and line[:1].islower()
    )


def _inline_answer(rest: list[str]) -> bool:
    """True when unquoted text follows quoted lines: the writer answered inside the quote.

    Wrapped quote lines do not count, nor anything below a "-- " delimiter (the quoted mail's
    signature and footer, which some clients leave unquoted)."""
    seen_quote = False
    for index, line in enumerate(rest):
        if _is_quoted(line):
            seen_quote = True
        elif _SIG_DASHES.match(line):
            return False
        elif seen_quote and line.strip() and not _wrapped_quote_line(rest, index):
            return True
    return False


def _attribution_end(lines: list[str], index: int) -> int | None:
    """The index after an attribution that starts at ``index`` (one to three lines), or None."""
    joined = ""
    for end in range(index, min(index + 3, len(lines))):
        line = lines[end].strip()
        if not line or len(line) > _MAX_LINE or (end > index and _is_quoted(lines[end])):
            return None
        # Gmail wraps right after the "<" of the address: join without a space there.
        joined = f"{joined}{'' if joined.endswith('<') else ' '}{line}" if joined else line
        if _is_attribution(_MAILTO.sub("", joined)):
            return end + 1
    return None


def _is_attribution(text: str) -> bool:
    if _ATTRIBUTION.search(text):
        return True
    dated = _has_date(text)
    return dated and (
        _VERB_FIRST.search(text) is not None
        or (_NO_COLON.search(text) is not None and _ADDRESS.search(text) is not None)
    )


def _attribution_cut(lines: list[str], index: int) -> bool:
    """An attribution at ``index`` whose following lines are all history."""
    if _is_quoted(lines[index]):
        return False
    end = _attribution_end(lines, index)
    if end is None:
        return False
    rest = lines[end:]
    if _inline_answer(rest):
        return False
    quoted = any(_is_quoted(line) for line in rest)
    # An unquoted "Bob wrote:" could be the writer's own sentence; a date or an address
    # (or a quotation below) makes it an attribution.
    return quoted or _has_date(lines[index]) or "@" in lines[index]


def _header_block(lines: list[str], index: int) -> bool:
    if _FROM_LINE.match(lines[index]) is None:
        return False
    reach = lines[index + 1 : index + 1 + _HEADER_REACH]
    return any(_OTHER_LINE.match(line) for line in reach)


def _header_block_top(lines: list[str], index: int) -> int:
    """A header block may open with a dated line above its From line, in the same paragraph
    ("Message du : 12/12/2016 13:20" in French webmail, "Date: ..." first): the block starts there."""
    top = index
    while top > index - _DATE_LINES_ABOVE and top > 0:
        above = lines[top - 1]
        if not (_HEADERISH.match(above) and _has_date(above)):
            break
        top -= 1
    return top


def _device_line(line: str) -> bool:
    """A "Sent from my ..." line, quoted or not: what follows it is the client's, not the writer's."""
    text = line.strip().lstrip("> ")
    return len(text) <= _DEVICE_LINE_MAX and _SENT_FROM.match(text) is not None


def _history_line(lines: list[str], index: int) -> int | None:
    """Where history starts if it starts at line ``index`` (a line at or above it), else None."""
    line = lines[index]
    if _SEPARATOR.match(line) or _device_line(line) or _attribution_cut(lines, index):
        return index
    if _header_block(lines, index):
        return _header_block_top(lines, index)
    return None


_HEADERISH: Final = re.compile(r"^\s*[*]*[^\s:：][^:：]{0,30}[:：]\s*\S")
#: At most this many lines directly above the marker are taken for the client's own header.
_CLIENT_HEADER_LINES: Final = 6
#: Dated header lines above a From line that still belong to its block.
_DATE_LINES_ABOVE: Final = 2
#: A device line is short; a longer line that starts the same way is a sentence.
_DEVICE_LINE_MAX: Final = 120


def _client_header_start(lines: list[str], marker: int) -> int:
    """Where an unknown client's attribution or header block directly above the marker starts.

    The marker is the first line of every notice, so the paragraph right above it, when every
    line of it looks like ``Key: value`` or it ends in a colon, is what the writer's client put
    there (in a language the tables above do not know), not the writer's text.
    """
    start = marker
    while start > 0 and (not lines[start - 1].strip() or _RULE.match(lines[start - 1])):
        start -= 1
    top = start
    while top > 0 and lines[top - 1].strip() and marker - top < _CLIENT_HEADER_LINES:
        top -= 1
    block = lines[top:start]
    own_paragraph = bool(block) and (top == 0 or not lines[top - 1].strip())
    if own_paragraph and (
        all(_HEADERISH.match(line) for line in block) or block[-1].rstrip().endswith((":", "："))
    ):
        return top
    return marker


def history_start(text: str) -> int | None:
    """The offset in ``text`` where quoted history starts, or None when there is none.

    The marker always counts. The other places count only below some written text: a body
    that starts with a header block is a forward with nothing added, and is kept whole.
    """
    lines = text.split("\n")
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    first_written: int | None = None
    for index, line in enumerate(lines):
        if MARKER.match(line):
            return offsets[_client_header_start(lines, index)]
        if first_written is not None:
            top = _history_line(lines, index)
            if top is not None and top > first_written:
                return offsets[top]
        if first_written is None and line.strip():
            first_written = index
    return None


def strip_device_signature(text: str) -> str:
    """Drop a trailing "Sent from my ..." line (any language) and a rule line above it."""
    lines = text.rstrip().split("\n")
    if lines and _device_line(lines[-1]):
        lines.pop()
        while lines and (not lines[-1].strip() or _RULE.match(lines[-1])):
            lines.pop()
    return "\n".join(lines)


def strip_trailing_rules(text: str) -> str:
    """Drop rule lines left at the end of a cut reply, and a short block below an em-dash rule.

    Chinese clients (Foxmail, NetEase) set the signature off with a line of em dashes, which
    the English parser does not know; underscores and "-- " it handles itself.
    """
    lines = text.rstrip().split("\n")
    tail = len(lines) - _SIGNATURE_LINES
    for index in range(len(lines) - 1, max(tail, 0), -1):
        if _WIDE_RULE.match(lines[index]):
            del lines[index:]
            break
    while lines and (not lines[-1].strip() or _RULE.match(lines[-1])):
        lines.pop()
    return "\n".join(lines)
