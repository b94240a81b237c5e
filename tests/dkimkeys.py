"""A DKIM test key, the DNS that publishes it, and an OpenDKIM milter that verifies with it."""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import dkim

from tests.servers import ServerStartError, free_port


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    private_pem: bytes
    public_der: bytes

    @classmethod
    def generate(cls, folder: Path, domain: str = "example.com", selector: str = "test") -> DkimKey:
        """A fresh 2048-bit RSA key (openssl, ~0.1 s): no private key is kept in the repository."""
        key = folder / f"{selector}.{domain}.private"
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        der = subprocess.run(
            ["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"], check=True, capture_output=True
        ).stdout
        return cls(domain, selector, key.read_bytes(), der)

    @property
    def txt_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def txt_record(self) -> str:
        return f"v=DKIM1; k=rsa; p={base64.b64encode(self.public_der).decode()}"

    def dns(self, name: bytes, timeout: float = 5) -> bytes | None:
        """dkimpy's `dnsfunc`: this key's TXT record, nothing else exists."""
        return self.txt_record.encode() if name.rstrip(b".").lower() == self.txt_name.encode() else None

    def sign(self, raw: bytes) -> bytes:
        headers = [b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"references"]
        signature = dkim.sign(raw, self.selector.encode(), self.domain.encode(), self.private_pem,
                              include_headers=headers)
        return signature + raw


class OpenDkim:
    """A private OpenDKIM milter (package `opendkim`) verifying with `key` instead of DNS.

    The border-MTA recipe of docs/security.md: `AuthservID` is the id mailticket trusts, and
    OpenDKIM removes any incoming Authentication-Results carrying DKIM results under that id.
    `TestPublicKeys` stands in for DNS; `InternalHosts` names no real host, so loopback mail
    is verified rather than signed. Runs in the foreground as our child; stopped by its pid.
    Its files live in a temp dir of its own that the `opendkim` user can read (pytest's are
    private to root, and a key file it cannot read makes OpenDKIM add no result at all).
    """

    def __init__(self, key: DkimKey, authserv_id: str = "mx.example.com") -> None:
        self.folder = folder = Path(tempfile.mkdtemp(prefix="mailticket-opendkim-"))
        folder.chmod(0o755)
        self.port = free_port()
        (folder / "keys").write_text(f"{key.txt_name} {key.txt_record}\n")
        (folder / "internal").write_text("192.0.2.1\n")
        (folder / "opendkim.conf").write_text(
            f"Mode v\nSocket inet:{self.port}@127.0.0.1\nAuthservID {authserv_id}\n"
            f"TestPublicKeys {folder / 'keys'}\nInternalHosts {folder / 'internal'}\n"
            "AlwaysAddARHeader yes\nBackground no\nSyslog no\nUserID opendkim\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def milter(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    def start(self) -> OpenDkim:
        self.proc = subprocess.Popen(
            ["opendkim", "-x", str(self.folder / "opendkim.conf"), "-f"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self
            time.sleep(0.05)
        output = self.proc.stdout.read().decode(errors="replace") if self.proc.poll() is not None else ""
        self.stop()
        raise ServerStartError(f"opendkim did not listen on {self.port}: {output}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> OpenDkim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
