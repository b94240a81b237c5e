"""mailticket's own DKIM check (`[security] verify_dkim`), for a site without a filtering MTA.

With it, an agent's mail verifies by its DKIM signature alone: no header is trusted. It asks
DNS for the signers' keys, so it runs at the edge (the pipeline calls it before classify, and
only for mail whose From is a configured agent) and hands classify plain `AuthResult`s. The
DNS lookup is a parameter: dkimpy's own (through dnspython) by default, a stub in tests.
A key that cannot be fetched is `temperror`, a bad signature or key `fail`/`permerror`: for the
agent's domain every one of them refuses the mail, as a failing result from a trusted server does.
"""

from __future__ import annotations

from collections.abc import Callable

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from mailticket.models import AuthResult

OWN_AUTHSERV_ID = "mailticket"  # names our own results in reasons and events
MAX_SIGNATURES = 5  # each costs a DNS lookup and an RSA verification; real mail carries 1-3
DnsLookup = Callable[..., bytes | None]  # (name: bytes, timeout=...) -> TXT record or None


def dkim_results(
    raw: bytes, *, dns: DnsLookup | None = None, timeout: float = 5
) -> tuple[AuthResult, ...]:
    """One result per DKIM-Signature (topmost first): pass, fail, permerror or temperror."""
    try:
        checker = dkim.DKIM(raw, minkey=1024, timeout=timeout)
    except dkim.DKIMException:
        return ()
    signatures = [value for name, value in checker.headers if name.lower() == b"dkim-signature"]
    results = []
    for index, value in enumerate(signatures[:MAX_SIGNATURES]):
        try:
            domain = parse_tag_value(value).get(b"d", b"").decode("ascii").strip().lower() or None
        except (InvalidTagValueList, UnicodeDecodeError):
            domain = None
        results.append(AuthResult(OWN_AUTHSERV_ID, "dkim", _verify(checker, index, dns), domain))
    return tuple(results)


def _verify(checker: dkim.DKIM, index: int, dns: DnsLookup | None) -> str:
    try:
        ok = checker.verify(index) if dns is None else checker.verify(index, dnsfunc=dns)
    except dkim.DnsTimeoutError:
        return "temperror"
    except dkim.DKIMException:
        return "permerror"
    return "pass" if ok else "fail"
