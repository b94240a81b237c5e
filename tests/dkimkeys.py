"""A DKIM test key and the DNS that publishes it: signing as an agent's mail server would."""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dkim


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
