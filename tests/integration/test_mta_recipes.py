"""The Postfix recipes of examples/postfix/ and the systemd unit, run as written against a real Postfix.

Each recipe is read from its file (so the docs cannot drift from what is tested), with only the
install paths swapped for this checkout's. What must hold: kept mail is delivered and never
bounced (a rule's drop, a bounce for no ticket, unparseable bytes); a temporary failure defers,
and the same message is delivered once the failure is over.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from sqlmodel import Session, select

from mailticket.storage.tables import IntakeRecord, Ticket
from tests.daemonproc import DaemonProcess
from tests.factories import config_dict, load_ctx, mail
from tests.servers import Postfix, free_port

pytestmark = pytest.mark.postfix

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PIPE_USER = "mailticket"  # the recipe's user; created here as a system user when missing
DOMAIN = "help.example"


def _pipe_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PIPE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PIPE_USER],
                       check=True)
        return pwd.getpwnam(PIPE_USER)


@contextlib.contextmanager
def _reachable_by_others(*paths: Path) -> Iterator[None]:
    """Postfix runs the pipe as an unprivileged user, which must reach this checkout and this
    Python. A clone or an interpreter under a private folder (root's home is 0700) would make
    every delivery fail, so folders on the way that others cannot enter get o+x (enter, not
    list) for the test's duration, and their mode back afterwards."""
    changed: dict[Path, int] = {}
    for path in paths:
        for folder in [path, *path.parents]:
            mode = folder.stat().st_mode
            if folder.is_dir() and not mode & stat.S_IXOTH and folder not in changed:
                changed[folder] = stat.S_IMODE(mode)
                folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
    try:
        yield
    finally:
        for folder, mode in changed.items():
            folder.chmod(mode)


def _runs_as(user: str) -> None:
    """The pipe user can run this Python with mailticket (a failure names what to fix)."""
    entry = pwd.getpwnam(user)
    probe = subprocess.run([sys.executable, "-c", "import mailticket"], capture_output=True, text=True,
                           env={"PYTHONPATH": str(ROOT)}, user=entry.pw_uid, group=entry.pw_gid, cwd="/")
    assert probe.returncode == 0, (
        f"user {user!r} cannot run {sys.executable} with mailticket from {ROOT}: {probe.stderr.strip()}"
    )


def _recipe(name: str) -> list[str]:
    """A snippet's lines without comments."""
    lines = (EXAMPLES / "postfix" / name).read_text().splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture
def desk() -> Iterator[Path]:
    """A config and data folder as an admin would set them up: owned by the pipe user, config 0640.

    Outside pytest's temp folder, which only root may enter."""
    user = _pipe_user()
    with _reachable_by_others(ROOT, Path(sys.executable).resolve().parent, Path(sys.prefix)):
        _runs_as(PIPE_USER)
        yield from _desk(user)


def _desk(user: pwd.struct_passwd) -> Iterator[Path]:
    top = Path(tempfile.mkdtemp(prefix="mailticket-desk-"))
    etc = top / "etc"
    etc.mkdir()
    drop = {"name": "Newsletters away", "actions": {"drop": True},
            "conditions": [{"field": "subject", "op": "contains", "value": "newsletter"}]}
    raw = config_dict(etc, rules=[drop])
    raw["service"]["data_dir"] = "desk"
    raw["service"]["support_address"] = f"support@{DOMAIN}"
    raw["departments"] = [{"name": "general", "address": f"support@{DOMAIN}", "agents": []}]
    raw["agents"] = []
    config = etc / "mailticket.toml"
    config.write_text(tomli_w.dumps(raw))
    (etc / "desk").mkdir()
    for path in (top, etc):
        path.chmod(0o755)
    os.chown(etc / "desk", user.pw_uid, user.pw_gid)
    os.chown(config, 0, user.pw_gid)
    config.chmod(0o640)
    yield config
    shutil.rmtree(top, ignore_errors=True)


def _stored(config: Path) -> list[tuple[str, str | None]]:
    ctx = load_ctx(config)
    try:
        with Session(ctx.engine) as session:
            rows = session.exec(select(IntakeRecord).order_by(IntakeRecord.id)).all()
            tickets = {t.id: t.subject for t in session.exec(select(Ticket)).all()}
            return [(r.status, tickets.get(r.ticket_id)) for r in rows]
    finally:
        ctx.engine.dispose()


def _install_pipe(mta: Postfix, config: Path, detach: bool = False) -> None:
    """examples/postfix/{master.cf,main.cf,transport} with this checkout's paths; `detach`: with
    `ingest --detach`, as master.cf's comment offers."""
    command = f"/usr/bin/env PYTHONPATH={ROOT} {sys.executable} -m mailticket"
    service = [line.replace("/opt/mailticket/.venv/bin/mailticket", command)
               .replace("/etc/mailticket/mailticket.toml", str(config)) for line in _recipe("master.cf")]
    if detach:
        assert service[-1].endswith(" ingest")
        service[-1] += " --detach"
    mta.add_service(*service)
    for line in _recipe("main.cf"):
        name, _, value = (part.strip() for part in line.partition("="))
        if name != "transport_maps":  # the fixture keeps its own map file; the entries come next
            mta.configure(**{name: value})
    for line in _recipe("transport"):
        address, nexthop = line.split()
        if nexthop == "mailticket:":
            mta.route(address.replace("example.com", DOMAIN), nexthop)


def _wait_for(mta: Postfix, text: str, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while mta.log().count(text) < count:
        assert time.monotonic() < deadline, f"{count} x {text!r} not seen:\n{mta.log_tail()}"
        time.sleep(0.1)


def _stored_when_drained(config: Path) -> list[tuple[str, str | None]]:
    """The intake records once nothing waits in the incoming folder (`ingest --detach` stores in
    the background). Read only then: a database this root process created would be root's."""
    desk = config.parent / "desk"
    waiting = desk / "incoming" / "new"
    deadline = time.monotonic() + 90
    while (waiting.is_dir() and any(waiting.iterdir())) or not (desk / "mailticket.db").exists():
        assert time.monotonic() < deadline, f"still waiting to be stored: {sorted(waiting.iterdir())}"
        time.sleep(0.2)
    return _stored(config)


@pytest.mark.parametrize(("detach", "daemon"), [(False, False), (True, False), (False, True)],
                         ids=["ingest", "ingest-detach", "ingest-daemon"])
def test_pipe_recipe_keeps_every_message_and_bounces_none(
    desk: Path, postfix: Postfix, detach: bool, daemon: bool
) -> None:
    """`daemon`: `mailticket run` runs as the pipe user, and each `ingest` hands it the message."""
    _install_pipe(postfix, desk, detach)
    with DaemonProcess(desk, user=PIPE_USER) if daemon else contextlib.nullcontext() as running:
        _send_three_and_check(postfix, desk)
        if running is not None:
            assert running.log().count('position="ingest.sock"') == 3, running.log()


def _send_three_and_check(postfix: Postfix, desk: Path) -> None:
    postfix.send(mail(to=f"support@{DOMAIN}", subject="Printer on fire"), "carol@customer.example",
                 [f"support@{DOMAIN}"])
    postfix.send(mail(to=f"support@{DOMAIN}", subject="Our newsletter"), "news@shop.example",
                 [f"support@{DOMAIN}"])
    bounce = mail(sender="MAILER-DAEMON@mx.example.net", to=f"support@{DOMAIN}",
                  subject="Undelivered Mail Returned to Sender")
    postfix.send(bounce, "", [f"support@{DOMAIN}"])  # a bounce for no known ticket: quarantined
    _wait_for(postfix, "status=sent", 3)
    log = postfix.log()
    assert log.count("status=sent") == 3, postfix.log_tail()
    assert "status=bounced" not in log and "status=deferred" not in log
    statuses = sorted(status for status, _ in _stored_when_drained(desk))
    assert statuses == ["dropped", "quarantined", "stored"]
    # The desk's files belong to the pipe user, as the recipe says (no root-owned database).
    assert (desk.parent / "desk" / "mailticket.db").stat().st_uid == pwd.getpwnam(PIPE_USER).pw_uid


@pytest.mark.parametrize("detach", [False, True], ids=["ingest", "ingest-detach"])
def test_pipe_recipe_defers_while_the_database_cannot_be_written_then_delivers(
    desk: Path, postfix: Postfix, detach: bool
) -> None:
    _install_pipe(postfix, desk, detach)
    data = desk.parent / "desk"
    data.chmod(0o500)  # the pipe user cannot create the database: not kept, exit 75
    postfix.send(mail(to=f"support@{DOMAIN}", subject="Help while the disk is read-only"),
                 "carol@customer.example", [f"support@{DOMAIN}"])
    postfix.wait_for_log(r"status=deferred", timeout=60)
    assert "status=bounced" not in postfix.log()
    assert len(postfix.queue()) == 1
    data.chmod(0o700)
    postfix.flush()
    postfix.wait_for_log(r"status=sent", timeout=60)
    assert postfix.queue() == []
    assert _stored_when_drained(desk) == [("stored", "Help while the disk is read-only")]


@pytest.mark.parametrize("protocol", ["lmtp", "smtp"])
def test_daemon_listener_recipes_defer_while_it_is_down_then_deliver(
    tmp_path: Path, postfix: Postfix, protocol: str
) -> None:
    """LMTP (recipe 2) and SMTP relay (recipe 3) to `mailticket run`'s listener."""
    port = free_port()
    raw = config_dict(tmp_path)
    raw["service"]["support_address"] = f"support@{DOMAIN}"
    raw["intake"] = {"enabled": True, "host": "127.0.0.1", "port": port, "protocol": protocol}
    config = tmp_path / "mailticket.toml"
    config.write_text(tomli_w.dumps(raw))
    recipe = [line.lstrip("#") for line in (EXAMPLES / "postfix" / "transport").read_text().splitlines()]
    nexthop = next(line.split()[1] for line in recipe if line.split()[1:2]
                   and line.split()[1].startswith("lmtp:" if protocol == "lmtp" else "smtp:"))
    postfix.route(DOMAIN, re.sub(r"2525$", str(port), nexthop))

    postfix.send(mail(to=f"support@{DOMAIN}", subject=f"Over {protocol}"), "carol@customer.example",
                 [f"support@{DOMAIN}"])
    postfix.wait_for_log(r"status=deferred", timeout=60)  # no listener yet: Postfix keeps it
    with DaemonProcess(config):
        postfix.flush()
        postfix.wait_for_log(r"status=sent", timeout=60)
    assert "status=bounced" not in postfix.log()
    assert _stored(config) == [("stored", f"Over {protocol}")]


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (package systemd)"
    unit = (EXAMPLES / "systemd" / "mailticket.service").read_text()
    executable = Path(sys.executable).with_name("mailticket")
    assert executable.exists(), f"{executable}: the console script of this environment"
    path = tmp_path / "mailticket.service"
    path.write_text(unit.replace("/opt/mailticket/.venv/bin/mailticket", str(executable)))
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "ProtectSystem=strict" in unit and "NoNewPrivileges=yes" in unit
