"""The error tree of mailticket: every exception the package raises on purpose.

    MailticketError
    ├── ConfigError                  the config file is wrong; the daemon does not start
    ├── DurationError                a duration like '8h' that is not one (also a ValueError,
    │                                so pydantic validators report it as a field error)
    ├── TicketActionError            a staff or mail action refused: unknown agent, department,
    │                                priority or status, a requester that is no address
    └── OperationError               something failed while working; the loop decides
        ├── IntakeError              a source could not be read (mailbox, folder, UID)
        │   └── ParseError           bytes that cannot become a ParsedMessage
        ├── StoreError               the database or the blob store refused a write
        │   ├── SchemaConflict       the schema is another version's: a newer one migrated it,
        │   │                        or this one must not migrate while older daemons run
        │   └── StoreUnavailable     the environment, not the message: pause the source, retry
        │       ├── DatabaseUnavailable  down, unreachable or locked too long
        │       └── DiskUnavailable      data_dir full, read-only or not writable (ENOSPC, EROFS...)
        ├── RuleTimeoutError         a rule's regex ran past its time bound on one message:
        │                            that condition does not hold (the message goes on)
        ├── ScheduleError            an SLA plan cannot place a due time
        ├── OAuthError               an OAuth 2.0 mailbox has no token (`fix` says what to do)
        │   ├── GrantError           no usable grant: `mailticket auth login NAME` is needed
        │   ├── TokenStoreError      the token file is unsafe or unreadable; it is left as it is
        │   └── TokenEndpointError   the token endpoint failed (timeout, garbage): retried
        └── DeliveryError            outbound mail could not be handed over
            ├── TemporaryDeliveryError   4xx or connection trouble: retry later
            │   └── ConnectionDown       no usable SMTP connection: stop this flush
            └── PermanentDeliveryError   5xx: give up and show the answer
                ├── UndeliverableAddress an address SMTP cannot carry
                └── HeaderValueError     a header value a notice cannot carry (CR/LF, 8-bit)

Parse *problems* that still leave a usable message are not errors: they are recorded as
defects on the ParsedMessage, the way the stdlib `email` does. Database errors become
`DatabaseUnavailable` once, where SQLAlchemy reports them (`storage.db.make_engine`); an
IntegrityError stays as it is, since the pipeline retries on it. The blob store turns every
OSError of a write into `DiskUnavailable`. A `StoreUnavailable` is never charged to the message
in hand: intake pauses its source and resumes once the fault ends (`intake/pause.py`).

Expected errors (the ones above) are logged as one line naming where they happened;
anything else is a bug and is logged with its traceback.
"""

from __future__ import annotations


class MailticketError(Exception):
    """Base of every error mailticket raises on purpose."""


class ConfigError(MailticketError):
    """A config file problem; `problems` holds one line per mistake, `lines` the file's line of each
    (None where unknown), printed compiler-style as `file:line: problem` so editors can jump there."""

    def __init__(self, path: str, problems: list[str], lines: list[int | None] | None = None) -> None:
        self.path = path
        self.problems = problems
        self.lines = lines if lines is not None else [None] * len(problems)  # 1-based, where known
        super().__init__("\n".join(
            f"{path}:{line}: {p}" if line else f"{path}: {p}"
            for p, line in zip(problems, self.lines, strict=True)
        ))


class DurationError(MailticketError, ValueError):
    """Not a duration: the text and the fix."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(
            f"bad duration {text!r}: write a number and a unit s, m, h, d or w, e.g. '8h' or '1d12h'"
        )


class TicketActionError(MailticketError):
    """A refused action; `ticket` names the ticket acted on, when there is one."""

    def __init__(self, message: str, *, ticket: str | None = None) -> None:
        self.ticket = ticket
        super().__init__(f"{message} (ticket {ticket})" if ticket else message)


class OperationError(MailticketError):
    """A failure while running; carries where it happened."""


class IntakeError(OperationError):
    def __init__(self, message: str, *, mailbox: str | None = None, uid: int | None = None):
        self.mailbox = mailbox
        self.uid = uid
        where = ", ".join(
            p for p in (f"mailbox={mailbox}" if mailbox else "", f"uid={uid}" if uid else "") if p
        )
        super().__init__(f"{message} ({where})" if where else message)


class ParseError(IntakeError):
    """The bytes are not a message we can store as a ticket entry."""


class RuleTimeoutError(OperationError):
    """A rule's regex gave up on a field of one message: the condition is taken as not holding.

    The rules engine is pure, so it does not raise or log this: it returns it on the Decision
    (`rule_errors`), and the stage that stores the message logs it and records it in an event.
    """

    def __init__(self, rule: str, field: str, condition: str, timeout_ms: int) -> None:
        self.rule = rule
        self.field = field
        self.condition = condition
        self.timeout_ms = timeout_ms
        super().__init__(
            f"rule {rule!r}: {condition} timed out after {timeout_ms} ms on the {field} field; "
            "taken as no match (simplify the pattern, see docs/rules.md)"
        )

    def as_event(self) -> dict[str, object]:
        """The JSON an event records of it."""
        return {
            "rule": self.rule, "field": self.field, "condition": self.condition, "timeout_ms": self.timeout_ms
        }


class StoreError(OperationError):
    """The database or the blob store refused a write."""


class SchemaConflict(StoreError):
    """The database's schema is not this version's, and this process must not change it now:
    a newer version migrated it, or daemons of the older version still run on it."""


class StoreUnavailable(StoreError):
    """A fault of the environment: no message causes it and none is to blame for it."""


class DatabaseUnavailable(StoreUnavailable):
    """The database is down, unreachable or locked beyond its timeout: nothing was written."""


class DiskUnavailable(StoreUnavailable):
    """A blob could not be written under data_dir (disk full, read-only, no permission)."""

    def __init__(self, message: str, *, path: str, errno: int | None = None) -> None:
        self.path = path
        self.errno = errno
        super().__init__(f"{message} (path={path})")


class ScheduleError(OperationError):
    """An SLA plan's business hours cannot place a due time."""


class OAuthError(OperationError):
    """A mailbox with `auth = "oauth2"` has no access token; only that mailbox is affected."""

    def __init__(
        self, message: str, *, mailbox: str, fix: str | None = None, reason: str | None = None
    ) -> None:
        self.mailbox = mailbox
        self.fix = fix
        self.reason = reason  # the provider's own words (error code and description), when it gave some
        super().__init__(f"{message} (mailbox={mailbox})" + (f"; {fix}" if fix else ""))


class GrantError(OAuthError):
    """The provider refused the grant (revoked, expired, never obtained): log in again."""


class TokenStoreError(OAuthError):
    """The stored token cannot be used safely (permissions, corrupt JSON); nothing was changed."""


class TokenEndpointError(OAuthError):
    """The token endpoint did not answer usefully (down, slow, garbage, too large); try later."""


class DeliveryError(OperationError):
    """Outbound mail could not be handed over."""


class TemporaryDeliveryError(DeliveryError):
    """4xx or a lost connection: the notice is tried again later."""


class ConnectionDown(TemporaryDeliveryError):
    """No usable SMTP connection: the rest of the batch would fail the same way, so stop."""


class PermanentDeliveryError(DeliveryError):
    """5xx: no retry will help; the row fails with the server's answer."""


class UndeliverableAddress(PermanentDeliveryError):
    """An address we cannot put in an SMTP envelope (no domain, non-ASCII local part...)."""


class HeaderValueError(PermanentDeliveryError):
    """A header value a notice cannot carry: a line break (header injection) or raw 8-bit text."""
