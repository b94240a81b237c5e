"""Real servers for tests and benchmarks: private Dovecot, Postfix and PostgreSQL, an SMTP sink.

mailticket talks to IMAP, SMTP and a SQL database; mocks of those protocols hide exactly the
bugs (UIDVALIDITY changes, 4xx retries, driver differences) the tests must catch, so these
helpers run the real thing on 127.0.0.1. See docs/development.md for the facts behind them.

Only the standard library is needed to start and stop the servers; imapclient, aiosmtpd and
psycopg are imported where they are used. `ensure_server_packages()` installs the Debian
packages behind them when they are missing (as root), so a bare machine runs the suite.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import email
import email.policy
import fcntl
import getpass
import grp
import json
import os
import pwd
import queue
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imapclient import IMAPClient

__all__ = [
    "Dovecot",
    "Postfix",
    "PostgresUnavailable",
    "PrivatePostgres",
    "Received",
    "ServerStartError",
    "SmtpSink",
    "ensure_server_packages",
    "free_port",
    "postgres_database",
    "postgres_endpoint",
]

LOCALHOST = "127.0.0.1"

# Servers started by this process, closed at exit so a crashed script leaks no daemon.
_LIVE_SERVERS: set[Dovecot | Postfix | PrivatePostgres] = set()


@atexit.register
def _close_leftovers() -> None:
    for server in list(_LIVE_SERVERS):
        with contextlib.suppress(Exception):
            server.close()


class ServerStartError(RuntimeError):
    """A test server did not come up; the message carries its log tail."""


def free_port() -> int:
    """Ask the kernel for a currently unused TCP port (racy: callers retry on bind failure)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (Dovecot's master is not our child)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _wait_for_greeting(
    host: str, port: int, greeting: bytes, timeout: float, log_tail: Callable[[], str]
) -> None:
    """Poll until a TCP connect gets a first line starting with `greeting` (the server is ready)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.settimeout(2)
                first = s.recv(256)
            if first.startswith(greeting):
                return
            last = first
        except OSError as exc:
            last = exc
        time.sleep(0.02)
    raise ServerStartError(
        f"server on {host}:{port} not ready after {timeout}s (last: {last!r})\n--- log tail ---\n{log_tail()}"
    )


# --------------------------------------------------------------------------------------------
# Dovecot
# --------------------------------------------------------------------------------------------

_DOVECOT_CONF = """\
# Throwaway Dovecot for mailticket tests; everything lives under {root}.
instance_name = {instance}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = {host}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login{oauth_mechanisms}
mail_location = maildir:~/Maildir
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
mail_fsync = never
shutdown_clients = yes
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
{oauth_passdb}userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
service imap-login {{
  inet_listener imap {{
    address = {host}
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
{login_chroot}}}
{extra}
"""


class Dovecot:
    """A private Dovecot IMAP server (Maildir, plaintext auth) in its own temp directory.

    With `introspection_url` it also takes XOAUTH2 and OAUTHBEARER, asking that endpoint
    (RFC 7662 introspection, as Dovecot's `passdb oauth2` does) whether a token is active
    and whose it is; passwords keep working beside it.

    Runs as root (mail owned by the system `mail` user, login processes as dovenull) or as
    any other user (everything as that user). `start()` picks a free port and retries if
    another process grabs it first; `restart()` keeps the port so clients can reconnect.
    """

    def __init__(
        self,
        user: str = "support",
        password: str = "secret",
        *,
        binary: str | None = None,
        root: str | os.PathLike[str] | None = None,
        start_timeout: float = 15.0,
        introspection_url: str | None = None,
    ) -> None:
        found = binary or shutil.which("dovecot") or "/usr/sbin/dovecot"
        if not os.access(found, os.X_OK):
            raise ServerStartError("dovecot binary not found (apt-get install -y dovecot-imapd)")
        self.binary = found
        self.host = LOCALHOST
        self.port = 0
        self.user = user
        self.password = password
        self.start_timeout = start_timeout
        self.introspection_url = introspection_url  # set: users may also log in with OAuth tokens
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="mailticket-dovecot-"))
        self.instance = f"mt-{uuid.uuid4().hex[:10]}"
        self._users: dict[str, str] = {}
        self._running = False
        self._as_root = os.geteuid() == 0
        if self._as_root:
            mail = pwd.getpwnam("mail")
            self.mail_uid, self.mail_gid = mail.pw_uid, mail.pw_gid
        else:
            self.mail_uid, self.mail_gid = os.geteuid(), os.getegid()
        self._prepare_root()
        self.add_user(user, password)

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.root / "dovecot.log"

    @property
    def master_pid_path(self) -> Path:
        return self.root / "run" / "master.pid"

    @property
    def running(self) -> bool:
        return self._running

    def _prepare_root(self) -> None:
        """Create the directory tree; world-traversable so dovecot/dovenull/mail can reach it."""
        for sub in ("", "run", "state", "home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(self.root / sub, 0o755)

    def _write_config(self) -> None:
        if self._as_root:
            internal_user, login_user = "dovecot", "dovenull"
            internal_group = grp.getgrgid(pwd.getpwnam("dovecot").pw_gid).gr_name
            login_chroot = ""
            extra = ""
        else:
            me = pwd.getpwuid(os.geteuid()).pw_name if _has_pw_entry() else getpass.getuser()
            internal_user = login_user = me
            internal_group = grp.getgrgid(os.getegid()).gr_name
            # Without root, Dovecot cannot chroot; anvil/imap-login chroot by default.
            login_chroot = "  chroot =\n"
            extra = "service anvil {\n  chroot =\n}\n"
        self.conf_path.write_text(
            _DOVECOT_CONF.format(
                root=self.root,
                instance=self.instance,
                host=self.host,
                port=self.port,
                internal_user=internal_user,
                internal_group=internal_group,
                login_user=login_user,
                uid=self.mail_uid,
                gid=self.mail_gid,
                login_chroot=login_chroot,
                extra=extra,
                **self._oauth_settings(),
            )
        )

    def _oauth_settings(self) -> dict[str, str]:
        """XOAUTH2 / OAUTHBEARER checked by Dovecot against `introspection_url` (RFC 7662, POST)."""
        if self.introspection_url is None:
            return {"oauth_mechanisms": "", "oauth_passdb": ""}
        settings = self.root / "oauth2.conf"
        settings.write_text(
            f"introspection_mode = post\nintrospection_url = {self.introspection_url}\n"
            "force_introspection = yes\nusername_attribute = username\n"
            "active_attribute = active\nactive_value = true\ntokeninfo_url =\n"
        )
        os.chmod(settings, 0o644)
        return {
            # No 2 s pause after a refused token: the refusal tests would spend it every time.
            "oauth_mechanisms": " xoauth2 oauthbearer\nauth_failure_delay = 0",
            "oauth_passdb": f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
            f"  args = {settings}\n}}\n",
        }

    def _write_users(self) -> None:
        lines = [
            f"{name}:{{PLAIN}}{pw}:{self.mail_uid}:{self.mail_gid}::{self.home(name)}::\n"
            for name, pw in self._users.items()
        ]
        path = self.root / "users"
        path.write_text("".join(lines))
        os.chmod(path, 0o644)  # read by the auth process, which runs as `dovecot`

    def home(self, user: str | None = None) -> Path:
        """Home directory of `user` (default: the main user); Maildir lives below it."""
        return self.root / "home" / (user or self.user)

    def maildir(self, folder: str = "INBOX", user: str | None = None) -> Path:
        """Filesystem path of a folder (Maildir++ layout: INBOX is the root, others `.Name`)."""
        base = self.home(user) / "Maildir"
        if folder.upper() == "INBOX":
            return base
        return base / ("." + folder.replace("/", "."))

    def add_user(self, name: str, password: str) -> None:
        """Add (or change) a mailbox user; takes effect immediately (passwd-file is re-read)."""
        self._users[name] = password
        home = self.home(name)
        for d in (home, home / "Maildir", *(home / "Maildir" / s for s in ("cur", "new", "tmp"))):
            d.mkdir(exist_ok=True)
            self._chown(d)
            os.chmod(d, 0o700)
        self._write_users()

    def start(self) -> Dovecot:
        """Start the server (new free port on first start, with retries); wait for `* OK`."""
        if self._running:
            return self
        fixed_port = self.port != 0
        attempts = 1 if fixed_port else 5
        last_error = ""
        for _ in range(attempts):
            if not fixed_port:
                self.port = free_port()
            self._write_config()
            with contextlib.suppress(FileNotFoundError):
                self.master_pid_path.unlink()
            # Output to a file, not a pipe: the daemonized master keeps inherited fds open.
            out_path = self.root / "startup.out"
            with open(out_path, "wb") as out:
                proc = subprocess.run(
                    [self.binary, "-c", str(self.conf_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=self.start_timeout,
                )
            if proc.returncode == 0:
                self._running = True
                _LIVE_SERVERS.add(self)
                try:
                    _wait_for_greeting(self.host, self.port, b"* OK", self.start_timeout, self.log_tail)
                except BaseException:
                    self.stop()
                    raise
                return self
            last_error = out_path.read_text(errors="replace").strip()
            if "in use" not in last_error:
                break
        raise ServerStartError(
            f"dovecot failed to start on {self.host}:{self.port}: {last_error}\n"
            f"--- {self.log_path} (tail) ---\n{self.log_tail()}"
        )

    def master_pid(self) -> int | None:
        try:
            return int(self.master_pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM Dovecot's processes (by pid, never by name) and wait until they are gone.

        The services (log included) are signalled before the master: after a bare SIGTERM to
        the master an imap process with a connected client lingers ~10 s and the master waits
        ~1 s for its log process; this way clients see EOF at once and a stop takes ms.
        """
        pid = self.master_pid()
        self._running = False
        if pid is None or not _pid_alive(pid):
            return
        # Freeze the master so it cannot respawn services while they are being signalled.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        children = _child_pids(pid)
        for p in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(_pid_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.002)
        for p in children:
            if _pid_alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.002)
        if _pid_alive(pid):
            for p in [*_child_pids(pid), pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)

    def restart(self) -> Dovecot:
        """Stop and start again on the same port (connected clients are disconnected)."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and delete its directory (if we created it)."""
        self.stop()
        _LIVE_SERVERS.discard(self)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- IMAP helpers --------------------------------------------------------------------

    def client(self, user: str | None = None, password: str | None = None) -> IMAPClient:
        """A logged-in imapclient.IMAPClient (plain IMAP, no TLS); caller logs out."""
        from imapclient import IMAPClient

        c = IMAPClient(self.host, port=self.port, ssl=False, timeout=30)
        name = user or self.user
        c.login(name, password if password is not None else self._users[name])
        return c

    @contextlib.contextmanager
    def session(self, user: str | None = None) -> Iterator[IMAPClient]:
        """`with dovecot.session() as c:` — a client that is logged out afterwards."""
        c = self.client(user)
        try:
            yield c
        finally:
            with contextlib.suppress(Exception):
                c.logout()

    def append(
        self,
        folder: str,
        raw: bytes,
        flags: Sequence[str | bytes] = (),
        msg_time: datetime | None = None,
    ) -> int | None:
        """APPEND one message (creating the folder if needed); returns its UID (UIDPLUS)."""
        return self.append_many(folder, [raw], flags=flags, msg_time=msg_time)[0]

    def append_many(
        self,
        folder: str,
        messages: Iterable[bytes],
        flags: Sequence[str | bytes] = (),
        msg_time: datetime | None = None,
    ) -> list[int | None]:
        """APPEND messages over one connection, creating the folder if needed; returns UIDs."""
        with self.session() as c:
            if not c.folder_exists(folder):
                c.create_folder(folder)
                c.subscribe_folder(folder)
            return [
                _appenduid(c.append(folder, raw, flags=tuple(flags), msg_time=msg_time)) for raw in messages
            ]

    def create_folder(self, name: str, subscribe: bool = True) -> None:
        with self.session() as c:
            if not c.folder_exists(name):
                c.create_folder(name)
            if subscribe:
                c.subscribe_folder(name)

    def delete_folder(self, name: str) -> None:
        with self.session() as c:
            if c.folder_exists(name):
                c.delete_folder(name)

    def folder_uids(self, folder: str = "INBOX") -> list[int]:
        with self.session() as c:
            c.select_folder(folder, readonly=True)
            return sorted(int(u) for u in c.search("ALL"))

    def fetch_all(self, folder: str = "INBOX") -> dict[int, bytes]:
        """UID -> full raw message, without setting \\Seen."""
        with self.session() as c:
            c.select_folder(folder, readonly=True)
            uids = c.search("ALL")
            data = c.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
        return {int(uid): bytes(v[b"BODY[]"]) for uid, v in data.items()}

    def flags(self, folder: str = "INBOX") -> dict[int, tuple[bytes, ...]]:
        """UID -> flags tuple as imapclient returns them (bytes, e.g. b'\\\\Seen')."""
        with self.session() as c:
            c.select_folder(folder, readonly=True)
            data = c.get_flags(c.search("ALL"))
        return {int(uid): tuple(f) for uid, f in data.items()}

    def uidvalidity(self, folder: str = "INBOX") -> int:
        with self.session() as c:
            status = c.folder_status(folder, [b"UIDVALIDITY"])
        return int(status[b"UIDVALIDITY"])

    def reset_uidvalidity_inbox(self) -> int:
        """Force a new INBOX UIDVALIDITY (messages kept, renumbered from 1); returns it.

        Stops the server, deletes `dovecot-uidlist` and `dovecot.index*` in the INBOX
        Maildir, starts again on the same port.
        """
        was_running = self._running
        self.stop()
        box = self.maildir("INBOX")
        for p in [box / "dovecot-uidlist", *box.glob("dovecot.index*")]:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self.start()
        value = self.uidvalidity("INBOX")
        if not was_running:
            self.stop()
        return value

    def recreate_folder(self, name: str, keep_messages: bool = True) -> int:
        """Delete and recreate a (non-INBOX) folder to get a new UIDVALIDITY; returns it.

        With `keep_messages` the same messages (and flags) are appended again, so they come
        back under new UIDs — the situation a UIDVALIDITY-aware poller must handle.
        """
        if name.upper() == "INBOX":
            raise ValueError("INBOX cannot be deleted; use reset_uidvalidity_inbox()")
        with self.session() as c:
            saved: list[tuple[bytes, tuple[bytes, ...]]] = []
            if keep_messages and c.folder_exists(name):
                c.select_folder(name, readonly=True)
                uids = c.search("ALL")
                if uids:
                    data = c.fetch(uids, ["BODY.PEEK[]", "FLAGS"])
                    saved = [(bytes(data[u][b"BODY[]"]), tuple(data[u][b"FLAGS"])) for u in sorted(data)]
                c.unselect_folder()
            if c.folder_exists(name):
                c.delete_folder(name)
            c.create_folder(name)
            c.subscribe_folder(name)
            for raw, fl in saved:
                c.append(name, raw, flags=tuple(f for f in fl if f != b"\\Recent"))
            status = c.folder_status(name, [b"UIDVALIDITY"])
        return int(status[b"UIDVALIDITY"])

    # -- fast loading --------------------------------------------------------------------

    def load_maildir(
        self,
        messages: Iterable[bytes],
        folder: str = "INBOX",
        *,
        seen: bool = False,
        user: str | None = None,
    ) -> int:
        """Write messages straight into the folder's Maildir `cur/` (~7x faster than APPEND).

        Creates the folder (Maildir++ layout) if needed; works while the server runs —
        Dovecot picks the files up on its next mailbox sync. Returns the count written.
        """
        box = self.maildir(folder, user)
        if not (box / "cur").is_dir():
            for d in (box, box / "cur", box / "new", box / "tmp"):
                d.mkdir(exist_ok=True)
                self._chown(d)
                os.chmod(d, 0o700)
            if folder.upper() != "INBOX":
                marker = box / "maildirfolder"
                marker.touch()
                self._chown(marker)
        info = ":2,S" if seen else ":2,"
        host = socket.gethostname().replace("/", "_").replace(":", "_")
        stamp, pid = int(time.time()), os.getpid()
        tmp_dir, cur_dir = box / "tmp", box / "cur"
        chown = self._as_root and (self.mail_uid, self.mail_gid) != (os.geteuid(), os.getegid())
        count = 0
        for raw in messages:
            unique = f"{stamp}.M{count}P{pid}R{uuid.uuid4().hex[:8]}.{host},S={len(raw)}"
            tmp_path = tmp_dir / unique
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(raw)
                while view:
                    view = view[os.write(fd, view) :]
                if chown:
                    os.fchown(fd, self.mail_uid, self.mail_gid)
            finally:
                os.close(fd)
            os.rename(tmp_path, cur_dir / (unique + info))
            count += 1
        return count

    def _chown(self, path: Path) -> None:
        if self._as_root:
            os.chown(path, self.mail_uid, self.mail_gid)


def _has_pw_entry() -> bool:
    try:
        pwd.getpwuid(os.geteuid())
    except KeyError:
        return False
    return True


def _appenduid(resp: bytes | str | None) -> int | None:
    """Parse `[APPENDUID <validity> <uid>] ...` from an APPEND response."""
    text = resp.decode() if isinstance(resp, bytes) else (resp or "")
    if "APPENDUID" not in text:
        return None
    parts = text.split("APPENDUID", 1)[1].split("]", 1)[0].split()
    return int(parts[1]) if len(parts) >= 2 else None


def _child_pids(pid: int) -> list[int]:
    """All descendants of `pid`, read from /proc (Dovecot's services, by pid, never by name)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found.extend(kids)
        frontier.extend(kids)
    return found


# --------------------------------------------------------------------------------------------
# SMTP sink
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One message the sink accepted (or, in `attempts`, was offered)."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    reply: str = "250 OK"
    message: EmailMessage = field(repr=False, compare=False, default_factory=EmailMessage)


Responder = Callable[["Received"], str]


class SmtpSink:
    """A real SMTP server (aiosmtpd in a thread) that records what it is sent.

    The DATA reply is scriptable, so retry and failure paths can be tested against a real
    server: `script(["451 try later", "250 OK"])` answers in order and then falls back to
    the default, `reject_all("550 no such user")` refuses everything, `respond_with(fn)`
    decides per message. Only messages answered with 2xx land in `received`/`messages`;
    every DATA attempt is in `attempts`. AUTH PLAIN/LOGIN is accepted without TLS; with
    `bearer(user, token) -> bool` so is AUTH XOAUTH2, answering a refused token the way
    Gmail does (a 334 with a JSON error, then 535 after the client's empty line).
    """

    def __init__(
        self,
        *,
        credentials: tuple[str, str] | None = None,
        data_size_limit: int = 64 * 1024 * 1024,
        bearer: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.host = LOCALHOST
        self.bearer = bearer
        self.port = 0
        self.credentials = credentials
        self.data_size_limit = data_size_limit
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._received: list[Received] = []
        self._attempts: list[Received] = []
        self._script: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._responder: Responder | None = None
        self.default_reply = "250 OK"
        self.logins: list[str] = []
        self._controller: Any = None

    # -- scripting -----------------------------------------------------------------------

    def script(self, replies: Iterable[str]) -> None:
        """Queue DATA replies used in order, before the responder/default applies."""
        for r in replies:
            self._script.put(r)

    def reject_all(self, reply: str = "550 no such user") -> None:
        """Answer every following DATA with `reply` (e.g. a 5xx or 4xx)."""
        self.default_reply = reply

    def accept_all(self) -> None:
        self.default_reply = "250 OK"
        self._responder = None

    def respond_with(self, responder: Responder | None) -> None:
        """Let `responder(Received) -> reply string` decide (when the script is empty)."""
        self._responder = responder

    def _next_reply(self, item: Received) -> str:
        try:
            return self._script.get_nowait()
        except queue.Empty:
            pass
        if self._responder is not None:
            return self._responder(item)
        return self.default_reply

    # -- aiosmtpd hooks ------------------------------------------------------------------

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = bytes(envelope.original_content or envelope.content or b"")
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        item = Received(
            mail_from=str(envelope.mail_from),
            rcpt_tos=[str(r) for r in envelope.rcpt_tos],
            raw=raw,
            message=msg,
        )
        reply = self._next_reply(item)
        item = Received(item.mail_from, item.rcpt_tos, raw, reply, msg)
        with self._cond:
            self._attempts.append(item)
            if reply.startswith("2"):
                self._received.append(item)
            self._cond.notify_all()
        return reply

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode()
        ok = self.credentials is None or ((login, auth_data.password.decode()) == self.credentials)
        if ok:
            with self._lock:
                self.logins.append(login)
        return AuthResult(success=ok)

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> Any:
        from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword

        blob = base64.b64decode(args[1]) if len(args) > 1 else await server.challenge_auth("")
        if blob is MISSING or self.bearer is None:
            return AuthResult(success=False, handled=False)
        fields = dict(p.split("=", 1) for p in blob.decode().split("\x01") if "=" in p)
        user, token = fields.get("user", ""), fields.get("auth", "").removeprefix("Bearer ")
        if not self.bearer(user, token):
            await server.challenge_auth('{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}')
            return AuthResult(success=False, handled=False)
        with self._lock:
            self.logins.append(f"xoauth2:{user}")
        return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> SmtpSink:
        """Start on a free port (retrying if it is taken between picking and binding); a restart
        after `stop()` binds the same port again, as a real server coming back would."""
        from aiosmtpd.controller import Controller

        last: BaseException | None = None
        fixed = self.port != 0
        for _ in range(1 if fixed else 5):
            port = self.port if fixed else free_port()
            controller = Controller(
                self,
                hostname=self.host,
                port=port,
                ready_timeout=10.0,
                data_size_limit=self.data_size_limit,
                enable_SMTPUTF8=True,
                authenticator=self._authenticate,
                auth_required=False,
                auth_require_tls=False,
            )
            try:
                controller.start()
            except OSError as exc:  # port grabbed in between
                last = exc
                continue
            self._controller, self.port = controller, port
            return self
        raise ServerStartError(f"SMTP sink could not bind a port: {last!r}")

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- results -------------------------------------------------------------------------

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    @property
    def attempts(self) -> list[Received]:
        with self._lock:
            return list(self._attempts)

    @property
    def messages(self) -> list[EmailMessage]:
        """Accepted messages parsed with `email.policy.default`."""
        return [r.message for r in self.received]

    @property
    def raw_messages(self) -> list[bytes]:
        return [r.raw for r in self.received]

    def clear(self) -> None:
        with self._lock:
            self._received.clear()
            self._attempts.clear()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        """Block until at least `n` messages were accepted; raise TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._received) >= n, timeout):
                raise TimeoutError(
                    f"SMTP sink got {len(self._received)} of {n} messages in {timeout}s "
                    f"({len(self._attempts)} attempts)"
                )
            return list(self._received)


# --------------------------------------------------------------------------------------------
# Postfix
# --------------------------------------------------------------------------------------------

# The services a private instance needs, none chrooted (the temp dir holds no chroot jail).
_POSTFIX_MASTER_CF = """\
{host}:{port} inet n - n - - smtpd
pickup    unix  n - n 60    1 pickup
cleanup   unix  n - n -     0 cleanup
qmgr      unix  n - n 300   1 qmgr
rewrite   unix  - - n -     - trivial-rewrite
bounce    unix  - - n -     0 bounce
defer     unix  - - n -     0 bounce
trace     unix  - - n -     0 bounce
verify    unix  - - n -     1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -     - proxymap
smtp      unix  - - n -     - smtp
relay     unix  - - n -     - smtp
lmtp      unix  - - n -     - lmtp
showq     unix  n - n -     - showq
error     unix  - - n -     - error
retry     unix  - - n -     - error
discard   unix  - - n -     - discard
anvil     unix  - - n -     1 anvil
scache    unix  - - n -     1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class Postfix:
    """A private Postfix instance: its own config, queue and data directories in a temp dir.

    smtpd listens on a free loopback port (`port`); the log goes to `maillog` (read it with
    `log()` / `wait_for_log()`). Nothing is delivered anywhere until a test says where: by
    default smtpd refuses every recipient with 550 (`default_transport = error:...`), so no
    lookup or connection ever leaves the machine. Building blocks for delivery tests:

        with Postfix() as mta:                              # started, stopped on exit
            mta.relay_to(sink.port)                         # all mail to a loopback SMTP port
            mta.relay_to(intake_port, lmtp=True)            # ... or LMTP
            mta.route("help.example", "mailticket:")       # transport_maps entry
            mta.add_service("mailticket unix - n n - - pipe",
                            "flags=DRhu user=nobody argv=/usr/bin/env ...")
            mta.configure(maximal_queue_lifetime="1h")      # any main.cf parameter
            mta.send(raw, "alice@example.com", ["support@help.example"])
            mta.wait_for_log(r"status=sent")
            mta.queue(); mta.flush()                         # postqueue -j / -f

    Configuration calls work before or after `start()` (a running instance is restarted on
    the same port; its queue is kept).
    Postfix's master must start as root, so this needs root and the `postfix` package.
    """

    def __init__(self, *, start_timeout: float = 30.0) -> None:
        if os.geteuid() != 0:
            raise ServerStartError("the private Postfix needs root (Postfix's master runs as root)")
        found = shutil.which("postfix") or "/usr/sbin/postfix"
        if not os.access(found, os.X_OK):
            raise ServerStartError("postfix binary not found (apt-get install -y postfix)")
        self.command_dir = str(Path(found).parent)
        self.host = LOCALHOST
        self.port = 0
        self.start_timeout = start_timeout
        self.root = Path(tempfile.mkdtemp(prefix="mailticket-postfix-"))
        self.params: dict[str, str] = self._base_params()
        self.routes: dict[str, str] = {}
        self.services: list[str] = []
        self._running = False
        os.chmod(self.root, 0o755)  # postfix's own processes (user postfix) must reach it
        self._make_directories()
        self.maillog.touch()

    def _make_directories(self) -> None:
        """The tree `postfix check` would create (as in postfix-files), made directly: the
        check walks the whole installation and costs ~3 s per start, master alone ~0.1 s."""
        owner = pwd.getpwnam(self.params["mail_owner"])
        postdrop = grp.getgrnam(self.params["setgid_group"]).gr_gid
        layout = {"etc": (0, 0, 0o755), "queue": (0, 0, 0o755), "queue/pid": (0, 0, 0o755)}
        layout["data"] = (owner.pw_uid, owner.pw_gid, 0o700)
        queues = ("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming")
        for name in (*queues, "private", "saved", "trace"):
            layout[f"queue/{name}"] = (owner.pw_uid, 0, 0o700)
        layout["queue/maildrop"] = (owner.pw_uid, postdrop, 0o730)
        layout["queue/public"] = (owner.pw_uid, postdrop, 0o710)
        for name, (uid, gid, mode) in layout.items():
            path = self.root / name
            path.mkdir()
            os.chown(path, uid, gid)
            os.chmod(path, mode)

    def _base_params(self) -> dict[str, str]:
        defaults = subprocess.run(
            [
                str(Path(self.command_dir) / "postconf"),
                "-d",
                "-h",
                "daemon_directory",
                "shlib_directory",
                "meta_directory",
                "mail_owner",
                "setgid_group",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        daemon_dir, shlib_dir, meta_dir, owner, setgid = defaults
        return {
            "compatibility_level": "3.6",
            "config_directory": str(self.root / "etc"),
            "queue_directory": str(self.root / "queue"),
            "data_directory": str(self.root / "data"),
            "command_directory": self.command_dir,
            "daemon_directory": daemon_dir,
            "shlib_directory": shlib_dir,
            "meta_directory": meta_dir,
            "mail_owner": owner,
            "setgid_group": setgid,
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root),
            "myhostname": "mta.mailticket-test.localdomain",
            "mydestination": "",
            "inet_interfaces": self.host,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "alias_maps": "",
            "alias_database": "",
            "smtp_dns_support_level": "disabled",
            "default_transport": "error:5.1.2 no route in this test Postfix",
            "relay_transport": "error:5.1.2 no route in this test Postfix",
            "transport_maps": f"texthash:{self.root / 'etc' / 'transport'}",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "5s",
        }

    # -- configuration -------------------------------------------------------------------

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    def configure(self, **params: str) -> None:
        """Set main.cf parameters (names as in postconf(5)); restarts a running instance."""
        self.params.update(params)
        self._apply()

    def add_service(self, *lines: str) -> None:
        """Append a master.cf entry: its first line, then any `flags=... argv=...` lines."""
        first, *rest = lines
        self.services.append("\n".join([first, *(f"  {line.strip()}" for line in rest)]))
        self._apply()

    def route(self, domain: str, nexthop: str) -> None:
        """A transport_maps entry: mail for `domain` goes to `nexthop` (e.g. `lmtp:inet:H:P`)."""
        self.routes[domain] = nexthop
        self._apply()

    def relay_to(self, port: int, *, lmtp: bool = False, host: str = LOCALHOST) -> None:
        """Send all mail without a route to a loopback SMTP (or LMTP) listener."""
        nexthop = f"lmtp:inet:{host}:{port}" if lmtp else f"smtp:[{host}]:{port}"
        self.configure(default_transport=nexthop, relay_transport=nexthop)

    def _write_config(self) -> None:
        etc = self.config_dir
        (etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self.params.items()))
        master = _POSTFIX_MASTER_CF.format(host=self.host, port=self.port)
        (etc / "master.cf").write_text(master + "".join(f"{s}\n" for s in self.services))
        (etc / "transport").write_text("".join(f"{d} {n}\n" for d, n in self.routes.items()))
        # master waits (in 0.3 s steps) until main.cf is a few seconds old; date it back.
        past = time.time() - 10
        for name in ("main.cf", "master.cf", "transport"):
            os.utime(etc / name, (past, past))

    def _apply(self) -> None:
        """Write the config; restart a running instance, which (unlike `postfix reload`, whose
        old services linger a while) makes the new config apply to the very next message."""
        self._write_config()
        if self._running:
            self.restart()

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> Postfix:
        """Start on a free port (retrying if it is taken in between); wait for the 220 greeting."""
        if self._running:
            return self
        last: ServerStartError | None = None
        for _ in range(5):
            self.port = free_port()
            try:
                return self._start_master()
            except ServerStartError as exc:
                if "in use" not in str(exc):
                    raise
                last = exc
        assert last is not None
        raise last

    def restart(self) -> Postfix:
        """Stop and start again on the same port; queued mail stays queued."""
        self.stop()
        return self._start_master()

    def _start_master(self) -> Postfix:
        self._write_config()
        # `master -w` returns once the daemon is initialised (0) or has failed (non-zero).
        done = subprocess.run(
            [str(Path(self.params["daemon_directory"]) / "master"), "-c", str(self.config_dir), "-w"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.start_timeout,
        )
        if done.returncode != 0:
            raise ServerStartError(
                f"postfix failed on {self.host}:{self.port}: {done.stdout}{done.stderr}\n{self.log_tail()}"
            )
        self._running = True
        _LIVE_SERVERS.add(self)
        try:
            _wait_for_greeting(self.host, self.port, b"220", self.start_timeout, self.log_tail)
        except BaseException:
            self.stop()
            raise
        return self

    def master_pid(self) -> int | None:
        try:
            return int((self.root / "queue" / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master by its pid (it ends its services) and wait until all are gone."""
        self._running = False
        pid = self.master_pid()
        if pid is None or not _pid_alive(pid):
            return
        children = _child_pids(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(_pid_alive(p) for p in [pid, *children]) and time.monotonic() < deadline:
            time.sleep(0.01)
        for p in [pid, *children]:
            if _pid_alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)

    def close(self) -> None:
        """Stop the instance and delete its directory."""
        self.stop()
        _LIVE_SERVERS.discard(self)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Postfix:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- mail and queue ------------------------------------------------------------------

    def send(self, raw: bytes, mail_from: str, rcpt_tos: Sequence[str]) -> None:
        """Hand one message to the instance's smtpd, as a neighbouring MTA would."""
        with smtplib.SMTP(self.host, self.port, timeout=30) as client:
            client.sendmail(mail_from, list(rcpt_tos), raw)

    def queue(self) -> list[dict[str, Any]]:
        """The queue as `postqueue -j` reports it: one dict per message (queue_name, recipients...)."""
        out = subprocess.run(
            [str(Path(self.command_dir) / "postqueue"), "-c", str(self.config_dir), "-j"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        """Retry every deferred message now (`postqueue -f`)."""
        subprocess.run(
            [str(Path(self.command_dir) / "postqueue"), "-c", str(self.config_dir), "-f"],
            capture_output=True,
            check=True,
            timeout=30,
        )

    def log(self) -> str:
        return self.maillog.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Block until a maillog line matches `pattern` (a regex); return the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log().splitlines():
                match = regex.search(line)
                if match:
                    return match
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no maillog line matched {pattern!r} in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------

PG_HOST = os.environ.get("MAILTICKET_TEST_PGHOST", LOCALHOST)
PG_PORT = int(os.environ.get("MAILTICKET_TEST_PGPORT", "5432"))
# Set to 1 to use a private cluster even where a PostgreSQL answers on PG_HOST:PG_PORT.
FORCE_PRIVATE_PG = os.environ.get("MAILTICKET_TEST_PG_PRIVATE", "") not in ("", "0")


class PostgresUnavailable(RuntimeError):
    """PostgreSQL is required for the postgres tests; they fail (never skip) without it."""


def postgres_bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: Debian's newest /usr/lib/postgresql/N/bin, else PATH."""
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if p.parts[-3].isdigit()),
        key=lambda p: int(p.parts[-3]),
    )
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster: `initdb` in a temp dir, `pg_ctl` on a free loopback port.

    Trust auth, superuser `postgres`, fsync off (the data is thrown away). PostgreSQL refuses
    to run as root, so under root every command runs as the `postgres` system user (the
    server package creates it) through runuser; otherwise as the current user.
    """

    def __init__(self, *, start_timeout: float = 60.0) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise PostgresUnavailable(
                "no PostgreSQL answers and initdb is not installed (apt-get install -y postgresql)"
            )
        self.bin_dir = bin_dir
        self.host = LOCALHOST
        self.port = 0
        self.superuser = "postgres"
        self.start_timeout = start_timeout
        self.root = Path(tempfile.mkdtemp(prefix="mailticket-pg-"))
        self.data = self.root / "data"
        self._as = ["runuser", "-u", _unprivileged_user(), "--"] if os.geteuid() == 0 else []
        if self._as:
            os.chmod(self.root, 0o755)
            account = pwd.getpwnam(self._as[2])
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            self.superuser,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(self.bin_dir / tool), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.start_timeout,
            cwd=self.root,
        )
        if done.returncode != 0:
            raise PostgresUnavailable(
                f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> PrivatePostgres:
        """Start on a free port (retrying if taken in between); returns once it accepts connections."""
        last: PostgresUnavailable | None = None
        for _ in range(5):
            self.port = free_port()
            options = (
                f"-h {self.host} -p {self.port} -k {self.root} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off"
            )
            try:
                self._run(
                    "pg_ctl",
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log_path),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(int(self.start_timeout)),
                    "start",
                )
            except PostgresUnavailable as exc:
                last = exc
                if "in use" not in str(exc):
                    break
                continue
            _LIVE_SERVERS.add(self)
            return self
        assert last is not None
        raise last

    def stop(self) -> None:
        """Stop the cluster (fast shutdown: open sessions are ended) and wait for it."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        """Stop the cluster and delete its directory."""
        try:
            self.stop()
        finally:
            _LIVE_SERVERS.discard(self)
            shutil.rmtree(self.root, ignore_errors=True)


def _unprivileged_user() -> str:
    """The account a root-run test server drops to: `postgres` if the package made it."""
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PostgresUnavailable("as root, PostgreSQL needs an unprivileged account (postgres or nobody)")


def _port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


_endpoint: tuple[str, int] | None = None
_endpoint_lock = threading.Lock()


def postgres_endpoint() -> tuple[str, int]:
    """Host and port of the PostgreSQL the tests use, decided once per process.

    The server on PG_HOST:PG_PORT if one answers there and MAILTICKET_TEST_PG_PRIVATE is
    unset; otherwise a private cluster, started now and stopped when the process exits.
    """
    global _endpoint
    with _endpoint_lock:
        if _endpoint is None:
            if not needs_private_postgres():
                _endpoint = (PG_HOST, PG_PORT)
            else:
                private = PrivatePostgres().start()
                _endpoint = (private.host, private.port)
        return _endpoint


def needs_private_postgres() -> bool:
    """True when the tests will start their own cluster (so initdb must be installed)."""
    return FORCE_PRIVATE_PG or not _port_answers(PG_HOST, PG_PORT)


def _admin_connect() -> tuple[Any, str, str]:
    """Autocommit psycopg connection to a maintenance DB; returns it, the role used and host:port."""
    import psycopg

    host, port = postgres_endpoint()
    users = ["postgres"]
    with contextlib.suppress(Exception):
        users.append(getpass.getuser())
    candidates = dict.fromkeys((u, db) for u in users for db in ("postgres", "test", u))
    errors: list[str] = []
    for user, dbname in candidates:
        try:
            conn = psycopg.connect(
                host=host,
                port=port,
                user=user,
                dbname=dbname,
                autocommit=True,
                connect_timeout=5,
            )
        except psycopg.OperationalError as exc:
            message = " ".join(str(exc).split())
            errors.append(f"{user}@{dbname}: {message}")
            if "refused" in message or "timeout" in message:
                break  # nothing listening: other roles/databases will not help
            continue
        return conn, user, f"{host}:{port}"
    raise PostgresUnavailable(
        f"PostgreSQL at {host}:{port} refused the test roles (trust auth expected). "
        "Tried: " + " | ".join(errors)
    )


@contextlib.contextmanager
def postgres_database(prefix: str = "mailticket_test", template: str | None = None) -> Iterator[str]:
    """Create a fresh, randomly named database; yield its SQLAlchemy URL; drop it afterwards.

    Runs never see each other's rows. `template`: a database to copy (one nobody is connected
    to), e.g. one already migrated. Uses `postgres_endpoint()` (a private cluster where no
    PostgreSQL answers); raises PostgresUnavailable (never skips) if neither works.
    """
    from psycopg import sql

    conn, user, address = _admin_connect()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        create = sql.SQL("{} TEMPLATE {}").format(create, sql.Identifier(template))
    try:
        conn.execute(create)
    except BaseException:
        conn.close()
        raise
    try:
        yield f"postgresql+psycopg://{user}@{address}/{name}"
    finally:
        try:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        finally:
            conn.close()


# --------------------------------------------------------------------------------------------
# System packages
# --------------------------------------------------------------------------------------------


def _sbin(name: str) -> bool:
    return shutil.which(name) is not None or os.access(f"/usr/sbin/{name}", os.X_OK)


# Server name (as pytest marks it) -> Debian package and whether its binaries are here.
SERVER_PACKAGES: dict[str, tuple[str, Callable[[], bool]]] = {
    "dovecot": ("dovecot-imapd", lambda: _sbin("dovecot")),
    "postfix": ("postfix", lambda: _sbin("postfix")),
    "opendkim": ("opendkim", lambda: _sbin("opendkim")),
    "postgres": ("postgresql", lambda: postgres_bin_dir() is not None),
    "chromium": ("chromium", lambda: shutil.which("chromium") is not None),
}


def _missing(servers: Iterable[str]) -> list[str]:
    return sorted({SERVER_PACKAGES[s][0] for s in servers if not SERVER_PACKAGES[s][1]()})


def ensure_server_packages(servers: Iterable[str]) -> None:
    """Install the Debian packages of `servers` that are missing, or say which ones to install.

    As root with apt-get, runs `apt-get update` and a non-interactive `apt-get install -y`
    (under a file lock, so parallel test workers install once). Otherwise raises one
    ServerStartError naming every missing package: the suite never skips a server's tests.
    """
    wanted = list(servers)
    if not _missing(wanted):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServerStartError(
            "the test suite runs real servers; install their packages first (as root): "
            f"apt-get install -y {' '.join(_missing(wanted))}"
        )
    lock_path = Path(tempfile.gettempdir()) / "mailticket-test-apt.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = _missing(wanted)
        if not missing:
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", *missing],
        ):
            done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if done.returncode != 0:
                output = f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
                raise ServerStartError(f"{' '.join(command)} failed ({done.returncode}):\n{output}")
    if _missing(wanted):
        raise ServerStartError(f"still missing after apt-get install: {' '.join(_missing(wanted))}")
