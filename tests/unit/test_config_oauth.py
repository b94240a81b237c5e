"""The `oauth2` table and `[smtp] auth = "oauth2"`: every mistake is one line with the fix."""

from __future__ import annotations

import pytest

from mailticket.config import load_config
from mailticket.errors import ConfigError

BASE = """
[service]
data_dir = "/tmp/unused"

[[mailboxes]]
name = "support"
host = "outlook.office365.com"
username = "support@contoso.com"
{mailbox}

[smtp]
transport = "smtp"
{smtp}
"""

MICROSOFT = 'auth = "oauth2"\noauth2 = { provider = "microsoft", client_id = "abc" }'
OAUTH = 'auth = "oauth2"\noauth2 = '


def problems(mailbox: str, smtp: str = "") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config("x.toml", text=BASE.format(mailbox=mailbox, smtp=smtp))
    return info.value.problems


def test_valid_oauth_mailboxes_and_smtp() -> None:
    config = load_config("x.toml", text=BASE.format(mailbox=MICROSOFT, smtp='auth = "oauth2"\n'
                                                    'oauth2_mailbox = "support"'))
    box = config.mailboxes[0]
    assert box.oauth2 is not None and box.oauth2.chosen_flow == "device" and box.password is None
    assert config.smtp.oauth2_mailbox == "support"
    google = load_config("x.toml", text=BASE.format(
        mailbox=OAUTH + '{ provider = "google", client_id = "c", client_secret = "s" }', smtp=""))
    assert google.mailboxes[0].oauth2 is not None and google.mailboxes[0].oauth2.chosen_flow == "browser"


@pytest.mark.parametrize(
    ("mailbox", "expected"),
    [
        ('auth = "oauth2"', "auth = 'oauth2' needs an oauth2 table"),
        ("", "required key 'password' is missing"),
        (MICROSOFT + '\npassword = "x"', "password is not used with auth = 'oauth2'"),
        ('password = "x"\noauth2 = { provider = "microsoft", client_id = "abc" }', "set auth = 'oauth2'"),
        (OAUTH + '{ provider = "google", client_id = "c", flow = "device" }',
         "google's device flow does not grant mail access"),
        (OAUTH + '{ provider = "google", client_id = "c", flow = "client_credentials", '
         'client_secret = "s" }', "google offers no client-credentials grant"),
        (OAUTH + '{ provider = "microsoft", client_id = "c", flow = "client_credentials", '
         'tenant = "contoso.onmicrosoft.com" }', "needs client_secret"),
        (OAUTH + '{ provider = "microsoft", client_id = "c", flow = "client_credentials", '
         'client_secret = "s", tenant = "common" }', "needs tenant = your directory"),
        (OAUTH + '{ provider = "custom", client_id = "c", scopes = ["imap"], '
         'device_authorization_url = "https://idp.example/d" }', "needs token_url"),
        (OAUTH + '{ provider = "custom", client_id = "c", token_url = "http://idp.example/t", '
         'device_authorization_url = "https://idp.example/d", scopes = ["imap"] }', "is not an https:// URL"),
        (OAUTH + '{ provider = "custom", client_id = "c", token_url = "https://idp.example/t", '
         'scopes = ["imap"] }', "flow = 'browser' needs authorization_url"),
        (OAUTH + '{ provider = "microsoft", client_id = "c", token_url = "https://x.example/t" }',
         "only for provider = 'custom'"),
        (OAUTH + '{ provider = "aol", client_id = "c" }', "must be one of 'google', 'microsoft', 'custom'"),
        (OAUTH + '{ provider = "microsoft", client_id = "c", mechanism = "plain" }',
         "must be one of 'xoauth2', 'oauthbearer'"),
    ],
)
def test_mailbox_mistakes(mailbox: str, expected: str) -> None:
    found = problems(mailbox)
    assert len(found) == 1 and expected in found[0] and found[0].startswith("mailboxes[0]"), found


@pytest.mark.parametrize(
    ("mailbox", "smtp", "expected"),
    [
        (MICROSOFT, 'auth = "oauth2"', "auth = 'oauth2' needs oauth2_mailbox"),
        (MICROSOFT, 'auth = "oauth2"\noauth2_mailbox = "sales"', "no mailbox 'sales' with auth = 'oauth2'"),
        ('password = "x"', 'auth = "oauth2"\noauth2_mailbox = "support"',
         "no mailbox 'support' with auth = 'oauth2'"),
        (MICROSOFT, 'auth = "oauth2"\noauth2_mailbox = "support"\npassword = "x"',
         "password is not used with auth = 'oauth2'"),
    ],
)
def test_smtp_mistakes(mailbox: str, smtp: str, expected: str) -> None:
    found = problems(mailbox, smtp)
    assert len(found) == 1 and expected in found[0] and found[0].startswith("smtp"), found
