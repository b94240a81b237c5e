"""The HTTP client the OAuth flows use: bounded in time and size, never following redirects.

A token endpoint is a remote server that the daemon trusts with nothing: a slow one
must not hang a poll (per-read timeouts plus a deadline for the whole answer, so a
server dribbling a byte at a time is cut off too), and a huge one must not fill
memory (the body is counted as it streams and refused past `MAX_BYTES`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx2

MAX_BYTES = 256 * 1024  # real token answers are a few KiB (Microsoft's with an id_token ~6 KiB)
TIMEOUT = httpx2.Timeout(10.0, connect=5.0)
TOTAL_SECONDS = 30.0


class ResponseTooLarge(httpx2.HTTPError):
    """The answer passed MAX_BYTES."""


class ResponseTooSlow(httpx2.HTTPError):
    """The whole answer took longer than TOTAL_SECONDS."""


class _BoundedStream(httpx2.SyncByteStream):
    def __init__(
        self, inner: httpx2.SyncByteStream, url: str, limit: int, seconds: float, started: float
    ) -> None:
        self.inner, self.url, self.limit, self.seconds = inner, url, limit, seconds
        self.deadline = started + seconds

    def __iter__(self) -> Iterator[bytes]:
        seen = 0
        for chunk in self.inner:
            seen += len(chunk)
            if seen > self.limit:
                raise ResponseTooLarge(f"{self.url}: answer larger than {self.limit} bytes")
            if time.monotonic() > self.deadline:
                raise ResponseTooSlow(f"{self.url}: answer not complete after {self.seconds:.0f} s")
            yield chunk

    def close(self) -> None:
        self.inner.close()


class BoundedTransport(httpx2.BaseTransport):
    """Wraps httpx's transport: refuses a declared oversize at once, counts and times the rest."""

    def __init__(self, limit: int, total_seconds: float) -> None:
        self.inner = httpx2.HTTPTransport(retries=0)
        self.limit, self.total_seconds = limit, total_seconds

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        started = time.monotonic()
        response = self.inner.handle_request(request)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            response.close()
            raise ResponseTooLarge(f"{request.url}: answer declares {declared} bytes (limit {self.limit})")
        assert isinstance(response.stream, httpx2.SyncByteStream)
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_BoundedStream(response.stream, str(request.url), self.limit, self.total_seconds, started),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.inner.close()


def client_options() -> dict[str, object]:
    """Keyword arguments for an httpx-based client (authlib's OAuth2Client passes them on)."""
    transport = BoundedTransport(MAX_BYTES, TOTAL_SECONDS)
    return {"transport": transport, "timeout": TIMEOUT, "follow_redirects": False}
