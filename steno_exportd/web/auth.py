"""Cookies and CSRF tokens, allowed networks, the names the page answers to (Host) and same-origin checks."""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from steno_exportd.engine.identity import dns_name

COOKIE = "steno_session"
CSRF_COOKIE = "steno_csrf"
SHARE_COOKIE = "steno_share_"       # + the link's token: a PIN-opened share link (path-scoped to /s/<token>)


def load_secret(state_dir: str) -> bytes:
    """The signing key, made once per recorder and kept in the state dir (0600)."""
    path = Path(state_dir) / "web-secret"
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    os.replace(tmp, path)
    return path.read_bytes()


class Signer:
    """HMAC with the recorder's key: CSRF tokens bound to a login (or to a browser's CSRF cookie)."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def _mac(self, body: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self.key, body, hashlib.sha256).digest()).decode().rstrip("=")

    def csrf_for(self, seed: str) -> str:
        return self._mac(b"csrf:" + seed.encode())


class Networks:
    def __init__(self, cidrs: list[str]) -> None:
        self.nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def allowed(self, addr: str | None) -> bool:
        if not self.nets:
            return True
        if not addr:
            return False
        try:
            ip = ipaddress.ip_address(addr.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in n for n in self.nets if n.version == ip.version)


def host_names(cfg: Any) -> frozenset[str]:
    """The names the page answers to: the host name, <host>.local, localhost, public_url's host, configured."""
    host, dns = socket.gethostname().lower(), dns_name()
    names = {host, f"{host}.local", *((dns, f"{dns}.local") if dns else ()), "localhost", *(n.lower().rstrip(".") for n in cfg.http.host_names)}
    if cfg.http.public_url:
        public = urlsplit(cfg.http.public_url).hostname
        if public:
            names.add(public.lower())
    return frozenset(names)


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header as (lower-case name or address, port); None when malformed."""
    try:
        parts = urlsplit("//" + value)
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not name or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    if value.startswith("[") and not re.fullmatch(r"\[[^\]]*\](:[0-9]*)?", value):
        return None         # "[::1].evil.example": urlsplit reads it as [::1] and drops the rest
    return name.lower().rstrip("."), port


ZONE = re.compile(r"%(?:25)?[A-Za-z0-9._~-]{1,64}")      # RFC 6874: "%25" and the zone (lenient: a bare "%")


def host_allowed(value: str, names: frozenset[str], local_addr: str) -> bool:
    """A name the recorder answers to, or the very address the client connected to (never some other one).

    An IPv6 address may carry the zone of the client's own interface ([fe80::1%25eth0], RFC 6874): it says which
    of the client's links leads here, not which address, so it is left out of the comparison (it was part of it,
    and a laptop reaching the recorder at its link-local address got 421)."""
    hp = split_host(value)
    if hp is None:
        return False
    name, _ = hp
    if ":" in name and (zone := ZONE.search(name)) is not None and zone.end() == len(name):
        name = name[:zone.start()]
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return name in names
    return _plain(ip) == _plain_str(local_addr)


def same_origin(url: str, scheme: str, host: str) -> bool:
    """Is url (an Origin or a Referer) on this very page: same scheme, name and port as the request's Host?"""
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError:
        return False
    mine = split_host(host)
    if u.scheme != scheme or not u.hostname or mine is None:
        return False
    default = 443 if scheme == "https" else 80
    return (u.hostname.lower().rstrip("."), port or default) == (mine[0], mine[1] or default)


def _plain(ip: Any) -> Any:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _plain_str(addr: str) -> Any:
    try:
        return _plain(ipaddress.ip_address(addr.split("%")[0]))
    except ValueError:
        return None
