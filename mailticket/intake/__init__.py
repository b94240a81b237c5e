"""The intake edge: sources that hand raw messages to the pipeline and acknowledge them afterwards.

    imap/      polls (or IDLEs on) IMAP folders; flag or move after the commit
    smtp.py    an SMTP/LMTP listener (aiosmtpd); 250 after the commit
    pipe.py    one message from an MTA pipe (`mailticket ingest`); exit 0 after the commit
    staff.py   a ticket opened from the shell, built as a message from the requester

A source marks a message done only after the pipeline (`mailticket.process`) has committed it.
"""
