"""`steno-exportctl` against a real core behind the real D-Bus service on a private bus (issue 15 §4):
not-found is rc 4, --json on every command, eject says what it did, export uses the configured formats."""
from __future__ import annotations

import asyncio
import contextlib
import json
import sys

import pytest

from steno_exportd import config, events as ev
from steno_exportd.core import Core
from steno_exportd.dbus import service
from tests.recorder_db import RecorderDB


async def ctl(address: str, *argv: str) -> tuple[int, str, str]:
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "steno_exportd.exportctl", "--bus", address, *argv,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 60)
    return p.returncode, out.decode(), err.decode()


@pytest.fixture
async def daemon(private_bus, tmp_path):
    """A real Core on a real recorder DB, its D-Bus service on a private bus; USB eject is the one
    stand-in (there is no USB bus here): it does what the USB adapter does to the device's state."""
    rec = RecorderDB(tmp_path / "rec")
    for _ in range(2):
        sid = rec.session()
        rec.entry(sid, 0.0, 2.0, "hello there")
    out = tmp_path / "out"
    out.mkdir()
    cfg = config.from_dict({"recorder": {"db_path": str(rec.path)}, "state": {"dir": str(tmp_path / "state")},
                            "export": {"allowed_dirs": [str(out)], "formats": ["md", "json"]},
                            "dbus": {"bus": private_bus, "job_linger_seconds": 30.0}})
    core = Core(cfg)

    async def eject(device_id: str) -> str:
        core.devices.change(device_id, state=ev.DeviceState.EJECTING)
        core.devices.change(device_id, state=ev.DeviceState.SAFE_TO_REMOVE)
        return "powered off"

    await core.start()
    core.set_ejector(eject)
    try:
        async with service.export(core):
            yield core, out
    finally:
        await core.stop()
        rec.close()


async def test_cancel_of_an_unknown_job_is_not_found(daemon, private_bus):
    rc, out, err = await ctl(private_bus, "cancel", "9999")
    assert rc == 4 and "no job 9999" in err, (rc, out, err)
    assert "signature" not in err and "interface" not in err


async def test_export_without_formats_uses_the_configured_ones(daemon, private_bus):
    core, out = daemon
    rc, text, err = await ctl(private_bus, "export", "--to", str(out), "--sessions", "1,2", "--wait", "--json")
    assert rc == 0, err
    job = json.loads(text)
    assert job["State"] == "completed" and job["Formats"] == ["md", "json"], job
    assert [r["status"] for r in job["Results"]] == ["ok", "ok"]
    assert sorted(p.suffix for p in out.rglob("*") if p.suffix in (".md", ".json") and p.parent != out / "SilentSteno")


async def test_every_command_speaks_json(daemon, private_bus):
    core, out = daemon
    core.devices.change("fs_ab12", label="KINGSTON", fs_type="vfat", size=10, free=5,
                        state=ev.DeviceState.MOUNTED)
    for argv in (["status"], ["sessions"], ["devices"], ["jobs"], ["formats"], ["sharing"],
                 ["auto-export", "off"], ["export", "--to", str(out), "--sessions", "1"]):
        rc, text, err = await ctl(private_bus, *argv, "--json")
        assert rc == 0, (argv, err)
        json.loads(text)
    rc, text, err = await ctl(private_bus, "cancel", "1", "--json")
    assert rc == 0, err
    assert json.loads(text)["State"] in ("cancelled", "completed")

    rc, text, err = await ctl(private_bus, "eject", "KINGSTON", "--json")
    assert rc == 0, err
    did = json.loads(text)
    assert did["Job"]["State"] == "completed" and did["Device"]["State"] == "safe_to_remove", did


async def test_eject_says_what_it_did(daemon, private_bus):
    core, out = daemon
    core.devices.change("fs_ab12", label="KINGSTON", fs_type="vfat", size=10, free=5,
                        state=ev.DeviceState.MOUNTED)
    rc, text, err = await ctl(private_bus, "eject", "KINGSTON")
    assert rc == 0, err
    assert text == "KINGSTON: ejected, safe to remove\n", text
    assert "session(s) ok" not in text
    rc, text, err = await ctl(private_bus, "eject", "NOPE", "--json")
    assert rc == 4 and "no device 'NOPE'" in err


HOSTILE = "Board \x1b]2;owned\x07\x1b[2J\x9b31mred\x7f"


@contextlib.asynccontextmanager
async def served(private_bus, tmp_path, title, label):
    """A real Core on the bus whose one session's title and transcript carry ``title`` and whose stick is labelled
    ``label``."""
    rec = RecorderDB(tmp_path / "rec")
    sid = rec.session(title=title)
    rec.entry(sid, 0.0, 2.0, f"budget {title} budget")
    cfg = config.from_dict({"recorder": {"db_path": str(rec.path)}, "state": {"dir": str(tmp_path / "state")},
                            "dbus": {"bus": private_bus}})
    core = Core(cfg)
    await core.start()
    core.devices.change("fs_ab12", label=label, fs_type="vfat", size=10, free=5, state=ev.DeviceState.MOUNTED)
    try:
        async with service.export(core):
            yield core
    finally:
        await core.stop()
        rec.close()


