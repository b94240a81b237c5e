"""Fixtures the OAuth tests share: the loopback authorization server and a Dovecot that asks it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.authserver import AuthServer
from tests.servers import Dovecot


@pytest.fixture
def auth() -> Iterator[AuthServer]:
    with AuthServer() as server:
        yield server


@pytest.fixture
def oauth_dovecot(auth: AuthServer) -> Iterator[Dovecot]:
    server = Dovecot(introspection_url=auth.url("introspect"))
    try:
        server.start()
        yield server
    finally:
        server.close()
