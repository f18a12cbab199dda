"""`steno-exportd hash-password`: an scrypt hash for http.auth.password_hash."""
from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import os
import sys

N, R, P = 2 ** 14, 8, 1


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """scrypt$N$r$p$salt$hash (base64)."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"scrypt${N}${R}${P}${b64(salt)}${b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches a hash made by hash_password; False for anything malformed."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def valid_hash(stored: str) -> bool:
    parts = stored.split("$")
    return len(parts) == 6 and parts[0] == "scrypt" and all(x.isdigit() for x in parts[1:4])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stdin", action="store_true", help="read the password from standard input")


def main(args: argparse.Namespace) -> int:
    if args.stdin or not sys.stdin.isatty():
        pw = sys.stdin.readline().rstrip("\n")
    else:
        pw = getpass.getpass("password: ")
        if getpass.getpass("again: ") != pw:
            print("hash-password: the two passwords differ", file=sys.stderr)
            return 1
    if len(pw) < 8:
        print("hash-password: use at least 8 characters", file=sys.stderr)
        return 1
    h = hash_password(pw)
    print(h)
    print(f'# in the config: [http.auth] mode = "password", password_hash = "{h}"', file=sys.stderr)
    return 0
