"""The IMAP cursor of a mailbox folder: the last UID done, and the attempts of the UIDs above it.

The cursor moves only over a gap-free run of acknowledged UIDs; a UIDVALIDITY change resets
it to 0. An attempt is counted (and committed) before a message is touched, so a message
that kills the worker is recognised on its next turn.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Table, bindparam, delete, insert, or_
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
        """Count a first attempt for a whole fetch group in one commit; False if any was tried before.

        The common case (fresh mail) then costs one commit per group instead of one per message.
        A group with an earlier attempt, i.e. a worker that died in it, is counted message by
        message (`count_attempt`), so a poison message is still quarantined after at most
        MAX_ATTEMPTS tries. The messages after it were counted once without being tried: that
        can only bring a later crash of their own to quarantine one attempt sooner.
        """
        where = {"mailbox": self.mailbox.name, "folder": self.mailbox.folder, "uidvalidity": uidvalidity}
        try:
            with self.ctx.engine.begin() as conn:
                if conn.execute(_TRIED_BEFORE, {**where, "uids": uids}).first():
                    return False
                conn.execute(insert(_ATTEMPTS), [{**where, "uid": uid, "attempts": 1} for uid in uids])
        except IntegrityError:  # counted meanwhile by another poller: count one by one
            return False
        return True

    def count_attempt(self, uidvalidity: int, uid: int) -> int:
        """+1 in its own committed transaction, before the message is touched.

        One INSERT ... ON CONFLICT DO UPDATE ... RETURNING (SQLite and PostgreSQL alike): it
        runs once per message, so it is kept to one statement.
        """
        table = UidAttempt.__table__  # type: ignore[attr-defined]
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

    def _state_query(self) -> Any:
        return (
            select(MailboxState)
            .where(MailboxState.mailbox == self.mailbox.name)
            .where(MailboxState.folder == self.mailbox.folder)
        )
