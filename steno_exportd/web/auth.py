"""Signed session cookies, CSRF tokens, login rate limiting and allowed networks."""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import time
from pathlib import Path

COOKIE = "steno_session"
CSRF_COOKIE = "steno_csrf"


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
    def __init__(self, key: bytes) -> None:
        self.key = key

    def _mac(self, body: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self.key, body, hashlib.sha256).digest()).decode().rstrip("=")

    def sign(self, payload: dict) -> str:
        body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")
        return f"{body}.{self._mac(body.encode())}"

    def unsign(self, token: str) -> dict | None:
        """The payload of a valid, unexpired token; None otherwise."""
        try:
            body, mac = token.rsplit(".", 1)
            if not hmac.compare_digest(mac, self._mac(body.encode())):
                return None
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, TypeError):
            return None
        if not isinstance(payload, dict) or payload.get("exp", 0) < time.time():
            return None
        return payload

    def csrf_for(self, session_id: str) -> str:
        return self._mac(b"csrf:" + session_id.encode())


class LoginLimiter:
    """Failed logins per client address; a lockout after too many."""

    def __init__(self, max_failed: int, lockout_seconds: float) -> None:
        self.max_failed, self.lockout = max_failed, lockout_seconds
        self._failed: dict[str, list[float]] = {}
        self._locked: dict[str, float] = {}

    def locked_for(self, addr: str, now: float | None = None) -> float:
        now = now or time.time()
        until = self._locked.get(addr, 0.0)
        return max(0.0, until - now)

    def failed(self, addr: str, now: float | None = None) -> None:
        now = now or time.time()
        recent = [t for t in self._failed.get(addr, []) if now - t < self.lockout] + [now]
        self._failed[addr] = recent
        if len(recent) >= self.max_failed:
            self._locked[addr] = now + self.lockout
            self._failed.pop(addr, None)
        if len(self._failed) > 10000:          # bounded memory under a scan
            self._failed.clear()

    def succeeded(self, addr: str) -> None:
        self._failed.pop(addr, None)


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
