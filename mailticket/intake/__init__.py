"""The intake edge: sources that hand raw messages to the pipeline and acknowledge them afterwards.

`imap` polls (or IDLEs on) IMAP folders. A source marks a message done (flag, move,
SMTP 250, exit 0) only after the pipeline has committed it.
"""
