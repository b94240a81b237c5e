"""Thread stage: which ticket does this message belong to, if any?

Pure: the caller looks up the candidate tickets (by Message-ID and by subject
token) and this decides between them.
"""

from __future__ import annotations

from mailticket.models import MailKind, ThreadHow, ThreadMatch, TicketView


def thread(
    kind: MailKind,
    sender: str | None,
    *,
    by_message_id: TicketView | None,
    by_token: TicketView | None,
    by_bounce: TicketView | None = None,
) -> ThreadMatch:
    if kind is MailKind.BOUNCE:
        found = by_bounce or by_message_id
        return ThreadMatch(found, ThreadHow.BOUNCE if found else ThreadHow.NEW)
    if by_message_id is not None:
        # Knowing a Message-ID the ticket sent or received is proof of participation.
        return ThreadMatch(by_message_id, ThreadHow.REFERENCES)
    if by_token is not None:
        participant = (sender or "") in by_token.participants or kind in (
            MailKind.AGENT,
            MailKind.UNVERIFIED_AGENT,
        )
        return ThreadMatch(by_token, ThreadHow.TOKEN, non_participant=not participant)
    return ThreadMatch(None, ThreadHow.NEW)
