"""The outbound edge: notices rendered from templates, queued in the outbox, sent by SMTP."""
