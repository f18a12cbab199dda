"""One limiter for every secret (password, share PIN, later pairing codes): attempts counted per client address,
per network (IPv4 /24, IPv6 /64) and overall, each with exponential back-off.

An attempt is counted *before* the secret is checked and given back only when it was right: the check and the
count happen in one step under a lock, so a hundred guesses sent at once get no more through than a hundred
sent one by one. Memory is bounded: at most MAX_KEYS clients and networks are remembered.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time
from typing import Callable

from steno_exportd.errors import Throttled

MAX_KEYS = 10_000
GLOBAL = ("overall",)


@dataclasses.dataclass(frozen=True)
class LimiterPolicy:
    per_address: int = 5          # attempts from one address before it waits
    per_network: int = 20         # from one /24 (IPv4) or /64 (IPv6)
    overall: int = 100            # from everywhere together
    longest: float = 300.0        # the longest wait; the first is longest / 16, doubling per further attempt


@dataclasses.dataclass
class _Count:
    n: int = 0
    until: float = 0.0            # locked until (clock time)
    last: float = 0.0


def network_of(client: str) -> str:
    """The /24 or /64 a client address belongs to; "" for a client that is not an IP address."""
    try:
        ip = ipaddress.ip_address(client.split("%")[0])
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _address(client: str) -> str:
    try:
        ip = ipaddress.ip_address(client.split("%")[0])
    except ValueError:
        return client
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def client_of(addr: str) -> str:
    """The client a per-client cap counts: an IPv4 address (a v4-mapped IPv6 one, ::ffff:a.b.c.d, as the same
    IPv4 address: one client seen by an IPv4 and a dual-stack socket), an IPv6 address's /64 (a host there has a
    whole /64 to take addresses from); the text itself when it is no IP address."""
    plain = _address(addr)
    return network_of(plain) if ":" in plain else plain


class Attempt:
    """One counted attempt: call succeeded() when the secret was right, cancelled() when it was never checked."""

    def __init__(self, limiter: "Limiter", keys: list[tuple[tuple, int]]) -> None:
        self._limiter, self._keys, self._open = limiter, keys, True

    def succeeded(self) -> None:
        if self._open:
            self._open = False
            self._limiter._give_back(self._keys, reset_address=True)

    def failed(self) -> None:
        self._open = False                  # it stays counted

    def cancelled(self) -> None:
        if self._open:
            self._open = False
            self._limiter._give_back(self._keys, reset_address=False)


class Limiter:
    def __init__(self, policy: LimiterPolicy = LimiterPolicy(), clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[tuple, _Count] = {}

    def _keys(self, client: str) -> list[tuple[tuple, int]]:
        p = self.policy
        keys: list[tuple[tuple, int]] = [(("address", _address(client)), p.per_address)]
        net = network_of(client)
        if net:
            keys.append((("network", net), p.per_network))
        keys.append((GLOBAL, p.overall))
        return keys

    def _backoff(self, over: int) -> float:
        return min(self.policy.longest, self.policy.longest / 16 * 2 ** min(over, 16))

    def locked_for(self, client: str) -> float:
        """Seconds until this client may try again (0: now)."""
        now = self._clock()
        with self._lock:
            return max([c.until - now for k, _ in self._keys(client) if (c := self._counts.get(k))] + [0.0])

    def acquire(self, client: str) -> Attempt:
        """Count one attempt from client, or raise Throttled (retry_after) without counting it."""
        now = self._clock()
        keys = self._keys(client)
        with self._lock:
            wait, which = 0.0, ""
            for k, _ in keys:
                c = self._counts.get(k)
                if c is not None and c.until - now > wait:
                    wait, which = c.until - now, k[0]
            if wait > 0:
                raise Throttled(_why(which, wait), wait)
            for k, limit in keys:
                c = self._counts.get(k)
                if c is None or (now - c.last > 2 * self.policy.longest and now >= c.until):
                    c = self._counts[k] = _Count()
                c.n += 1
                c.last = now
                if c.n >= limit:
                    c.until = now + self._backoff(c.n - limit)
            if len(self._counts) > MAX_KEYS:
                self._forget(now)
        return Attempt(self, keys)

    def __len__(self) -> int:
        """How many clients and networks are remembered now (bounded by MAX_KEYS)."""
        return len(self._counts)

    def _give_back(self, keys: list[tuple[tuple, int]], reset_address: bool) -> None:
        with self._lock:
            for i, (k, limit) in enumerate(keys):
                c = self._counts.get(k)
                if c is None:
                    continue
                if i == 0 and reset_address:
                    del self._counts[k]
                    continue
                c.n = max(0, c.n - 1)
                if c.n < limit:
                    c.until = 0.0

    def _forget(self, now: float) -> None:
        """Drop the least recently seen clients and networks (never the overall count) down to 90 %."""
        stale = sorted((c.last, k) for k, c in self._counts.items() if k != GLOBAL)
        for _, k in stale[: len(self._counts) - MAX_KEYS * 9 // 10]:
            del self._counts[k]


def _why(which: str, wait: float) -> str:
    whose = {"address": "from your address", "network": "from your network", "overall": "on this recorder"}
    return f"too many failed attempts {whose.get(which, '')}; try again in {int(wait) + 1} seconds"