@pytest.fixture
async def hostile(private_bus, tmp_path):
    """A real Core whose recording, transcript and stick carry terminal escapes (a title typed on the touchscreen,
    words a speech engine wrote, a stick's label chosen by whoever formatted it)."""
    async with served(private_bus, tmp_path, HOSTILE, "\x1b[2JSTICK") as core:
        yield core


async def test_titles_snippets_and_labels_reach_the_terminal_without_their_escapes(hostile, private_bus):
    """What the recorder's data holds is shown, but never as a terminal's control sequence (a title that retitles the
    window, clears the screen or colours the rest); --json keeps the words exact and still escapes them."""
    for _ in range(100):                    # the search index is built in the background
        rc, text, err = await ctl(private_bus, "search", "budget", "--json")
        if rc == 0 and json.loads(text)["total"]:
            break
        await asyncio.sleep(0.1)
    for argv in (["sessions"], ["search", "budget"], ["devices"], ["status"]):
        rc, text, err = await ctl(private_bus, *argv)
        assert rc == 0, (argv, err)
        shown = [c for c in text + err if (ord(c) < 32 and c not in "\n") or 0x7f <= ord(c) <= 0x9f]
        assert not shown, (argv, shown, text)
    rc, text, err = await ctl(private_bus, "sessions")
    assert "Board" in text and "red" in text, text
    rc, text, err = await ctl(private_bus, "sessions", "--json")
    assert not [c for c in text if 0x7f <= ord(c) <= 0x9f or (ord(c) < 32 and c not in "\n ")], text
    assert [s["title"] for s in json.loads(text)] == [HOSTILE]


async def test_a_stick_label_in_an_error_reaches_the_terminal_without_its_escapes_with_json_too(hostile, private_bus):
    """--json keeps the daemon's replies exact for a program (escaped in its JSON); an error is still printed as
    words on stderr: "no device ...; devices: <id> (<label>)" printed the stick's label raw with --json (the label
    cleared the admin's screen)."""
    for argv in (["eject", "NOPE"], ["eject", "NOPE", "--json"], ["export", "--sessions", "1", "--to", "NOPE", "--json"]):
        rc, text, err = await ctl(private_bus, *argv)
        assert rc == 4 and "no device 'NOPE'" in err and "STICK" in err, (argv, rc, err)
        shown = [c for c in text + err if (ord(c) < 32 and c not in "\n") or 0x7f <= ord(c) <= 0x9f]
        assert not shown, (argv, shown, err)


# format characters (Unicode category Cf): a right-to-left override, isolates, a zero-width space, a BOM; a
# terminal draws none of them but reorders or hides what follows; a line separator (Zl) breaks a table's row. The
# joiners (U+200C in a Persian word, U+200D in an emoji) only join the letters around them: a part of the words
REORDERING = "Budget \u202eexe.tsil\u202c \u2066review\u2069\u200b Q4\ufeff\u2028 \u0645\u06cc\u200c\u062e\u0648\u0627\u0645 \U0001f469\u200d\U0001f4bb"
JOINERS = "\u200c\u200d"


@pytest.fixture
async def reordering(private_bus, tmp_path):
    """A real Core whose session title, transcript and stick label carry format characters (a title pasted from
    a mail, a label chosen by whoever formatted the stick)."""
    async with served(private_bus, tmp_path, REORDERING, "\u202eKCITS\u200b") as core:
        yield core


async def test_titles_snippets_and_labels_reach_the_terminal_without_format_characters(reordering, private_bus):
    """A right-to-left override in a title or a stick label reordered what an admin read on the terminal (they are
    no control characters, so they passed): now each is shown as U+FFFD, one for one, the words around kept; --json
    escapes them (\\u202e) and keeps the words exact."""
    import unicodedata
    for _ in range(100):                    # the search index is built in the background
        rc, text, err = await ctl(private_bus, "search", "budget", "--json")
        if rc == 0 and json.loads(text)["total"]:
            break
        await asyncio.sleep(0.1)
    for argv in (["sessions"], ["search", "budget"], ["devices"], ["status"], ["sessions", "--json"],
                 ["devices", "--json"], ["search", "budget", "--json"]):
        rc, text, err = await ctl(private_bus, *argv)
        assert rc == 0, (argv, err)
        shown = [f"U+{ord(c):04X}" for c in text + err
                 if unicodedata.category(c) in ("Cf", "Zl", "Zp") and c not in JOINERS]
        assert not shown, (argv, shown, text)
    rc, text, err = await ctl(private_bus, "sessions")
    assert ("Budget \ufffdexe.tsil\ufffd \ufffdreview\ufffd\ufffd Q4\ufffd\ufffd \u0645\u06cc\u200c\u062e\u0648\u0627\u0645 "
            "\U0001f469\u200d\U0001f4bb") in text, text
    rc, text, err = await ctl(private_bus, "devices")
    assert "\ufffdKCITS\ufffd" in text, text
    rc, text, err = await ctl(private_bus, "sessions", "--json")
    assert [s["title"] for s in json.loads(text)] == [REORDERING]
