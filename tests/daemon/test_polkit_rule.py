"""The polkit rule, evaluated by a real JavaScript engine (node) with polkit's rule API stubbed."""
from __future__ import annotations

import json
import subprocess

from tests.parts.daemon import REPO
from tests.parts import require_tool

RULE = REPO / "config" / "polkit" / "50-steno-exportd.rules"

HARNESS = """
const fs = require("fs");
const rules = [];
const polkit = {Result: {YES: "yes", NO: "no", AUTH_ADMIN: "auth_admin", NOT_HANDLED: null},
                addRule: (f) => rules.push(f)};
eval(fs.readFileSync(process.argv[1], "utf8"));
const cases = JSON.parse(process.argv[2]);
const out = cases.map(([user, id, details]) => {
  const action = {id: id, lookup: (k) => details[k]};
  const subject = {user: user, isInGroup: () => false};
  for (const r of rules) { const v = r(action, subject); if (v !== undefined && v !== null) return v; }
  return "not_handled";
});
console.log(JSON.stringify(out));
"""

USB = {"drive.removable": "true", "drive.removable.bus": "usb"}
SYSTEM = {"drive.removable": "false"}


def test_polkit_rule_allows_only_removable_mount_unmount_poweroff():
    require_tool("node")
    cases = [
        ("steno-export", "org.freedesktop.udisks2.filesystem-mount", USB, "yes"),
        ("steno-export", "org.freedesktop.udisks2.filesystem-unmount-others", USB, "yes"),
        ("steno-export", "org.freedesktop.udisks2.power-off-drive", USB, "yes"),
        ("steno-export", "org.freedesktop.udisks2.eject-media", USB, "yes"),
        ("steno-export", "org.freedesktop.udisks2.filesystem-mount-system", SYSTEM, "no"),
        ("steno-export", "org.freedesktop.udisks2.filesystem-mount", SYSTEM, "no"),
        ("steno-export", "org.freedesktop.udisks2.modify-device", USB, "no"),
        ("steno-export", "org.freedesktop.udisks2.loop-setup", {}, "no"),
        ("steno-export", "org.freedesktop.login1.reboot", {}, "not_handled"),
        ("alice", "org.freedesktop.udisks2.filesystem-mount", USB, "not_handled"),
    ]
    r = subprocess.run(["node", "-e", HARNESS, str(RULE), json.dumps([c[:3] for c in cases])],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got == [c[3] for c in cases], list(zip(cases, got))
