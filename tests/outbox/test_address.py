"""Addresses: one each, no line breaks, bounded; the config names the key of a bad one."""
from __future__ import annotations

import pytest

from steno_exportd import config
from steno_exportd.errors import ConfigError, InvalidArgument
from steno_exportd.outbox.address import parse_address, parse_recipients


@pytest.mark.parametrize("text, addr_spec", [
    ("alice@example.org", "alice@example.org"),
    ("Alice Example <alice@example.org>", "alice@example.org"),
    ('"Doe, Jane" <jane.doe+steno@mail.example.co.uk>', "jane.doe+steno@mail.example.co.uk"),
])
def test_good_addresses(text, addr_spec):
    assert parse_address(text).addr_spec == addr_spec


@pytest.mark.parametrize("text", ["", "alice", "alice@", "@example.org", "alice@example..org", "alice@-x.org",
                                  "a@b.org, c@d.org", "alice@example.org\nBcc: x@y.org", "alice@exa\x00mple.org",
                                  "jürgen@example.org", "a@[127.0.0.1]", "x" * 321])
def test_bad_addresses(text):
    with pytest.raises(InvalidArgument):
        parse_address(text)


def test_recipients_are_deduplicated_and_bounded():
    got = parse_recipients(["a@example.org", "A@Example.org", "Bob <b@example.org>"])
    assert [a.addr_spec for a in got] == ["a@example.org", "b@example.org"]
    assert [a.addr_spec for a in parse_recipients('"Doe, J" <j@example.org>')] == ["j@example.org"]
    with pytest.raises(InvalidArgument, match="at most 50"):
        parse_recipients([f"u{i}@example.org" for i in range(51)])


def test_config_names_a_bad_address_and_a_password_in_clear():
    with pytest.raises(ConfigError) as e:
        config.from_dict({"email": {"enabled": True, "sender": "steno", "recipients": ["ok@example.org", "x@@y"],
                                    "smtp_host": "mail.example.org", "username": "u"},
                          "notify": {"rules": [{"events": ["disk_low"], "recipients": ["bad\r\n@x.org"]}]}})
    problems = "\n".join(e.value.problems)
    assert "email.sender: not an email address: 'steno'" in problems
    assert "email.recipients[1]: not an email address" in problems
    assert "notify.rules[0].recipients[0]: not an email address" in problems and "line break" in problems
    assert "email.security: 'none' would send the password for 'u' in clear to 'mail.example.org'" in problems
    ok = config.from_dict({"email": {"smtp_host": "127.0.0.1", "username": "u"}})     # loopback: allowed
    assert ok.email.security == "none"


def test_odd_input_is_refused_cleanly():
    """The stdlib parser raises IndexError on some malformed input: every answer is InvalidArgument or an
    address."""
    import random
    rng = random.Random(18)
    alphabet = 'a@<>",.:;\\()[] \t=?'
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        try:
            parse_address(text)
        except InvalidArgument:
            pass
    for bad in (None, 3, b"a@b.org", ["a@b.org"]):
        with pytest.raises(InvalidArgument):
            parse_address(bad)
