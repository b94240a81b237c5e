"""OAuth 2.0 for IMAP and SMTP logins (Google Workspace, Microsoft 365, any RFC 6749 server).

The `oauth2` table of a mailbox is mailticket.config.oauth2.OAuth2Config.

    providers  endpoints and scopes per provider
    flows      device code, authorization code + PKCE, client credentials, refresh (authlib)
    http       the bounded HTTP client the flows use
    store      token files under data_dir (0600, atomic)
    tokens     fresh access tokens, one refresh at a time across processes
    sasl       XOAUTH2 / OAUTHBEARER for imapclient and smtplib
    login      `mailticket auth login`
    status     each token's state for `mailticket status`
"""
