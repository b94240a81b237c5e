"""The command line; `mailticket.cli:main` is the console entry point."""

from mailticket.cli.main import main

__all__ = ["main"]
