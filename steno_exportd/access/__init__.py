"""Who may reach the meetings: logins (server-side browser sessions), share links and their uses, the download
audit log, the one limiter for every secret, and the bounded password checker.

Core, not web: the web page, D-Bus (share links, pairing, listing and revoking browsers) and mail all use the
same ``core.access``. SQLite in the state dir; nothing here imports an adapter.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from steno_exportd.access.limiter import Attempt, Limiter, LimiterPolicy
from steno_exportd.access.pairing import Pairing, PairingCode
from steno_exportd.access.passwords import PasswordChecker, fingerprint, hash_password, verify_password
from steno_exportd.access.store import AT_DEVICE, BROWSER_MADE, BY_PAGE, UNKNOWN, AccessStore, Login, ShareLink
from steno_exportd.config import LINK_MAX_DOWNLOADS, LINK_MAX_HOURS
from steno_exportd.engine.identity import reachable_name
from steno_exportd.errors import InvalidArgument, NotFoundError, StenoError
from steno_exportd.retention import policies

__all__ = ["Access", "AccessStore", "Attempt", "Limiter", "LimiterPolicy", "Login", "PairingCode",
           "PasswordChecker", "ShareLink", "fingerprint", "hash_password", "share_url", "verify_password"]

log = logging.getLogger(__name__)

PAIRING_TAG = "pairing"             # paired browsers' logins: ended by a password change (not the first password
                                    # set), by "log out everywhere" and when revoked
WEB_PASSWORD = "web_password_hash"  # the settings key of the password set from the touchscreen
PASSWORD_SWEPT = "links_password_tag"   # the password (its fingerprint) the links made by logins were last kept for
BROWSER_KINDS = BROWSER_MADE
# What a new password revokes: the links made by password logins, and links whose maker is not known (older
# stores). Paired browsers' links outlive it (revoking the browser, or "log out everywhere", ends them); their
# logins do not (_password_changed)
PASSWORD_MADE = ("password", UNKNOWN)
# and what "log out everywhere" revokes: links of every browser, of the page while it needed no login (any
# guest could make one), and of unknown makers
EVERYWHERE_MADE = (*BROWSER_KINDS, BY_PAGE, UNKNOWN)
MIN_PASSWORD, MAX_PASSWORD = 8, 1024


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
    return f"{scheme}://{reachable_name()}:{cfg.http.port}/s/{token}"


def _only_here(name: str) -> bool:
    """Does the name mean this machine only, or an address no other device can use as it stands (a link-local
    IPv6 one: valid only with the asking device's own zone, fe80::1%25eth0)?"""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        return False
    return ip.is_loopback or (ip.version == 6 and ip.is_link_local)       # (IPv4's 169.254/16 needs no zone)


def policy(cfg: Any) -> LimiterPolicy:
    a = cfg.http.auth
    return LimiterPolicy(a.max_failed_logins, a.max_failed_network, a.max_failed_global, float(a.lockout_seconds))


class Access:
    """The store, the limiter and the password checker, made from the config; open() before use."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.store = AccessStore(Path(cfg.state.dir) / "access.db", policies(cfg)["audit"])
        self.limiter = Limiter(policy(cfg))
        self.passwords = PasswordChecker()
        self.pairing = Pairing()
        self._stored_hash = ""              # the password set from the touchscreen (settings table), kept here

    def open(self) -> None:
        """Blocking (SQLite): call from a thread."""
        self.store.open()
        self._stored_hash = self.store.setting(WEB_PASSWORD)
        swept = self.store.setting(PASSWORD_SWEPT)
        if swept and swept != fingerprint(self.password_hash()):    # the config's changed while it was stopped
            self._password_changed("a new password in the config since the last start")
        else:
            self.store.set_setting(PASSWORD_SWEPT, fingerprint(self.password_hash()))

    async def reload(self, cfg: Any) -> None:
        """New limits apply to the next attempt; counts so far are kept. A new password ends the logins made
        under the old one, and what they hold open (in a thread: SQLite)."""
        before = self.password_hash()
        self.cfg = cfg
        self.limiter.policy = policy(cfg)
        self.store.audit_keep = policies(cfg)["audit"]
        if not cfg.http.auth.pairing:
            self.pairing.cancel()
        if self.password_hash() != before:
            await asyncio.to_thread(self._password_changed, "a new password in the config")

    # ---- the web password: the config's hash wins over the one set from the touchscreen ----------------
    def password_hash(self) -> str:
        return self.cfg.http.auth.password_hash or self._stored_hash

    def login_tags(self) -> tuple[str, ...]:
        """The tags a valid browser login carries: the current password's, or pairing's."""
        return (fingerprint(self.password_hash()), PAIRING_TAG)

    async def set_web_password(self, password: str) -> None:
        """Store the scrypt hash in the state dir; logins made with the old password end."""
        if self.cfg.http.auth.password_hash:
            raise StenoError("the web password is set in the config (http.auth.password_hash), which wins; "
                             "change it there")
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise InvalidArgument(f"the web password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        stored = await self.passwords.hash(password)
        await asyncio.to_thread(self.store.set_setting, WEB_PASSWORD, stored)
        self._stored_hash = stored
        await asyncio.to_thread(self._password_changed, "web password set")

    def _password_changed(self, why: str) -> tuple[int, int]:
        """The browsers' logins end, then the share links made by password logins (in this order: a link asked
        for meanwhile is refused or revoked); (logins ended, links revoked). Blocking.

        Paired browsers' logins end too: a copied cookie must not keep access after a password change, whichever
        way its browser logged in (THREATS), and a paired one outlived it. The browser that changed it logs in
        again with the new password (its cookie may be the copied one). The first password (none before, as the
        last sweep recorded: set by a paired browser, the touchscreen or the config): there were only paired
        logins, which stay."""
        first = self.store.setting(PASSWORD_SWEPT) == fingerprint("")
        ended = sum(self.store.end_logins(kind) for kind in (("password",) if first else BROWSER_KINDS))
        revoked = self.store.revoke_made_by(PASSWORD_MADE)
        self.store.set_setting(PASSWORD_SWEPT, fingerprint(self.password_hash()))
        log.info("%s: %d browser logins ended%s, %d share links made by password logins (or by an unknown maker) "
                 "revoked", why, ended, "" if first else " (paired ones too)", revoked)
        return ended, revoked

    def log_out_everywhere(self) -> tuple[int, int]:
        """End every browser's login, then every share link a browser made (also the page's while it needed no
        login, and links whose maker is not known); links made at the recorder stay; (logins ended, links
        revoked). Blocking."""
        ended = sum(self.store.end_logins(kind) for kind in BROWSER_KINDS)
        revoked = self.store.revoke_made_by(EVERYWHERE_MADE)
        return ended, revoked

    # ---- pairing: a one-time code from the touchscreen logs one browser in ---------------------------
    def start_pairing(self) -> PairingCode:
        a = self.cfg.http.auth
        if not a.pairing:
            raise StenoError("pairing is switched off (http.auth.pairing = false)")
        if a.mode != "password":
            raise StenoError("the web page needs no login (http.auth.mode = 'none'): nothing to pair")
        return self.pairing.start(a.pairing_minutes * 60)

    async def pair(self, code: str, addr: str, agent: str) -> tuple[Login, str] | None:
        """A login for the browser that typed the valid code, or None; guesses go through the limiter
        (Throttled when this client must wait)."""
        attempt = self.limiter.acquire(addr)           # counted before the check, like a password
        if not (self.cfg.http.auth.pairing and self.pairing.redeem(code)):
            attempt.failed()
            return None
        attempt.succeeded()
        found = await asyncio.to_thread(self.store.create_login, "pairing", PAIRING_TAG,
                                        self.cfg.http.auth.session_hours * 3600, addr, agent)
        log.info("browser paired from %s (login %s)", addr, found[0].id)
        return found

    def browsers(self) -> list[Login]:
        """Logged-in browsers (by password or pairing), most recently seen first. Blocking."""
        return [x for x in self.store.logins() if x.kind in BROWSER_KINDS]

    def revoke_browser(self, login_id: str) -> Login:
        """End one browser's login at once, then revoke the share links it made. Blocking."""
        if login_id not in {x.id for x in self.browsers()}:
            raise NotFoundError(f"no logged-in browser {login_id[:32]!r}")
        gone = self.store.revoke_login(login_id)
        revoked = self.store.revoke_made_by(login_id=login_id)
        log.info("browser %s (%s, %s) revoked: %d share links it made revoked", gone.id, gone.kind, gone.addr,
                 revoked)
        return gone

    # ---- what an open download or event stream was granted under: still valid? ----------------------
    def link_ended(self, token: str) -> str:
        """Why a download under share link ``token`` must stop now ("revoked", "expired"); "" while it may go on
        (a link used up by the very downloads under way still serves them). Blocking."""
        try:
            link = self.store.link(token)
        except NotFoundError:
            return "gone"
        if link.revoked:
            return "revoked"
        return "expired" if link.expires <= time.time() else ""

    def login_ended(self, cookie: str) -> str:
        """Why what a browser opened under login cookie ``cookie`` must stop now; "" while the login is valid
        (logout, "log out everywhere", a new password, a revoked browser, its end all end it). Blocking."""
        if self.store.login_for(cookie, self.login_tags()) is not None:
            return ""
        return "ended (logout, a new password or revoked)"

    async def create_link(self, cfg: Any, session_id: int, hours: Any, max_downloads: Any, pin: str = "",
                          made_by: str = AT_DEVICE, login_id: str = "", session_uuid: str = "") -> ShareLink:
        """A share link for session_id (the web page's form, the API and D-Bus): the limits checked first,
        then the PIN hashed (bounded); empty hours or max_downloads: the configured defaults. ``made_by``:
        AT_DEVICE (touchscreen, D-Bus, CLI), BY_PAGE (no login) or the kind of the browser login ``login_id``
        (it must still exist when the link is stored: NotAllowedError). ``session_uuid``: the meeting's uuid; the
        link opens only the meeting of that uuid (ShareLink.for_meeting), never another that takes its id."""
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
        if not (0 < h <= LINK_MAX_HOURS) or not (1 <= m <= LINK_MAX_DOWNLOADS):   # before a PIN costs a hash
            raise InvalidArgument(f"hours: more than 0, at most a year; max_downloads: 1 to {LINK_MAX_DOWNLOADS}")
        pin_hash = await self.passwords.hash(pin) if pin else ""
        return await asyncio.to_thread(self.store.create_link, session_id, h, m, pin_hash,
                                       sl.max_wrong_pins if pin else 0, made_by, login_id, session_uuid)

    def close(self) -> None:
        """Safe to call twice."""
        self.passwords.close()
        self.store.close()
