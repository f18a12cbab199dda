"""A guessing client: every guess from its own source address, all at once (in-process, or run with
`python -m tests.web.attacker` inside a network namespace for IPv6 rotation). Prints/returns status counts."""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import sys

import aiohttp


async def one_guess(base: str, source: str, path: str, field: str, secret: str) -> int:
    """GET the form (its CSRF cookie and token), then POST one guess; the answer's status (0: no answer)."""
    conn = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=conn, cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     timeout=aiohttp.ClientTimeout(total=120)) as http:
        try:
            async with http.get(base + path) as r:
                m = re.search(r'name="csrf" value="([^"]+)"', await r.text())
            if m is None:
                return r.status
            async with http.post(base + path, data={field: secret, "csrf": m.group(1), "next": "/"},
                                 allow_redirects=False) as r:
                await r.read()
                return r.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return 0


async def guess(base: str, sources: list[str], path: str = "/login", field: str = "password",
                secret: str = "not the password") -> collections.Counter:
    """One guess per source address, concurrently; status -> count."""
    statuses = await asyncio.gather(*(one_guess(base, s, path, field, secret) for s in sources))
    return collections.Counter(statuses)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("base")
    p.add_argument("sources", help="comma-separated source addresses")
    p.add_argument("--path", default="/login")
    p.add_argument("--field", default="password")
    p.add_argument("--secret", default="not the password")
    a = p.parse_args()
    counts = asyncio.run(guess(a.base, a.sources.split(","), a.path, a.field, a.secret))
    json.dump({str(k): v for k, v in counts.items()}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
