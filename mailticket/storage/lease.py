"""Named, expiring locks in the `leases` table: one poller per mailbox, one runner per job.

Works the same on SQLite and PostgreSQL because it relies only on a primary key and
a conditional UPDATE: taking a lease is "update the row if it is mine or expired,
else insert it"; of two processes racing, the database lets exactly one win.

A holder renews its lease well before it expires. A holder that dies (SIGKILL, power
loss) leaves its row behind until it expires; to make a restart on the same machine
resume at once, the owner string names the host, PID namespace and PID, and a lease
whose owner is a dead process on this very host is taken over without waiting. Lease
times come from the processes' clocks, so hosts sharing a database need NTP.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from mailticket.storage.tables import Lease, utcnow

_LEASES = Lease.__table__  # type: ignore[attr-defined]


def _host_id() -> str:
    """This host and PID namespace: two containers on one machine must not judge each other's PIDs."""
    try:
        namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}{namespace}"


def owner_id() -> str:
    """A unique owner name for this process: `host[pidns]:pid:random`."""
    return f"{_host_id()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _holder_is_dead(owner: str) -> bool:
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
        if holder is not None and _holder_is_dead(holder):
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


def release(engine: Engine, name: str, owner: str) -> None:
    """Give a lease up at once (a no-op if we no longer hold it)."""
    with engine.begin() as conn:
        conn.execute(delete(_LEASES).where(_LEASES.c.name == name).where(_LEASES.c.owner == owner))
