"""The running application's shared pieces, built once by `app.build()`.

Stages receive this instead of reaching for globals, so tests can give them
a controllable clock or a different database.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from mailticket.storage.blobs import Blobs
from mailticket.storage.tables import utcnow

if TYPE_CHECKING:  # names for the fields; each process imports only the pieces it uses
    from sqlalchemy import Engine

    from mailticket.config import Config
    from mailticket.dkim_verify import DnsLookup
    from mailticket.oauth.tokens import TokenSource
    from mailticket.outbound.render import Renderer


@dataclass
class AppContext:
    config: Config
    engine: Engine
    blobs: Blobs
    renderer: Renderer
    secret: bytes
    clock: Callable[[], datetime] = field(default=utcnow)
    dns: DnsLookup | None = None  # TXT look-ups for `verify_dkim`; None: dnspython (tests give a stub)

    @property
    def data_dir(self) -> Path:
        return self.config.service.data_dir

    @cached_property
    def tokens(self) -> TokenSource:
        """Access tokens of the mailboxes with auth = "oauth2" (and of SMTP borrowing one)."""
        from mailticket.oauth.store import TokenStore
        from mailticket.oauth.tokens import TokenSource

        return TokenSource(TokenStore(self.data_dir), self.engine)


def load_secret(config: Config) -> bytes:
    """The HMAC key for reply tokens: configured, or created once under data_dir and kept."""
    if config.security.reply_token_secret is not None:
        return config.security.reply_token_secret.get_secret_value().encode()
    path = config.service.data_dir / "reply_token.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()
