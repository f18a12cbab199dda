"""Who may reach the meetings: logins (server-side browser sessions), share links and their uses, the download
audit log, the one limiter for every secret, and the bounded password checker.

Core, not web: the web page, D-Bus (share links, pairing, listing and revoking browsers) and mail all use the
same ``core.access``. SQLite in the state dir; nothing here imports an adapter.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from steno_exportd.access.limiter import Attempt, Limiter, LimiterPolicy
from steno_exportd.access.passwords import PasswordChecker, fingerprint, hash_password, verify_password
from steno_exportd.access.store import AccessStore, Login, ShareLink
from steno_exportd.errors import InvalidArgument, StenoError
from steno_exportd.retention import policies

__all__ = ["Access", "AccessStore", "Attempt", "Limiter", "LimiterPolicy", "Login", "PasswordChecker", "ShareLink",
           "fingerprint", "hash_password", "share_url", "verify_password"]


def share_url(cfg: Any, token: str, host: str = "", tls: bool = False) -> str:
    """The full address of share link ``token`` for someone on another device (a phone scanning its QR code).

    http.public_url when set; else the name or address the asking browser used (``host``: a Host header the
    web page has already checked against the names it answers to), unless that only means this machine
    (localhost, a loopback address): then, like with no browser at all (D-Bus), <hostname>.local."""
    if cfg.http.public_url:
        return cfg.http.public_url.rstrip("/") + f"/s/{token}"
    scheme = "https" if tls else "http"
    name = ""
    if host:
        try:
            name = (urlsplit("//" + host).hostname or "").lower()
        except ValueError:
            name = ""
    if name and not _only_here(name):
        return f"{scheme}://{host}/s/{token}"
    return f"{scheme}://{socket.gethostname().lower()}.local:{cfg.http.port}/s/{token}"


def _only_here(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def policy(cfg: Any) -> LimiterPolicy:
    a = cfg.http.auth
    return LimiterPolicy(a.max_failed_logins, a.max_failed_network, a.max_failed_global, float(a.lockout_seconds))


class Access:
    """The store, the limiter and the password checker, made from the config; open() before use."""

    def __init__(self, cfg: Any) -> None:
        self.store = AccessStore(Path(cfg.state.dir) / "access.db", policies(cfg)["audit"])
        self.limiter = Limiter(policy(cfg))
        self.passwords = PasswordChecker()

    def open(self) -> None:
        """Blocking (SQLite): call from a thread."""
        self.store.open()

    def reload(self, cfg: Any) -> None:
        """New limits apply to the next attempt; counts so far are kept."""
        self.limiter.policy = policy(cfg)
        self.store.audit_keep = policies(cfg)["audit"]

    async def create_link(self, cfg: Any, session_id: int, hours: Any, max_downloads: Any, pin: str = "") -> ShareLink:
        """A share link for session_id (the web page's form, the API and D-Bus): the limits checked first,
        then the PIN hashed (bounded); empty hours or max_downloads: the configured defaults."""
        sl = cfg.http.share_links
        if not sl.enabled:
            raise StenoError("share links are turned off (http.share_links.enabled)")
        try:
            h = float(str(hours)[:32]) if str(hours).strip() else sl.default_expiry_hours
            m = int(str(max_downloads)[:12]) if str(max_downloads).strip() else sl.default_max_downloads
        except (TypeError, ValueError):
            raise InvalidArgument("hours and max_downloads must be numbers") from None
        pin = pin.strip()
        if pin and not (pin.isascii() and pin.isdigit() and sl.min_pin_digits <= len(pin) <= 12):
            raise InvalidArgument(f"a PIN is {sl.min_pin_digits} to 12 digits (http.share_links.min_pin_digits)")
        if not (0 < h <= 24 * 366) or not (1 <= m <= 1000):     # checked before a PIN costs a hash
            raise InvalidArgument("hours: more than 0, at most a year; max_downloads: 1 to 1000")
        pin_hash = await self.passwords.hash(pin) if pin else ""
        return await asyncio.to_thread(self.store.create_link, session_id, h, m, pin_hash,
                                       sl.max_wrong_pins if pin else 0)

    def close(self) -> None:
        """Safe to call twice."""
        self.passwords.close()
        self.store.close()
