"""Config reload while running: a valid edit takes effect, an invalid one is refused.

Routing is checked through the real Pipeline: the watcher's callback swaps
ctx.config, exactly as the daemon does.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from sqlmodel import Session, select

from mailticket.config import Config
from mailticket.context import AppContext
from mailticket.service.reload import ConfigWatcher
from mailticket.storage.tables import Ticket
from tests.factories import ingest, mail, make_ctx

CONFIG = """
[service]
data_dir = "{data}"
support_address = "support@example.com"

[security]
reply_token_secret = "test-secret"

[[departments]]
name = "general"
address = "support@example.com"
agents = ["alice@example.com"]

[[departments]]
name = "billing"
address = "billing@example.com"
agents = ["bob@example.com"]

[[agents]]
email = "alice@example.com"

[[agents]]
email = "bob@example.com"

[[rules]]
name = "To billing"
conditions = [{{ field = "subject", op = "contains", value = "{word}" }}]
actions = {{ department = "{department}" }}
"""


def write(path: Path, word: str, department: str = "billing") -> None:
    path.write_text(CONFIG.format(data=path.parent / "data", word=word, department=department))


def department_of(ctx: AppContext, subject: str) -> str:
    ref = ingest(ctx, mail(subject=subject)).ticket_ref
    with Session(ctx.engine) as session:
        return session.exec(select(Ticket.department).where(Ticket.ref == ref)).one()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, ConfigWatcher, AppContext]:
    path = tmp_path / "mailticket.toml"
    write(path, "invoice")
    ctx = make_ctx(tmp_path)

    def swap(config: Config) -> None:
        ctx.config = config

    watcher = ConfigWatcher(path, on_change=swap)
    ctx.config = watcher.current()
    return path, watcher, ctx


def test_valid_edit_takes_effect_without_restart(setup: tuple[Path, ConfigWatcher, AppContext]) -> None:
    path, watcher, ctx = setup
    assert department_of(ctx, "Invoice 1") == "billing"
    assert department_of(ctx, "Refund 1") == "general"
    write(path, "refund")
    assert watcher.check() is True
    assert ctx.config is watcher.current()
    assert department_of(ctx, "Invoice 2") == "general"
    assert department_of(ctx, "Refund 2") == "billing"
    assert watcher.check() is False  # nothing changed since


def test_invalid_edit_is_refused_and_the_old_rules_still_route(
    setup: tuple[Path, ConfigWatcher, AppContext], caplog: pytest.LogCaptureFixture
) -> None:
    path, watcher, ctx = setup
    good = watcher.current()
    write(path, "refund", department="sales")
    with caplog.at_level(logging.INFO, logger="mailticket.config"):
        assert watcher.check() is False
    assert watcher.current() is good and ctx.config is good
    assert watcher.last_error is not None
    assert watcher.last_error.problems == [
        "rules[0] ('To billing').actions.department: unknown department 'sales'; known: billing, general"
    ]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"config not reloaded: {path}: rules[0] ('To billing').actions.department: unknown department "
        "'sales'; known: billing, general"
    ]
    assert "the last good config stays in force" in caplog.text
    assert department_of(ctx, "Invoice 3") == "billing"  # the old rules still route
    assert department_of(ctx, "Refund 3") == "general"

    path.write_text('[[rules]]\nname = "half-written')  # an editor mid-save: not TOML
    assert watcher.check() is False
    assert watcher.last_error is not None and watcher.last_error.problems[0].startswith("not valid TOML")
    path.unlink()  # save-by-rename: the file is briefly gone
    assert watcher.check() is False
    assert department_of(ctx, "Invoice 4") == "billing"

    write(path, "refund")  # fixed
    assert watcher.check() is True
    assert watcher.last_error is None
    assert department_of(ctx, "Refund 4") == "billing"


def test_watch_reloads_on_file_change(setup: tuple[Path, ConfigWatcher, AppContext]) -> None:
    path, watcher, ctx = setup
    changed = threading.Event()
    swap = watcher.on_change
    assert swap is not None

    def on_change(config: Config) -> None:
        swap(config)
        changed.set()

    watcher.on_change = on_change
    stop = threading.Event()
    thread = threading.Thread(target=watcher.watch, args=(stop,), kwargs={"debounce_ms": 50}, daemon=True)
    thread.start()
    try:
        # The watcher may not be listening yet when the first write lands; keep editing until seen.
        for attempt in range(50):
            write(path, f"refund{attempt % 2}")
            if changed.wait(0.3):
                break
        assert changed.is_set(), "watcher never saw the edit"
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert ctx.config.rules[0].conditions[0].value in ("refund0", "refund1")
    assert department_of(ctx, "Invoice 5") == "general"


def test_a_file_caught_mid_write_is_read_once_it_settles(
    setup: tuple[Path, ConfigWatcher, AppContext],
) -> None:
    path, watcher, _ctx = setup
    full = CONFIG.format(data=path.parent / "data", word="refund", department="billing")
    path.write_text(full[: len(full) // 2])  # an editor part-way through an in-place write
    finish = threading.Timer(0.02, path.write_text, args=(full,))
    finish.start()
    try:
        assert watcher.check()
    finally:
        finish.join()
    assert watcher.current().rules[0].conditions[0].value == "refund"
    assert watcher.last_error is None
