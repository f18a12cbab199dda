"""An upgrade from the previous build keeps the admin's edited config; removing the package (without
purge) takes the Samba share down with it. One container, the steps in file order."""
from __future__ import annotations

import re
import subprocess

import pytest

from tests.packaging.conftest import VERSION, recorder_library
from tests.parts import require_tool, wait_for
from tests.parts.nspawn import Container

CONFIG = "/etc/steno-exportd/config.toml"


@pytest.fixture(scope="module")
def box(previous_deb, container_factory) -> Container:
    c = container_factory("steno-upg", "172.30.232")
    c.boot()
    recorder_library(c)
    out = c.install(previous_deb).stdout
    assert f"Setting up steno-exportd ({VERSION}~previous1)" in out, out
    return c


def _unit(c: Container) -> dict[str, str]:
    return c.show("steno-exportd.service", "ActiveState", "MainPID", "NRestarts", "StatusText")


def test_upgrade_keeps_the_admins_edited_config(box, deb):
    wait_for(lambda: _unit(box)["ActiveState"] == "active", timeout=60, interval=0.5, what="the previous build")
    # the admin's edits: no automatic stick exports, and the share on
    box.run(f"sed -i -e '/^\\[usb.auto_export\\]/,/^\\[/ s/^# enabled = true/enabled = false/' "
            f"-e '/^\\[samba\\]/,/^\\[/ s/^# enabled = false/enabled = true/' {CONFIG}")
    edited = box.run(f"cat {CONFIG}").stdout
    assert re.search(r"^enabled = false$", edited, re.M) and re.search(r"^enabled = true$", edited, re.M)
    box.run("systemctl reload steno-exportd")
    wait_for(lambda: "auto-export: off" in box.run("steno-exportctl status").stdout, timeout=30, interval=0.5,
             what="the edited config to be in effect")
    before = _unit(box)

    out = box.install(deb).stdout
    assert f"Setting up steno-exportd ({VERSION})" in out and f"over ({VERSION}~previous1)" in out, out
    assert "Configuration file" not in out, out            # no conffile question: it is simply kept
    assert box.run(f"cat {CONFIG}").stdout == edited
    assert box.run("ls /etc/steno-exportd/").stdout.split() == ["config.toml"]     # no .dpkg-dist/-old
    assert box.run("dpkg-query -W -f '${Version}' steno-exportd").stdout == VERSION
    after = wait_for(lambda: (u := _unit(box))["ActiveState"] == "active" and u["MainPID"] != before["MainPID"]
                     and u, timeout=60, interval=0.5, what="the service restarted on the new version")
    assert after["NRestarts"] == "0", (after, box.journal())
    status = box.run("steno-exportctl status").stdout
    assert f"steno-exportd {VERSION}:" in status and "auto-export: off" in status, status


def test_removing_the_package_takes_the_share_down(box):
    require_tool("smbclient")
    box.run("systemctl start smbd && steno-exportctl setup-samba")
    # guests are refused out of the box: the admin sets the share user's password (the root unit applies it)
    box.run("steno-exportctl samba-password", input="share user pw\n")
    wait_for(lambda: "steno-share:" in box.run("pdbedit -L").stdout, timeout=30, interval=0.5,
             what="the share user's password")

    def listing() -> subprocess.CompletedProcess:
        return subprocess.run(["smbclient", "-U", "steno-share%share user pw", f"//{box.ip}/meetings", "-c", "ls"],
                              capture_output=True, text=True, timeout=60)
    # samba.enabled = true from the kept config: the share is up without any steno-exportctl call
    wait_for(lambda: listing().returncode == 0, timeout=90, interval=1,
             what=f"the share from the kept config ({box.run('steno-exportctl status').stdout})")
    box.run("apt-get remove -y -q steno-exportd 2>&1", timeout=300)
    wait_for(lambda: listing().returncode != 0, timeout=30, interval=0.5,
             what="the share to go with the removed package")
    assert "NT_STATUS_BAD_NETWORK_NAME" in listing().stdout + listing().stderr
    snippet = box.run("cat /var/lib/steno-exportd/samba/steno-exportd.conf").stdout
    assert "Sharing is off" in snippet and "[meetings]" not in snippet, snippet
    # removed, not purged: the admin's config stays for a reinstall
    assert "enabled = false" in box.run(f"cat {CONFIG}").stdout
