"""Thread stage: which ticket does this message belong to, if any?

Pure: the caller looks up the candidate tickets (by Message-ID and by subject
token) and this decides between them, and whether the sender may write on the
ticket as a participant (requester, CC, agent) or is a stranger whose mail is
held as an internal note.
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
    # Naming a ticket (its token, or a Message-ID it sent or received, which a quoted mail or a
    # forwarded notice shows anyone) proves nothing: only participants write on it as themselves.
    for found, how in ((by_message_id, ThreadHow.REFERENCES), (by_token, ThreadHow.TOKEN)):
        if found is not None:
            participant = (sender or "") in found.participants or kind in (
                MailKind.AGENT,
                MailKind.UNVERIFIED_AGENT,
            )
            return ThreadMatch(found, how, non_participant=not participant)
    return ThreadMatch(None, ThreadHow.NEW)
