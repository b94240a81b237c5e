"""Named, expiring locks in the `leases` table: one poller per mailbox, one runner per job.

Works the same on SQLite and PostgreSQL because it relies only on a primary key and
a conditional UPDATE: taking a lease is "update the row if it is mine or expired,
else insert it"; of two processes racing, the database lets exactly one win.

A holder renews its lease well before it expires. A holder that dies (SIGKILL, power
loss) leaves its row behind until it expires; to make a restart on the same machine
resume at once, the owner string names the host, PID namespace and PID, and a lease
whose owner is a dead process on this very host is taken over without waiting. Lease
times come from the processes' clocks, so hosts sharing a database need NTP.

A process has one owner id (`owner_id`), whatever its threads and passes: a lease it could
not give back (the database was down at that moment) is its own, and the next `acquire`
takes it back at once instead of waiting for it to expire. A failed release is logged.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from mailticket.errors import DatabaseUnavailable
from mailticket.storage.tables import Lease, utcnow

log = logging.getLogger("mailticket.storage.lease")

_LEASES = Lease.__table__  # type: ignore[attr-defined]
_OWNER: tuple[int, str] | None = None  # (pid, owner id): a forked child makes its own
_OWNER_LOCK = threading.Lock()


def _host_id() -> str:
    """This host and PID namespace: two containers on one machine must not judge each other's PIDs."""
    try:
        namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}{namespace}"


def make_owner_id() -> str:
    """A new unique owner name: `host[pidns]:pid:random`."""
    return f"{_host_id()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_id() -> str:
    """This process's owner name: the same for all its leases and threads, made once."""
    global _OWNER
    with _OWNER_LOCK:
        if _OWNER is None or _OWNER[0] != os.getpid():
            _OWNER = (os.getpid(), make_owner_id())
        return _OWNER[1]


def holder_is_dead(owner: str) -> bool:
    """True only when the owner provably ran on this host and its process is gone."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != _host_id() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def acquire(engine: Engine, name: str, owner: str, seconds: float, *, now: datetime | None = None) -> bool:
    """Take (or extend) lease `name` for `seconds`; False while another live owner holds it."""
    now = now or utcnow()
    expires = now + timedelta(seconds=seconds)
    with engine.begin() as conn:
        taken = conn.execute(
            update(_LEASES)
            .where(_LEASES.c.name == name)
            .where(or_(_LEASES.c.owner == owner, _LEASES.c.expires_at < now))
            .values(owner=owner, expires_at=expires)
        ).rowcount
        if taken:
            return True
        holder = conn.execute(select(_LEASES.c.owner).where(_LEASES.c.name == name)).scalar_one_or_none()
        if holder is not None and holder_is_dead(holder):
            # Only this exact stale row is replaced: if a live process renewed or took the
            # lease in the meantime, the owner no longer matches and nothing changes.
            return bool(
                conn.execute(
                    update(_LEASES)
                    .where(_LEASES.c.name == name)
                    .where(_LEASES.c.owner == holder)
                    .values(owner=owner, expires_at=expires)
                ).rowcount
            )
        if holder is not None:
            return False
    try:
        with engine.begin() as conn:
            conn.execute(insert(_LEASES).values(name=name, owner=owner, expires_at=expires))
    except IntegrityError:
        return False  # another process inserted it first
    return True


def renew(engine: Engine, name: str, owner: str, seconds: float, *, now: datetime | None = None) -> bool:
    """Extend a lease we hold; False if it was lost (expired and taken by someone else)."""
    now = now or utcnow()
    with engine.begin() as conn:
        return bool(
            conn.execute(
                update(_LEASES)
                .where(_LEASES.c.name == name)
                .where(_LEASES.c.owner == owner)
                .values(expires_at=now + timedelta(seconds=seconds))
            ).rowcount
        )


def release(engine: Engine, name: str, owner: str) -> bool:
    """Give a lease up at once (a no-op if we no longer hold it); False, logged, when the database
    is unavailable: the row stays until it expires or this process takes it back."""
    try:
        with engine.begin() as conn:
            conn.execute(delete(_LEASES).where(_LEASES.c.name == name).where(_LEASES.c.owner == owner))
    except DatabaseUnavailable as exc:
        log.warning(
            "could not release lease; this process takes it back at once, others wait for it to expire",
            extra={"fields": {"lease": name, "owner": owner, "error": str(exc)}},
        )
        return False
    return True
