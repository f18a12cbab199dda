"""Mail adapter: sends what the core's outbox holds over SMTP (aiosmtplib): smtp.py one delivery, sender.py the loop."""
from __future__ import annotations

from steno_exportd import safeparse

SAID_MAX = 300                 # characters of a server's words kept in a reason (aiosmtplib reads up to 32 KiB)


def said(text: object) -> str:
    """A server's (or an error's) words for the outbox, D-Bus, the page and the log: on one line, control
    characters escaped (a reply's \\x1b[2J would clear the screen of whoever reads the journal), at most SAID_MAX
    characters. Here, not in smtp.py: the loop (sender.py) uses it too without importing aiosmtplib."""
    return safeparse.shorten(safeparse.printable(" ".join(str(text).split())), SAID_MAX)
