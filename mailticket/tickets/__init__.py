"""Ticket changes: store, open, follow-up, agent mail, lifecycle, assignment, staff actions, SLA, report.

The only package that writes ticket rows, and (through `notices`) the only one that queues mail.
"""
