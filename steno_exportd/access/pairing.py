"""Pairing codes: a one-time code the touchscreen shows, typed (or scanned as a QR code) on a phone to log that
browser in. One code is valid at a time; it expires within minutes and works once."""
from __future__ import annotations

import dataclasses
import hmac
import secrets
import threading
import time
from typing import Callable

DIGITS = 8                  # 10^8 codes against the limiter's few hundred guesses per code lifetime


@dataclasses.dataclass(frozen=True)
class PairingCode:
    code: str               # "1234-5678"
    expires: float          # clock time (time.time())


def normalize(raw: str) -> str:
    """What a person typed, digits only (spaces and dashes dropped); "" for anything else or too long."""
    if len(raw) > 32:
        return ""
    digits = "".join(c for c in raw if c not in " -")
    return digits if digits.isascii() and digits.isdigit() and len(digits) == DIGITS else ""


class Pairing:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._code = ""
        self._expires = 0.0

    def start(self, seconds: float) -> PairingCode:
        """A new code; the one shown before stops working."""
        code = f"{secrets.randbelow(10 ** DIGITS):0{DIGITS}d}"
        with self._lock:
            self._code, self._expires = code, self._clock() + seconds
        return PairingCode(f"{code[:4]}-{code[4:]}", self._expires)

    def redeem(self, raw: str) -> bool:
        """True once for the valid code (it is used up then); False for a wrong, expired or used one."""
        typed = normalize(raw)
        with self._lock:
            ok = bool(self._code) and self._clock() < self._expires and bool(typed) and \
                hmac.compare_digest(typed.encode(), self._code.encode())
            if ok:
                self._code, self._expires = "", 0.0
            return ok

    def cancel(self) -> None:
        with self._lock:
            self._code, self._expires = "", 0.0
