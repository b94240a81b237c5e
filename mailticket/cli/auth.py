"""`mailticket auth login MAILBOX`: obtain and store the OAuth 2.0 grant of a mailbox."""

from __future__ import annotations

import sys
import webbrowser
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from mailticket.cli.state import State, pass_state
from mailticket.errors import OAuthError
from mailticket.oauth.store import TokenStore

if TYPE_CHECKING:
    from mailticket.oauth.flows import DevicePrompt


@click.group()
def auth() -> None:
    """OAuth 2.0 grants of the mailboxes with auth = "oauth2"."""


@auth.command("login")
@click.argument("mailbox")
@click.option("--paste", is_flag=True,
              help="Browser flow from another machine: paste the address the browser ends at.")
@click.option("--no-browser", is_flag=True, help="Print the sign-in address; do not open a browser.")
@pass_state
def auth_login(state: State, mailbox: str, paste: bool, no_browser: bool) -> None:
    """Sign in once for MAILBOX (device code, browser or client credentials) and store its tokens."""
    # authlib and its HTTP client load here, not on every command's start (~0.3 s).
    from mailticket.oauth.login import login

    config = state.config()
    box = next((m for m in config.mailboxes if m.name == mailbox), None)
    if box is None or box.oauth2 is None:
        names = ", ".join(m.name for m in config.mailboxes if m.oauth2 is not None) or "none"
        raise click.UsageError(f"no mailbox {mailbox!r} with auth = 'oauth2' in the config (those: {names})")

    def show(prompt: DevicePrompt) -> None:
        click.echo(prompt.message or f"To sign in as {box.username}, open {prompt.verification_uri} "
                   f"and enter the code {prompt.user_code}")
        click.echo(f"(the code is valid for {prompt.expires_in // 60} minutes; waiting...)")

    def open_url(url: str) -> None:
        click.echo(f"Sign in as {box.username} at:\n\n  {url}\n")
        if not (paste or no_browser):
            webbrowser.open(url)

    def pasted() -> str:
        return str(click.prompt("Paste the address your browser ended at"))

    try:
        token, aside = login(config.service.data_dir, box.name, box.oauth2, show=show, open_url=open_url,
                             paste=pasted if paste else None)
    except OAuthError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if aside is not None:
        click.echo(f"the unusable old token file was kept as {aside}")
    expires = (datetime.fromtimestamp(token.expires_at, UTC).isoformat(timespec="seconds")
               if token.expires_at else "unknown")
    click.echo(f"{box.name}: tokens stored in {TokenStore(config.service.data_dir).path(box.name)} "
               f"(access token expires {expires})")
    if token.refresh_token is None and token.flow != "client_credentials":
        click.echo("warning: the provider sent no refresh token, so this login lasts only until the access "
                   "token expires; for microsoft keep 'offline_access' in scopes", err=True)
