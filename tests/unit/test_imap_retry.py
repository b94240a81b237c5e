"""The reconnect budget of one IMAP pass: spent by a server that stays away, renewed by progress."""

from __future__ import annotations

import pytest

from mailticket.config import MailboxConfig
from mailticket.intake.imap.connection import RetryPolicy, retrying

POLICY = RetryPolicy(attempts=3, first_wait=0.001, max_wait=0.002)
MAILBOX = MailboxConfig(name="support", host="127.0.0.1", username="u", password="p")


def run(drops: int, progress_between: bool) -> int:
    """A pass whose connection drops `drops` times; returns the tries it took."""
    done = [0]
    tries = 0
    for attempt in retrying(MAILBOX, POLICY, None, lambda: done[0]):
        with attempt:
            tries += 1
            if progress_between:
                done[0] += 1  # a batch committed before the connection dropped
            if tries <= drops:
                raise ConnectionResetError("connection reset by peer")
    return tries


def test_a_server_that_stays_away_spends_the_budget() -> None:
    with pytest.raises(ConnectionResetError):
        run(drops=POLICY.attempts, progress_between=False)
    assert run(drops=POLICY.attempts - 1, progress_between=False) == POLICY.attempts


def test_a_connection_that_got_work_done_starts_the_budget_again() -> None:
    assert run(drops=10, progress_between=True) == 11
