"""Email addresses: parsed with the stdlib's RFC 5322 header parser, bounded, one address each."""
from __future__ import annotations

import re
from email.errors import HeaderParseError
from email.headerregistry import Address, HeaderRegistry

from steno_exportd.errors import InvalidArgument

MAX_RECIPIENTS = 50          # addresses in one message
MAX_ADDRESS_CHARS = 320      # RFC 3696: 64 local part + @ + 255 domain
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_registry = HeaderRegistry()


def parse_address(text: object) -> Address:
    """One address ("a@b.example" or "Name <a@b.example>"), or InvalidArgument saying what is wrong."""
    if not isinstance(text, str):
        raise InvalidArgument(f"an email address is text, not {type(text).__name__}")
    shown = repr(text[:60] + ("..." if len(text) > 60 else ""))
    if _CONTROL.search(text):
        # CR/LF would start a new header line (Bcc: ...) or a new SMTP command
        raise InvalidArgument(f"not an email address: {shown} contains a line break or control character")
    if not text.strip():
        raise InvalidArgument("empty email address")
    if len(text) > MAX_ADDRESS_CHARS:
        raise InvalidArgument(f"email address too long ({len(text)} characters, at most {MAX_ADDRESS_CHARS})")
    try:
        header = _registry("to", text)
        addresses = header.addresses
    except (IndexError, ValueError, AttributeError, TypeError, HeaderParseError):
        # the stdlib parser has crashed on some malformed input ("alice@": IndexError): still just "not valid"
        addresses, header = (), None
    if header is None or len(addresses) != 1 or header.defects:
        raise InvalidArgument(f"not an email address: {shown} (one address like name@example.org)")
    addr = addresses[0]
    if not addr.username or not addr.domain:
        raise InvalidArgument(f"not an email address: {shown} (one address like name@example.org)")
    if not addr.addr_spec.isascii():
        raise InvalidArgument(f"not an email address: {shown}: only ASCII addresses are supported")
    labels = addr.domain.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels) or len(addr.domain) > 253:
        raise InvalidArgument(f"not an email address: {shown}: {addr.domain!r} is not a valid domain")
    return addr


def parse_recipients(values: object) -> tuple[Address, ...]:
    """A de-duplicated, non-empty, bounded list of addresses."""
    if isinstance(values, str):
        values = [values]      # never split on commas: '"Doe, J" <j@x.org>' is one address
    if not isinstance(values, (list, tuple)):
        raise InvalidArgument("recipients: a list of email addresses")
    if not values:
        raise InvalidArgument("no recipients given")
    if len(values) > MAX_RECIPIENTS:
        raise InvalidArgument(f"too many recipients: {len(values)}, at most {MAX_RECIPIENTS} in one message")
    seen: dict[str, Address] = {}
    for v in values:
        a = parse_address(v)
        seen.setdefault(a.addr_spec.lower(), a)
    return tuple(seen.values())


def check_address(text: str) -> str | None:
    """For the config: None when valid, else the reason."""
    try:
        parse_address(text)
    except InvalidArgument as e:
        return str(e)
    return None
