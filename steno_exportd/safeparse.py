"""JSON and TOML someone else wrote (a store, a stick, a request, the recorder's database, a config file), parsed;
text nested too deeply for the parser (20,000 '[') is malformed like any other: json.JSONDecodeError (a
ValueError) or tomllib.TOMLDecodeError, which every caller handles, not the RecursionError json.loads and tomllib
raise, which escaped those handlers (a manifest.json that failed every push instead of being rebuilt, a request
body answered with a traceback, a stick's steno-export.toml that failed its handling). And someone else's words
put in a message or a log line, made printable, and a program's error text with the credentials it quotes masked."""
from __future__ import annotations

import json
import re
import tomllib
from typing import Any


def json_loads(raw: str | bytes | bytearray, *, max_values: int | None = None) -> Any:
    """``max_values``: text with more values than that is malformed too, before it is parsed. Parsed, each value
    costs 35 to 120 bytes (an empty dict, a key), so 24 MiB of '{},' would be 400 MB: counted here as its commas,
    colons and opening brackets (a bound from above: one in a string counts too), in C, at memory speed."""
    if max_values is not None:
        found = sum(raw.count(c if isinstance(raw, str) else c.encode()) for c in ",:[{")
        if found > max_values:
            raise json.JSONDecodeError(f"more than {max_values:,} values", raw if isinstance(raw, str) else "", 0)
    try:
        return json.loads(raw)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", raw if isinstance(raw, str) else "", 0) from None


def toml_loads(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise tomllib.TOMLDecodeError("nested too deeply") from None


def printable(text: str) -> str:
    """Someone else's words (a client's, a store's) for one log line or message: control characters escaped
    (\\x1b, \\n: no terminal escapes, no forged lines in the journal), printable ones, accents too, kept."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def shorten(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters: cut, with an ellipsis, when longer."""
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


# a setting whose value is a credential, as rclone spells a remote's ("pass=...", "bearer_token='...'",
# "secret_access_key=...", a config file's "pass = ..."; its name holds one of _SECRET_WORDS), its value masked whole:
# quoted ('...', "...", or \"...\" inside a string Go quoted: rclone's 'file system for ":webdav,pass=\"x\":office"'),
# to its closing quote; a token's JSON ('token = {"access_token":...}') to its closing brace; unquoted, where rclone
# ends it in a connection string, at a comma or a colon (the remote's path after it, "pass=x:office", is kept), or at
# a space or quote; but a value that is a URL (sas_url's) to the next comma, space or quote (its colons are its own),
# and a header's (a name with "header": rclone's headers, name,value pairs, an Authorization's "Bearer ...") to the
# end of the string or line: its commas, colons and spaces are its own (rclone ends it at the first, the rest read as
# the remote's path, but a person meant them as the value)
_SECRET_WORDS = ("header", "pass", "secret", "token", "key", "sas_url", "credential", "auth", "sig")


def _braces(depth: int) -> str:
    """JSON's braces, balanced, nested ``depth`` deep inside the outer pair (a regular expression cannot count)."""
    return r"\{[^{}]*\}" if depth == 0 else r"\{(?:[^{}]|" + _braces(depth - 1) + r")*\}"


# a token's JSON: to its balancing brace (an object in it too, 5 deep); deeper, or cut short: to the line's end
_JSON = _braces(4) + r"|\{[^\r\n]*"
_QUOTED = r"'(?:[^']|'')*'?|\"(?:[^\"]|\"\")*\"?|" + _JSON + r"|\\\"(?:[^\"\\\r\n]|\\[^\"\r\n])*(?:\\\")?"
_UNQUOTED = r"[a-z][a-z0-9+.-]*://[^,\s\"']*|[^,:\s\"']*"
_TO_LINE_END = r"(?:\\.|[^\"\\\r\n])*"


def _setting(words: tuple[str, ...], value: str) -> re.Pattern[str]:
    """A setting named with one of ``words`` (group 1) and its ``value``."""
    return re.compile(r"(?i)(?<![a-z0-9_])([a-z0-9_]*(?:" + "|".join(words) + r")[a-z0-9_]*)[ \t]*=[ \t]*(?:"
                      + value + ")")


# a header's value (its name holds "header"): quoted, to its closing quote when a separator follows (what follows is
# rclone's, ':office'), else on to the end of the line; unquoted, to the end of the line (or string)
_HEADER_VALUE = (rf"(?>{_QUOTED})(?=[,:\"\r\n]|\Z)|(?=['\"{{]|\\\")(?:{_QUOTED})[^\r\n]*|{_TO_LINE_END}")
# a header's first (its value may read as another setting: "pass=headers=Authorization:Bearer x"), then every one
_SECRET_SETTINGS = (_setting(("header",), _HEADER_VALUE), _setting(_SECRET_WORDS, f"{_QUOTED}|{_UNQUOTED}"))
# (a signed URL's "sig=" or "X-Amz-Signature=" is a setting too: a store's error quotes the request it failed on)
# a URL's "user:password@" (also as a mangled URL shows it, "http/./user:password@host"): to its last "@" before
# a "/" (a password may hold one); in a URL (after a "/"), when no "@" comes before the "/", on to the first "@": a
# raw "/" in a password (which Go then reads as a host and a port, 'invalid port ":pass-start" after host', masked too)
# (that one bounded: tried after every "/" and scanning on to the end, it made the masking quadratic: a store's error
# of 48 KB of "/a:" held the loop, and the watchdog's time, for 3.6 s)
_USERINFO = re.compile(r"(?<![^\s/\"'(=,\[])([^\s/:@\"',=\[\]]+):[^\s/\"']+@"
                       r"|(?<=/)([^\s/:@\"',=\[\]]+):[^\s\"'@]{1,256}@")
_GO_PORT = re.compile(r'(invalid port (?:\\?")?:)[^\s"\\]+')


def redact(text: str) -> str:
    """A program's error text (rclone's, which quotes the remote or URL it failed on) for a message that browsers,
    the touchscreen and the log show: every credential in it masked ("pass=***", "user:***@host"), the rest kept."""
    for setting in _SECRET_SETTINGS:
        text = setting.sub(lambda m: f"{m.group(1)}=***", text)
    text = _USERINFO.sub(lambda m: f"{m.group(1) or m.group(2)}:***@", text)
    return _GO_PORT.sub(r"\1***", text)
