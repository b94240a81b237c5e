"""mailticket: a help desk that lives in the mailbox."""

__version__ = "0.1.0"

CONFIG_ENV = "MAILTICKET_CONFIG"  # names the config file when --config is not given
