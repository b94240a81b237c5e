"""Builders shared by the tests: a config in a temp dir, an app context, test messages."""

from __future__ import annotations

import atexit
import email
import email.policy
import functools
import itertools
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import tomli_w
from sqlalchemy.engine import make_url

from mailticket.app import build
from mailticket.config import Config, load_config
from mailticket.context import AppContext
from mailticket.models import Outcome, ParsedMessage, RawMail
from mailticket.outbound.render import Renderer
from mailticket.pipeline.parse import parse
from mailticket.process import Pipeline
from mailticket.storage.db import make_engine, migrate

# The test corpus ships with the repository (tests/corpus, pinned by its SHA256SUMS);
# MAILTICKET_CORPUS points the suite at another copy, e.g. a candidate update before it is copied in.
CORPUS = Path(os.environ.get("MAILTICKET_CORPUS") or Path(__file__).resolve().parent / "corpus")

BASE: dict[str, Any] = {
    # One parser worker, not one per core: every daemon and CLI process of the suite would spawn
    # two, a second each on this kind of machine. Tests of several workers ask for them.
    "service": {"support_address": "support@example.com", "support_name": "Example Support", "workers": 1},
    "smtp": {"transport": "file"},
    "security": {
        "trusted_authserv_ids": ["mx.example.com"],
        "agent_auth": ["dkim", "dmarc"],
        "reply_token_secret": "test-secret",
    },
    "departments": [
        {"name": "general", "address": "support@example.com", "agents": ["alice@example.com"],
         "sla": "standard"},
        {"name": "billing", "address": "billing@example.com", "agents": ["bob@example.com"]},
    ],
    "sla": [{"name": "standard", "first_response": "8h", "resolution": "3d"}],
    "agents": [{"email": "alice@example.com", "name": "Alice"}, {"email": "bob@example.com", "name": "Bob"}],
}


def config_dict(data_root: Path, db_url: str | None = None, **sections: Any) -> dict[str, Any]:
    """BASE with whole sections replaced by keyword, data under data_root/data."""
    raw = {**BASE, **sections}
    service = {**BASE["service"], **sections.get("service", {}), "data_dir": str(data_root / "data")}
    if db_url:
        service["database_url"] = db_url
    raw["service"] = service
    return raw


def make_config(tmp_path: Path, db_url: str | None = None, **sections: Any) -> Config:
    return Config.model_validate(config_dict(tmp_path, db_url, **sections))


def write_config(path: Path, *, db_url: str | None = None, **sections: Any) -> Path:
    """The same config as make_config, as the TOML file an admin would write (for CLI and daemon tests)."""
    path.write_text(tomli_w.dumps(config_dict(path.parent, db_url, **sections)))
    return path


class Clock:
    """A controllable clock for SLA and back-off tests."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # a Monday

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@functools.cache
def _sqlite_at_head() -> Path:
    """A SQLite database at the schema's head, migrated once per test process: a fresh
    migration costs 0.2-1 s here, and most tests are not about migrations."""
    folder = Path(tempfile.mkdtemp(prefix="mailticket-schema-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / "head.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


def sqlite_at_head(path: Path) -> Path:
    """A new SQLite database file at `path` with the schema at head (a copy of a migrated one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_sqlite_at_head(), path)
    return path


def make_ctx(tmp_path: Path, db_url: str | None = None, clock: Callable[[], datetime] | None = None,
             **sections: Any) -> AppContext:
    """The app on a config of BASE and `sections`; a SQLite database that does not exist yet
    starts at the schema's head (what `build` would migrate it to)."""
    config = make_config(tmp_path, db_url, **sections)
    url = make_url(config.service.db_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        sqlite_at_head(Path(url.database))
    ctx = built(config)
    if clock is not None:
        ctx.clock = clock
    return ctx


def load_ctx(path: Path | str) -> AppContext:
    """`build(load_config(path))`, as `mailticket run` makes it, for tests of a config file."""
    return built(load_config(path))


def built(config: Config) -> AppContext:
    """`build(config)`, with the packaged templates checked once per test process."""
    ctx = build(config, sends=False)
    if config.service.templates_dir is not None:
        ctx.renderer.check()  # as build(config) does: an admin's templates can change
    else:
        _check_packaged_templates()
    return ctx


@functools.cache
def _check_packaged_templates() -> None:
    """`build`'s check of the packaged templates, once per test process: they cannot change
    under it, and compiling and rendering every one of them cost most of a simple test here."""
    Renderer().check()


_ids = itertools.count(1)


def mail(
    *,
    sender: str = "Carol Customer <carol@customer.example>",
    to: str = "support@example.com",
    subject: str = "Cannot log in",
    body: str = "Hello, I cannot log in.\n",
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
    headers: dict[str, str] | None = None,
    attachments: list[tuple[str, str, bytes]] = (),  # type: ignore[assignment]
) -> bytes:
    """A well-formed test message as bytes."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    msg["Message-ID"] = f"<{message_id or f'test-{next(_ids)}@customer.example'}>"
    if in_reply_to:
        msg["In-Reply-To"] = f"<{in_reply_to}>"
    if references:
        msg["References"] = references
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    for filename, ctype, data in attachments:
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def ingest(ctx: AppContext, data: bytes, source: str = "test", **raw: Any) -> Outcome:
    return Pipeline(ctx).process(RawMail(data=data, source=source, **raw))


def body_text(msg: EmailMessage) -> str:
    """A sent notice's text part, with LF line ends."""
    part = msg.get_body(("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")  # type: ignore[attr-defined]


def body_html(msg: EmailMessage) -> str:
    """A sent notice's HTML part, with LF line ends."""
    part = msg.get_body(("html",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")  # type: ignore[attr-defined]


# A parser worker that misbehaves on cue (`ParsePool(..., parser=misbehaving_parse)`): a message
# whose body is SPIN never finishes (the CPU limit ends its worker), one whose body is DIE kills
# its worker with SIGKILL as a crash or an operator would, one whose body is DIE_ONCE and a path
# does so only while that file does not exist (and creates it); anything else is parsed as usual.
SPIN, DIE, DIE_ONCE = b"spin-forever", b"die-now", b"die-once:"


def misbehaving_parse(raw: bytes, *, max_bytes: int) -> ParsedMessage:
    body = raw.rstrip()
    if body.endswith(SPIN):
        while True:
            pass
    if body.endswith(DIE):
        os.kill(os.getpid(), signal.SIGKILL)
    if DIE_ONCE in body:
        # The path as the message's text says it: a long one is quoted-printable, split by "=" breaks.
        text = email.message_from_bytes(raw, policy=email.policy.default).get_content()
        marker = Path(text.rstrip().rsplit(DIE_ONCE.decode(), 1)[1])
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    return parse(raw, max_bytes=max_bytes)
