"""The error tree of mailticket.

    MailticketError
    ├── ConfigError            the config file is wrong; the daemon does not start
    └── OperationError         something failed while working; the loop decides
        ├── IntakeError        a source could not be read (mailbox, folder, UID)
        │   └── ParseError     bytes that cannot become a ParsedMessage
        ├── StoreError         the database refused a transaction
        └── DeliveryError      outbound mail could not be handed over
            ├── TemporaryDeliveryError   4xx or connection trouble: retry later
            └── PermanentDeliveryError   5xx: give up and show the answer

Parse *problems* that still leave a usable message are not errors: they are
recorded as defects on the ParsedMessage, the way the stdlib `email` does.
"""

from __future__ import annotations


class MailticketError(Exception):
    """Base of every error mailticket raises on purpose."""


class ConfigError(MailticketError):
    """A config file problem; `problems` holds one line per mistake."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


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


class StoreError(OperationError):
    pass


class DeliveryError(OperationError):
    pass


class TemporaryDeliveryError(DeliveryError):
    pass


class PermanentDeliveryError(DeliveryError):
    pass
