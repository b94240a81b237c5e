"""mailticket: a help desk that lives in the mailbox."""

__version__ = "0.1.0"
