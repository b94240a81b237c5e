"""Every full corpus message through the whole pipeline, on SQLite and PostgreSQL.

Each message must end as exactly one of: an entry on a ticket, a recorded duplicate, or a
quarantine record (with its raw bytes kept), and those three add up to the number of
messages. Once directly (Pipeline.process) and once through the IMAP source.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from sqlmodel import Session, col, func, select

from mailticket.context import AppContext
from mailticket.intake.imap import RetryPolicy, poll_mailbox
from mailticket.storage.tables import Entry, IntakeRecord
from tests.factories import CORPUS, ingest, make_ctx
from tests.servers import Dovecot

pytestmark = pytest.mark.slow

CATEGORIES: dict[str, list[str]] = json.loads((CORPUS / "categories.json").read_text())
FULL = sorted(name for name, tags in CATEGORIES.items() if "body-only" not in tags)


def accounting(ctx: AppContext) -> dict[str, int]:
    """What the database says happened: entries from mail, duplicates seen, quarantine records."""
    with Session(ctx.engine) as s:
        entries = s.exec(
            select(func.count()).select_from(Entry).where(col(Entry.raw_sha256).is_not(None))
        ).one()
        duplicates = s.exec(select(func.coalesce(func.sum(IntakeRecord.duplicates), 0))).one()
        by_status = dict(
            s.exec(select(IntakeRecord.status, func.count()).group_by(IntakeRecord.status)).all()  # type: ignore[arg-type]
        )
    return {
        "entries": int(entries),
        "duplicates": int(duplicates),
        "quarantined": int(by_status.get("quarantined", 0)),
        "stored_records": int(by_status.get("stored", 0)),
        "dropped": int(by_status.get("dropped", 0)),
    }


def quarantined_raws_are_kept(ctx: AppContext) -> None:
    with Session(ctx.engine) as s:
        shas = s.exec(select(IntakeRecord.raw_sha256).where(IntakeRecord.status == "quarantined")).all()
    for sha in shas:
        assert hashlib.sha256(ctx.blobs.get(sha)).hexdigest() == sha


def test_corpus_through_the_pipeline(tmp_path: Path, db_url: str) -> None:
    ctx = make_ctx(tmp_path, db_url)
    outcomes: Counter[str] = Counter()
    for name in FULL:
        raw = (CORPUS / name).read_bytes()
        outcome = ingest(ctx, raw, source="corpus", position=name)
        assert outcome.status in ("stored", "duplicate", "quarantined"), (name, outcome)
        outcomes[outcome.status] += 1
        # The raw bytes are kept whatever happened (content-addressed).
        assert ctx.blobs.get(hashlib.sha256(raw).hexdigest()) == raw

    books = accounting(ctx)
    assert books["entries"] == books["stored_records"] == outcomes["stored"]
    assert books["duplicates"] == outcomes["duplicate"]
    assert books["quarantined"] == outcomes["quarantined"]
    assert books["dropped"] == 0
    assert books["entries"] + books["duplicates"] + books["quarantined"] == len(FULL) == 347
    quarantined_raws_are_kept(ctx)
    # Quarantine here means "a bounce for no ticket we know"; nothing is unparseable.
    with Session(ctx.engine) as s:
        reasons = set(s.exec(select(IntakeRecord.reason).where(IntakeRecord.status == "quarantined")).all())
    assert reasons <= {"delivery status notification for no known ticket"}
    ctx.engine.dispose()


def test_corpus_through_imap(tmp_path: Path, db_url: str, dovecot: Dovecot) -> None:
    mailbox = {
        "name": "support",
        "host": dovecot.host,
        "port": dovecot.port,
        "security": "none",
        "username": dovecot.user,
        "password": dovecot.password,
        "department": "general",
    }
    ctx = make_ctx(tmp_path, db_url, mailboxes=[mailbox])
    assert dovecot.load_maildir((CORPUS / name).read_bytes() for name in FULL) == 347

    result = poll_mailbox(ctx, ctx.config.mailboxes[0], retry=RetryPolicy(attempts=3, first_wait=0.1))

    assert result.error is None and result.failed == 0
    assert result.stored + result.duplicates + result.quarantined + result.dropped == 347
    books = accounting(ctx)
    assert (books["entries"], books["duplicates"], books["quarantined"]) == (
        result.stored,
        result.duplicates,
        result.quarantined,
    )
    assert books["entries"] + books["duplicates"] + books["quarantined"] == 347
    # Acknowledged at the source: kept mail flagged \Seen, quarantined mail (and its
    # duplicates) moved aside; nothing left unread, nothing lost.
    inbox, quarantine = dovecot.flags(), dovecot.folder_uids("Quarantine")
    assert all(b"\\Seen" in flags for flags in inbox.values())
    assert len(quarantine) >= result.quarantined
    assert len(inbox) + len(quarantine) == 347
    quarantined_raws_are_kept(ctx)
    ctx.engine.dispose()
