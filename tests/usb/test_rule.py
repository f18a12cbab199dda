"""The udev rule, checked by the real udevd's rule parser (`udevadm test`)."""
from __future__ import annotations

import re
import subprocess

import pytest

from tests.parts.udev import OUR_RULE, OUR_RULE_SRC

pytestmark = pytest.mark.real


def udevadm_test(syspath: str) -> tuple[str, str]:
    r = subprocess.run(["udevadm", "test", "--action=add", syspath], capture_output=True, text=True, timeout=60)
    return r.stdout, r.stderr


def test_rule_only_sets_properties():
    text = OUR_RULE_SRC.read_text()
    rules = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert not any("RUN" in ln or "PROGRAM" in ln or "IMPORT{program}" in ln for ln in rules)
    assert rules[0].startswith('SUBSYSTEM!="block", GOTO=')          # exits early for other subsystems


@pytest.mark.parametrize("label,marked", [("RECRULE", True), ("PLAIN", False)])
def test_rule_parses_and_marks_usb_filesystems(sticks, label, marked):
    stick = sticks("ext4", label=label if label != "RECRULE" else None)
    part = stick.insert()
    subprocess.run(["udevadm", "settle", "-t", "10"], check=False)
    assert OUR_RULE.read_text() == OUR_RULE_SRC.read_text()
    out, err = udevadm_test(f"/sys/class/block/{part.rsplit('/', 1)[1]}")
    bad = [ln for ln in err.splitlines() if OUR_RULE.name in ln and re.search(r"invalid", ln, re.I)]
    assert bad == [], bad
    props = dict(ln.split("=", 1) for ln in out.splitlines() if "=" in ln and not ln.startswith(" "))
    if marked:
        assert props.get("STENO_EXPORT") == "1" and props.get("UDISKS_AUTO") == "0", out
    else:
        assert "STENO_EXPORT" not in props and "UDISKS_AUTO" not in props, out


def test_a_broken_rule_would_be_caught(sticks, tmp_path):
    """The check above can fail: a rule with a typo yields an 'Invalid' line naming its file."""
    broken = OUR_RULE.with_name("71-steno-broken-test.rules")
    broken.write_text('SUBSYSTEM=="block", ENV{FOO}=="1", GOTO_NOWHERE="x"\n')
    try:
        subprocess.run(["udevadm", "control", "--reload"], check=True)
        stick = sticks("ext4")
        part = stick.insert()
        _, err = udevadm_test(f"/sys/class/block/{part.rsplit('/', 1)[1]}")
        assert any(broken.name in ln and "invalid" in ln.lower() for ln in err.splitlines()), err[-2000:]
    finally:
        broken.unlink()
        subprocess.run(["udevadm", "control", "--reload"], check=False)
