"""The IMAP cursor of a mailbox folder: the last UID done, and the attempts of the UIDs above it.

The cursor moves only over a gap-free run of acknowledged UIDs; a UIDVALIDITY change resets
it to 0. Attempts are what charges a message for a dead worker, and only a message that was
in hand on its own is charged:

    fresh fetch group      one row per UID with attempts = 0, committed before the group's
                           transaction: "tried in a group", charged to no one
    a row exists already   a worker died in that group (or the message failed): the messages
                           go one per transaction, each counted +1 (committed) before it is
                           touched, so a message that kills the worker on its own is charged,
                           and quarantined on its turn after MAX_ATTEMPTS such deaths
    environment fault      the charge of the message in hand is given back (`uncount`)
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Table, bindparam, delete, insert, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from mailticket.config import MailboxConfig
from mailticket.context import AppContext
from mailticket.storage.db import upsert
from mailticket.storage.tables import MailboxState, UidAttempt

log = logging.getLogger("mailticket.intake.imap")

_ATTEMPTS: Table = UidAttempt.__table__  # type: ignore[attr-defined]
_TRIED_BEFORE = (
    sa_select(_ATTEMPTS.c.id)
    .where(
        _ATTEMPTS.c.mailbox == bindparam("mailbox"),
        _ATTEMPTS.c.folder == bindparam("folder"),
        _ATTEMPTS.c.uidvalidity == bindparam("uidvalidity"),
        _ATTEMPTS.c.uid.in_(bindparam("uids", expanding=True)),
    )
    .limit(1)
)



class Cursor:
    """The stored position of one mailbox folder; every method commits on its own."""

    def __init__(self, ctx: AppContext, mailbox: MailboxConfig) -> None:
        self.ctx = ctx
        self.mailbox = mailbox

    def start(self, uidvalidity: int) -> int:
        """The last UID done; 0 for a new folder or after a UIDVALIDITY change (committed at once)."""
        with Session(self.ctx.engine) as session, session.begin():
            state = session.exec(self._state_query()).first()
            if state is None:
                name, folder = self.mailbox.name, self.mailbox.folder
                session.add(MailboxState(mailbox=name, folder=folder, uidvalidity=uidvalidity))
                return 0
            if state.uidvalidity != uidvalidity:
                log.warning(
                    "UIDVALIDITY changed: reading the folder again from the start; "
                    "messages already stored count as duplicates",
                    extra={"fields": {"mailbox": self.mailbox.name, "folder": self.mailbox.folder,
                                      "old": state.uidvalidity, "new": uidvalidity,
                                      "old_last_uid": state.last_uid}},
                )
                state.uidvalidity, state.last_uid, state.updated_at = uidvalidity, 0, self.ctx.clock()
                return 0
            return int(state.last_uid)

    def advance(self, uidvalidity: int, last_uid: int) -> None:
        """Move the cursor and forget the attempt counts it has passed."""
        with Session(self.ctx.engine) as session, session.begin():
            state = session.exec(self._state_query()).one()
            if state.uidvalidity == uidvalidity and last_uid > state.last_uid:
                state.last_uid, state.updated_at = last_uid, self.ctx.clock()
            session.execute(
                delete(UidAttempt)
                .where(col(UidAttempt.mailbox) == self.mailbox.name)
                .where(col(UidAttempt.folder) == self.mailbox.folder)
                .where(or_(col(UidAttempt.uidvalidity) != uidvalidity, col(UidAttempt.uid) <= last_uid))
            )

    def count_first_attempts(self, uidvalidity: int, uids: list[int]) -> bool:
        """Mark a whole fetch group as tried (uncharged) in one commit; False if any was tried before.

        The common case (fresh mail) then costs one commit per group instead of one per message.
        A group with an earlier try, i.e. a worker that died in it, goes message by message
        (`count_attempt`): only the one in hand when the worker dies again is charged.
        """
        where = {"mailbox": self.mailbox.name, "folder": self.mailbox.folder, "uidvalidity": uidvalidity}
        try:
            with self.ctx.engine.begin() as conn:
                if conn.execute(_TRIED_BEFORE, {**where, "uids": uids}).first():
                    return False
                conn.execute(insert(_ATTEMPTS), [{**where, "uid": uid, "attempts": 0} for uid in uids])
        except IntegrityError:  # counted meanwhile by another poller: count one by one
            return False
        return True

    def count_attempt(self, uidvalidity: int, uid: int) -> int:
        """+1 in its own committed transaction, before the message is touched.

        One INSERT ... ON CONFLICT DO UPDATE ... RETURNING (SQLite and PostgreSQL alike): it
        runs once per message, so it is kept to one statement.
        """
        table = _ATTEMPTS
        stmt = (
            upsert(self.ctx.engine.dialect.name, table)
            .values(mailbox=self.mailbox.name, folder=self.mailbox.folder, uidvalidity=uidvalidity, uid=uid,
                    attempts=1)
            .on_conflict_do_update(
                index_elements=["mailbox", "folder", "uidvalidity", "uid"],
                set_={"attempts": table.c.attempts + 1},
            )
            .returning(table.c.attempts)
        )
        with self.ctx.engine.begin() as conn:
            return int(conn.execute(stmt).scalar_one())

    def uncount(self, uidvalidity: int, uid: int) -> None:
        """Give back the charge of a message whose try the environment ended (disk full, database
        down): it did not kill the worker."""
        with self.ctx.engine.begin() as conn:
            conn.execute(
                update(_ATTEMPTS)
                .where(_ATTEMPTS.c.mailbox == self.mailbox.name, _ATTEMPTS.c.folder == self.mailbox.folder)
                .where(_ATTEMPTS.c.uidvalidity == uidvalidity, _ATTEMPTS.c.uid == uid)
                .where(_ATTEMPTS.c.attempts > 0)
                .values(attempts=_ATTEMPTS.c.attempts - 1)
            )

    def _state_query(self) -> Any:
        return (
            select(MailboxState)
            .where(MailboxState.mailbox == self.mailbox.name)
            .where(MailboxState.folder == self.mailbox.folder)
        )
