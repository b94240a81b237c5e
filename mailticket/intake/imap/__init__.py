"""IMAP intake: poll a folder or IDLE on it; each message through the pipeline, then acknowledged.

    connection.py  TLS, login, reconnect with back-off
    cursor.py      UIDVALIDITY/UID cursor and per-UID attempt counts (committed state)
    poller.py      one pass: fetch groups -> pipeline -> acknowledge -> move the cursor
    idle.py        the daemon's IDLE loop around the poller
"""

from mailticket.intake.imap.connection import RetryPolicy, connect
from mailticket.intake.imap.idle import idle_mailbox, wait_for_new
from mailticket.intake.imap.poller import PollResult, poll_mailbox

__all__ = ["PollResult", "RetryPolicy", "connect", "idle_mailbox", "poll_mailbox", "wait_for_new"]
