"""The outbox (core): messages composed from sessions and notifications, stored before they are sent.

``Outbox`` (outbox/queue.py) keeps every message in the state DB and a spool file until the mail
adapter (steno_exportd/mail/) reports it sent or failed; compose.py writes the MIME messages,
notices.py turns core events into notifications, address.py checks addresses.
"""
