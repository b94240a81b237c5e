"""The pure stages: parse -> classify -> thread -> route (and reply, the visible text of a reply).

Each takes bytes or frozen data and the config and returns frozen data (models.py); none does
I/O or touches the database (tests/unit/test_contracts.py keeps it so). `mailticket.process`
orders them and hands their results to `tickets/`, which stores and notifies.
"""
