"""`steno-exportd hash-password`: an scrypt hash for http.auth.password_hash."""
from __future__ import annotations

import argparse
import getpass
import sys

from steno_exportd.access.passwords import hash_password


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
