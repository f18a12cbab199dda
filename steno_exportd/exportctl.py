"""`steno-exportctl`: a command line over the daemon's D-Bus API.

Exit codes: 0 ok, 1 failed, 2 bad arguments, 3 daemon not running, 4 not found,
5 not authorised, 6 busy, 7 the export job finished with errors or was cancelled, 130 interrupted.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from typing import Any, Callable, Iterator

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from steno_exportd.dbus import BUS_NAME, DEVICE_IFACE, JOB_IFACE, MANAGER_IFACE, ROOT_PATH

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_NOT_FOUND = 0, 1, 2, 3, 4
EXIT_NOT_AUTHORIZED, EXIT_BUSY, EXIT_JOB_FAILED = 5, 6, 7
PROPS = "org.freedesktop.DBus.Properties"
FINISHED = ("completed", "failed", "cancelled", "interrupted")

_ERROR_CODES = {
    "org.silentsteno.Export1.Error.NotFound": EXIT_NOT_FOUND,
    "org.silentsteno.Export1.Error.InvalidArgs": EXIT_USAGE,
    "org.silentsteno.Export1.Error.NotAuthorized": EXIT_NOT_AUTHORIZED,
    "org.freedesktop.DBus.Error.AccessDenied": EXIT_NOT_AUTHORIZED,
    "org.silentsteno.Export1.Error.Busy": EXIT_BUSY,
    "org.freedesktop.DBus.Error.ServiceUnknown": EXIT_NOT_RUNNING,
    "org.freedesktop.DBus.Error.NameHasNoOwner": EXIT_NOT_RUNNING,
}
# what the bus answers for an object path nobody exports (a job or device that does not exist)
_NO_OBJECT = ("org.freedesktop.DBus.Error.UnknownObject", "org.freedesktop.DBus.Error.UnknownInterface",
              "org.freedesktop.DBus.Error.UnknownMethod")


class CtlError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# what a terminal must never be given from other people's words: control characters (Unicode category Cc: C0, DEL,
# C1; a terminal takes them for commands: \x1b]2;... retitles the window, \x1b[2J clears it, \x9b is a one-byte CSI)
# and format characters (Cf: a right-to-left override U+202E, the isolates U+2066..2069, a zero-width space U+200B;
# drawn as nothing, they reorder or hide the words around them: a title or a stick label read as another), and the
# line and paragraph separators (Zl, Zp: a row of a table broken in two). The zero-width non-joiner and joiner stay:
# they only join or part the letters around them (a Persian word, an emoji sequence), so a title is read as written
_HIDDEN = ("Cc", "Cf", "Zl", "Zp")
_JOINERS = "\u200c\u200d"


def _hidden(text: str, shown: Callable[[str], str]) -> str:
    """``text`` with each control or format character replaced by ``shown(c)``."""
    if text.isprintable():                  # (neither is printable: most text is looked at no further)
        return text
    return "".join(shown(c) if unicodedata.category(c) in _HIDDEN and c not in _JOINERS else c for c in text)


def _terminal_text(text: str) -> str:
    """Someone else's words for a terminal: every control or format character shown as U+FFFD, one for one (a
    search hit's marks still point at its words)."""
    return _hidden(text, lambda c: "\ufffd")


def _plain(v: Any, text: Callable[[str], str] | None = None) -> Any:
    """A reply's values without their Variants; ``text`` applied to each string in them, keys too."""
    if isinstance(v, Variant):
        return _plain(v.value, text)
    if isinstance(v, str):
        return v if text is None else text(v)
    if isinstance(v, dict):
        return {_plain(k, text): _plain(x, text) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x, text) for x in v]
    return v


def _for_terminal(v: Any) -> Any:
    """A reply's values, plain, with _terminal_text() of every string: titles, transcripts, stick labels and stores'
    error texts are other people's words, printed on an admin's terminal."""
    return _plain(v, _terminal_text)


class Client:
    """A thin async client of org.silentsteno.Export1."""

    def __init__(self, bus_spec: str, raw: bool = False) -> None:
        self.bus_spec = bus_spec
        self.bus: MessageBus | None = None
        self.raw = raw              # the replies as sent (--json: escaped by _print_json), not _for_terminal()

    async def connect(self) -> None:
        try:
            if self.bus_spec == "system":
                self.bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            elif self.bus_spec == "session":
                self.bus = await MessageBus(bus_type=BusType.SESSION).connect()
            else:
                self.bus = await MessageBus(bus_address=self.bus_spec).connect()
        except Exception as e:  # noqa: BLE001 - dbus-fast raises several types on connect
            raise CtlError(f"cannot connect to the D-Bus {self.bus_spec} bus: {e}\n"
                           f"is steno-exportd running? (systemctl status steno-exportd)",
                           EXIT_NOT_RUNNING) from None

    async def call(self, path: str, iface: str, member: str, sig: str = "", body: list | None = None,
                   missing: str = "") -> list:
        """One method call; ``missing`` is the message when ``path`` is no object of the daemon."""
        reply = await self.bus.call(Message(destination=BUS_NAME, path=path, interface=iface, member=member,
                                            signature=sig, body=body or []))
        if reply.message_type == MessageType.ERROR:
            if missing and reply.error_name in _NO_OBJECT:
                raise CtlError(missing, EXIT_NOT_FOUND)
            code = _ERROR_CODES.get(reply.error_name, EXIT_FAILED)
            text = _terminal_text(str(reply.body[0] if reply.body else reply.error_name))
            if code == EXIT_NOT_RUNNING:
                text = f"steno-exportd is not running on the {self.bus_spec} bus ({BUS_NAME} has no owner)"
            raise CtlError(text, code)
        return reply.body if self.raw else _for_terminal(reply.body)

    async def props(self, path: str, iface: str, missing: str = "") -> dict:
        return _plain((await self.call(path, PROPS, "GetAll", "s", [iface], missing=missing))[0])

    async def objects(self, iface: str) -> dict[str, dict]:
        objs = (await self.call(ROOT_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"))[0]
        return {p: _plain(ifaces[iface]) for p, ifaces in sorted(objs.items(), key=lambda kv: _path_key(kv[0]))
                if iface in ifaces}


def _path_key(p: str) -> tuple:
    tail = p.rsplit("/", 1)[-1]
    return (p.rsplit("/", 1)[0], int(tail) if tail.isdigit() else 0, tail)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _print_json(data: Any) -> None:
    """JSON with its accents as they are, but DEL, the C1 controls and the format characters escaped too (json
    escapes only C0 ones; its own line breaks are kept): the words exact for a program, nothing a terminal would run
    or reorder."""
    print(_hidden(json.dumps(data, indent=2, ensure_ascii=False), lambda c: c if c == "\n" else _json_escape(c)))


def _json_escape(c: str) -> str:
    """One character as a JSON string escape (a surrogate pair past U+FFFF)."""
    n = ord(c)
    if n > 0xFFFF:
        n -= 0x10000
        return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"
    return f"\\u{n:04x}"


# ---- commands ------------------------------------------------------------------------

async def cmd_status(c: Client, args: argparse.Namespace) -> int:
    p = await c.props(ROOT_PATH, MANAGER_IFACE)
    devices = await c.objects(DEVICE_IFACE)
    jobs = await c.objects(JOB_IFACE)
    if args.json:
        _print_json({**p, "Devices": len(devices), "Jobs": len(jobs)})
        return EXIT_OK
    web = str(p["WebAccess"])
    if web.startswith("OPEN"):             # first, so nobody misses it
        print(f"WARNING: the web page is {web}")
    print(f"steno-exportd {p['Version']}: {p['Status']}")
    print(f"  state:       {p['State']}")
    print(f"  sessions:    {p['SessionCount']}")
    print(f"  devices:     {len(devices)}")
    print(f"  jobs:        {sum(1 for j in jobs.values() if j['State'] not in FINISHED)} running, {len(jobs)} listed")
    print(f"  auto-export: {'on' if p['AutoExport'] else 'off'}")
    state = p.get("SambaState", "")
    print(f"  samba:       {'on' if p['SambaEnabled'] else 'off'}"
          + (f" ({state})" if state and state != ("serving" if p["SambaEnabled"] else "off") else ""))
    print(f"  NAS folder:  {p['RemoteFolder']} (this recorder's folder on smb: and rclone: remotes)")
    if p["HttpUrl"]:
        print(f"  web page:    {p['HttpUrl']}")
    if web:
        print(f"  web access:  {web}")
    return EXIT_OK


async def cmd_sessions(c: Client, args: argparse.Namespace) -> int:
    filt: dict[str, Variant] = {}
    if args.exportable:
        filt["exportable_only"] = Variant("b", True)
    if args.query:
        filt["query"] = Variant("s", args.query)
    sessions = _plain((await c.call(ROOT_PATH, MANAGER_IFACE, "ListSessions", "a{sv}", [filt]))[0])
    if args.json:
        _print_json(sessions)
        return EXIT_OK
    print(f"{'ID':>5}  {'SHORT':8}  {'DATE':16}  {'LENGTH':>7}  {'STATUS':10}  TITLE")
    for s in sessions:
        when = s["start_time"][:16].replace("T", " ") if s["start_time"] else "-"
        mins = f"{s['duration'] // 60} min" if s["duration"] else "-"
        short = s["uuid"].replace("-", "")[:8]
        flag = "" if s["exportable"] else "  (not exportable)"
        print(f"{s['id']:>5}  {short:8}  {when:16}  {mins:>7}  {s['status'][:10]:10}  {s['title']}{flag}")
    print(f"{len(sessions)} session(s)")
    return EXIT_OK


def _marked(snippet: str, marks: list, tty: bool) -> str:
    """The snippet with its matches in bold on a terminal, in [brackets] otherwise."""
    on, off = ("\033[1m", "\033[0m") if tty else ("[", "]")
    out, pos = [], 0
    for a, b in marks:
        out += [snippet[pos:a], on, snippet[a:b], off]
        pos = b
    return "".join(out + [snippet[pos:]])


def _whole(bits: int) -> Callable[[str], int]:
    """A whole number that fits a D-Bus 'u' (32 bits) or 't' (64); the daemon checks its own range."""
    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit()) or int(text) >= 2**bits:
            raise argparse.ArgumentTypeError(f"not a whole number: {text[:20]!r}")
        return int(text)
    return parse


_count = _whole(32)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


async def cmd_search(c: Client, args: argparse.Namespace) -> int:
    sessions, total, pending = await c.call(ROOT_PATH, MANAGER_IFACE, "SearchSessions", "su", [args.query, args.limit])
    sessions = _plain(sessions)
    if args.json:
        _print_json({"total": total, "pending": pending, "sessions": sessions})
        return EXIT_OK
    tty = sys.stdout.isatty()
    for s in sessions:
        when = s["start_time"][:16].replace("T", " ") if s["start_time"] else "-"
        print(f"{s['id']:>5}  {when:16}  {s['title']}  ({s['matches']} match{'' if s['matches'] == 1 else 'es'})")
        for h in s["hits"]:
            where = _clock(h["seconds"]) + (f" {h['speaker']}" if h.get("speaker") else "") if "seconds" in h else h["kind"]
            print(f"       {where}: {_marked(h['snippet'], h['marks'], tty)}")
    more = f", showing {len(sessions)}" if len(sessions) < total else ""
    print(f"{total} session(s) found{more}" + (f"; {pending} still being indexed" if pending else ""))
    return EXIT_OK


async def cmd_devices(c: Client, args: argparse.Namespace) -> int:
    devices = await c.objects(DEVICE_IFACE)
    if args.json:
        _print_json([{"Path": p, **d} for p, d in devices.items()])
        return EXIT_OK
    if not devices:
        print("no devices")
    for d in devices.values():
        err = f"  error: {d['Error']}" if d["Error"] else ""
        err += f"  not exported: {d['SkipReason']}" if d.get("SkipReason") else ""
        print(f"{d['Id']:20} {d['Label'] or '-':14} {d['FsType']:6} {_size(d['Free'])} free of {_size(d['Size'])}"
              f"  {d['State']:15} {d['MountPoint'] or ''}{err}")
    return EXIT_OK


def _job_line(path: str, j: dict) -> str:
    num = path.rsplit("/", 1)[-1]
    pct = f"{j['Progress'] * 100:3.0f}%"
    err = f"  {j['Error']}" if j["Error"] else ""
    return f"{num:>4}  {j['Operation']:7} {j['State']:11} {pct}  {j['Target']}{err}"


async def cmd_jobs(c: Client, args: argparse.Namespace) -> int:
    jobs = await c.objects(JOB_IFACE)
    if args.json:
        _print_json([{"Path": p, **j} for p, j in jobs.items()])
        return EXIT_OK
    if not jobs:
        print("no jobs")
    for p, j in jobs.items():
        print(_job_line(p, j))
    return EXIT_OK


def _job_path(job: str) -> str:
    if job.startswith("/"):
        return job
    if not job.isdigit():
        raise CtlError(f"not a job number: {job!r}", EXIT_USAGE)
    return f"{ROOT_PATH}/jobs/{job}"


async def _device_path(c: Client, spec: str) -> str:
    if spec.startswith(ROOT_PATH + "/devices/"):
        return spec
    devices = await c.objects(DEVICE_IFACE)
    for p, d in devices.items():
        if spec in (d["Id"], d["Uuid"], d["Label"], d["DevicePath"]):
            return p
    known = ", ".join(f"{d['Id']} ({d['Label']})" for d in devices.values()) or "none"
    raise CtlError(f"no device {spec!r}; devices: {known}", EXIT_NOT_FOUND)


async def cmd_export(c: Client, args: argparse.Namespace) -> int:
    ids = [i for s in args.sessions for i in s.split(",") if i]
    fmts = [f for s in (args.formats or []) for f in s.split(",") if f]
    opts: dict[str, Variant] = {}
    if args.template:
        opts["template"] = Variant("s", args.template)
    to = args.to                        # no --formats: the daemon uses the target's configured formats
    if to.startswith("/") and not to.startswith(ROOT_PATH + "/"):
        target = os.path.abspath(to)
    elif to.startswith(("smb:", "rclone:")):
        target = to
    else:
        target = await _device_path(c, to)
    job = (await c.call(ROOT_PATH, MANAGER_IFACE, "ExportSessions", "asassa{sv}", [ids, fmts, target, opts]))[0]
    if args.json and not args.wait:
        _print_json({"Path": job, **await c.props(job, JOB_IFACE)})
        return EXIT_OK
    print(f"job {job.rsplit('/', 1)[-1]} started ({job})", file=sys.stderr if args.wait else sys.stdout)
    if not args.wait:
        return EXIT_OK
    return await _wait(c, job, args.json)


async def _wait(c: Client, job: str, as_json: bool) -> int:
    tty = sys.stderr.isatty()
    j: dict = {}
    while True:
        try:
            j = await c.props(job, JOB_IFACE, missing=f"no job {job.rsplit('/', 1)[-1]}")
        except CtlError as e:
            if not j:
                raise
            break  # the job left the bus: its last state is what we saw
        if tty:
            width = 30
            done = int(j["Progress"] * width)
            bar = "#" * done + "-" * (width - done)
            cur = os.path.basename(j["CurrentFile"])[:30]
            sys.stderr.write(f"\r[{bar}] {j['Progress'] * 100:5.1f}% {_size(j['BytesDone'])}"
                             f"/{_size(j['BytesTotal'])} {cur:30}")
            sys.stderr.flush()
        if j["State"] in FINISHED:
            break
        await asyncio.sleep(0.25)
    if tty:
        sys.stderr.write("\n")
    if as_json:
        _print_json(j)
    else:
        results = j.get("Results", [])
        ok = sum(1 for r in results if r["ok"])
        print(f"{j.get('State', 'gone')}: {ok}/{len(results)} session(s) ok"
              + (f"; {j['Error']}" if j.get("Error") else ""))
        for r in results:
            if not r["ok"]:
                print(f"  session {r['session_id']} {r['title']}: {r['error']}")
            elif r.get("warnings"):
                print(f"  session {r['session_id']} {r['title']}: ok with warnings: {'; '.join(r['warnings'])}")
    return EXIT_OK if j.get("State") == "completed" else EXIT_JOB_FAILED


def _time(usec: int) -> str:
    """Local time of a D-Bus time (microseconds since the epoch); "-" for none."""
    if not usec:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(usec / 1e6))


async def cmd_email(c: Client, args: argparse.Namespace) -> int:
    ids = [i for s in args.sessions for i in s.split(",") if i]
    fmts = [f for s in (args.formats or []) for f in s.split(",") if f]
    opts: dict[str, Variant] = {}
    if args.template:
        opts["template"] = Variant("s", args.template)
    msg_id = (await c.call(ROOT_PATH, MANAGER_IFACE, "EmailSessions", "asasasa{sv}", [ids, fmts, args.to, opts]))[0]
    if args.json:
        _print_json({"id": msg_id})
    else:
        print(f"message {msg_id} queued (steno-exportctl outbox shows how it goes)")
    return EXIT_OK


def _listing(member: str, empty: str, lines: Callable[[dict], Iterator[str]]):
    """A command that prints what a Manager list method returns: JSON, or ``lines`` of each item (``empty``
    for none)."""
    async def cmd(c: Client, args: argparse.Namespace) -> int:
        items = _plain((await c.call(ROOT_PATH, MANAGER_IFACE, member))[0])
        if args.json:
            _print_json(items)
            return EXIT_OK
        if not items:
            print(empty)
        for item in items:
            print("\n".join(lines(item)))
        return EXIT_OK
    return cmd


async def cmd_outbox(c: Client, args: argparse.Namespace) -> int:
    """The outbox listed, or one message retried or cancelled."""
    if args.action is None:
        return await _listing("ListOutbox", "the outbox is empty", _outbox_lines)(c, args)
    if args.id is None:
        raise CtlError(f"outbox {args.action} needs the message's id (steno-exportctl outbox lists them)", EXIT_USAGE)
    member = {"retry": "RetryMail", "cancel": "CancelMail"}[args.action]
    e = _plain((await c.call(ROOT_PATH, MANAGER_IFACE, member, "t", [args.id]))[0])
    if args.json:
        _print_json(e)
    else:
        print("\n".join(_outbox_lines(e)))
    return EXIT_OK


def _outbox_lines(e: dict) -> Iterator[str]:
    who = ", ".join(e["delivered"] + e["recipients"])
    yield f"{e['id']:>4}  {e['state']:9} {_time(e['created'])}  {e['subject']}  -> {who}"
    if e["state"] == "queued" and e["attempts"]:
        yield f"      try {e['attempts'] + 1} at {_time(e['next_attempt'])}: last {e['error']}"
    elif e["error"]:
        yield f"      {'failed: ' if e['state'] == 'failed' else ''}{e['error']}"
    for r in e["refused"]:
        yield f"      refused: {r}"
    if e["left_out"]:
        yield f"      left out (over the size limit): {', '.join(e['left_out'])}"


def _schedule_lines(s: dict) -> Iterator[str]:
    yield f"{s['name']:16} {s['when']:16} next {_time(s['next_run'])}  {s['sessions']:10} -> {s['target']}"
    if s["last_run"]:
        yield f"{'':16} last {_time(s['last_run'])}: {s['last_result']}"
    elif s["last_result"]:
        yield f"{'':16} {s['last_result']}"


async def cmd_cancel(c: Client, args: argparse.Namespace) -> int:
    path = _job_path(args.job)
    missing = f"no job {path.rsplit('/', 1)[-1]}"
    await c.call(path, JOB_IFACE, "Cancel", missing=missing)
    j = await c.props(path, JOB_IFACE, missing=missing)
    if args.json:
        _print_json({"Path": path, **j})
    else:
        print(f"job {args.job} {j['State']}" + (" (it stops at the next safe point)" if j["State"] == "running"
                                                 else ""))
    return EXIT_OK


async def cmd_eject(c: Client, args: argparse.Namespace) -> int:
    path = await _device_path(c, args.device)
    job = (await c.call(path, DEVICE_IFACE, "Eject"))[0]
    j: dict = {}
    while True:                         # the daemon answers once the eject is done; a queued one is waited for
        j = await c.props(job, JOB_IFACE, missing="the eject job left the bus")
        if j["State"] in FINISHED or not args.wait:
            break
        await asyncio.sleep(0.25)
    d = await c.props(path, DEVICE_IFACE)
    name = d["Label"] or d["Id"]
    if args.json:
        _print_json({"Job": {"Path": job, **j}, "Device": {"Path": path, **d}})
    elif j["State"] == "completed":
        print(f"{name}: ejected, {d['State'].replace('_', ' ')}")
    else:
        print(f"{name}: eject {j['State']}" + (f": {j['Error']}" if j["Error"] else "")
              + f"; the stick is {d['State'].replace('_', ' ')}")
    if j["State"] in FINISHED and j["State"] != "completed":
        return EXIT_FAILED
    return EXIT_OK


async def cmd_reload(c: Client, args: argparse.Namespace) -> int:
    await c.call(ROOT_PATH, MANAGER_IFACE, "Reload")
    if args.json:
        _print_json({"reloaded": True})
    else:
        print("configuration reloaded")
    return EXIT_OK


def _switch(prop: str, what: str):
    """A command that shows an on/off switch of the daemon, or sets it ("on"/"off")."""
    async def cmd(c: Client, args: argparse.Namespace) -> int:
        if args.value is not None:
            await c.call(ROOT_PATH, PROPS, "Set", "ssv", [MANAGER_IFACE, prop, Variant("b", args.value == "on")])
        p = await c.props(ROOT_PATH, MANAGER_IFACE)
        if args.json:
            _print_json({prop: p[prop], **({"SambaState": p["SambaState"]} if prop == "SambaEnabled" else {})})
            return EXIT_OK
        line = f"{what}: {'on' if p[prop] else 'off'}"
        if prop == "SambaEnabled" and p.get("SambaState") not in ("", "serving" if p[prop] else "off"):
            line += f" ({p['SambaState']})"
        print(line)
        return EXIT_OK
    return cmd


async def cmd_pair(c: Client, args: argparse.Namespace) -> int:
    offer = _plain((await c.call(ROOT_PATH, MANAGER_IFACE, "StartPairing"))[0])
    if args.json:
        _print_json(offer)
        return EXIT_OK
    print(f"pairing code: {offer['code']}  (valid {offer['seconds'] // 60} min {offer['seconds'] % 60} s, once)")
    if offer["url"]:
        print(f"or open:      {offer['url']}")
        if sys.stdout.isatty():
            import segno
            segno.make(offer["url"], error="m").terminal(compact=True)
    return EXIT_OK


def _browser_lines(b: dict) -> Iterator[str]:
    yield f"{b['id']}  {b['kind']:8}  {b['address'][:39]:39}  {_time(b['last_seen'] * 1_000_000)}  {b['agent'][:40]}"


async def cmd_revoke_browser(c: Client, args: argparse.Namespace) -> int:
    await c.call(ROOT_PATH, MANAGER_IFACE, "RevokeBrowser", "s", [args.id])
    print(f"browser {args.id} logged out")
    return EXIT_OK


def _read_password(what: str) -> str:
    """From a terminal (asked twice) or the first line of standard input."""
    import getpass
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    pw = getpass.getpass(f"{what}: ")
    if getpass.getpass("again: ") != pw:
        raise CtlError("the two passwords differ", EXIT_USAGE)
    return pw


def _set_password(member: str, what: str, done: str):
    async def cmd(c: Client, args: argparse.Namespace) -> int:
        await c.call(ROOT_PATH, MANAGER_IFACE, member, "s", [_read_password(what)])
        print(done)
        return EXIT_OK
    return cmd


async def cmd_formats(c: Client, args: argparse.Namespace) -> int:
    fmts = (await c.call(ROOT_PATH, MANAGER_IFACE, "ListFormats"))[0]
    tpls = (await c.call(ROOT_PATH, MANAGER_IFACE, "ListTemplates"))[0]
    if args.json:
        _print_json({"formats": fmts, "templates": tpls})
    else:
        print("formats:   " + " ".join(fmts))
        print("templates: " + " ".join(tpls))
    return EXIT_OK


# ---- setup-samba: local, no daemon needed ----------------------------------------------------

SMB_CONF = "/etc/samba/smb.conf"
SAMBA_MARK = ("# steno-exportd: the recorder's read-only share (added by `steno-exportctl setup-samba`; "
              "undo: `steno-exportctl setup-samba --remove`)")
# testparm exits 0 on many problems: its stderr lines that say something is wrong.
_TESTPARM_PROBLEM = re.compile(r"unknown parameter|ignoring unknown|error|can't find include|failed|invalid|"
                               r"not a valid|unable to", re.I)
_INCLUDE = re.compile(r"^\s*include\s*=\s*(.*?)\s*$", re.I)


def _testparm(path: str, *extra: str) -> tuple[int, str, list[str]]:
    """(exit status, stdout, problem lines on stderr) of testparm on one smb.conf."""
    try:
        r = subprocess.run(["testparm", "-s", "--suppress-prompt", *extra, path], capture_output=True,
                           text=True, timeout=60, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise CtlError("testparm not found: install samba first (apt install samba)") from None
    except subprocess.TimeoutExpired:
        raise CtlError(f"testparm {path} did not finish in 60 s") from None
    return r.returncode, r.stdout, [ln.strip() for ln in r.stderr.splitlines() if _TESTPARM_PROBLEM.search(ln)]


def _smb_conf_with(text: str, snippet: str, add: bool) -> str:
    """smb.conf's text with our include line (and its comment) added at the end, or taken out again."""
    lines = text.splitlines()
    out: list[str] = []
    for i, ln in enumerate(lines):
        ours = ln.strip() == SAMBA_MARK or ((m := _INCLUDE.match(ln)) is not None and m.group(1) == snippet)
        blank_before_mark = not ln.strip() and i + 1 < len(lines) and lines[i + 1].strip() == SAMBA_MARK
        if not ours and not blank_before_mark:
            out.append(ln)
    if add:     # at the end: after [global] and every share, so the snippet's [share] section stands alone
        out += ["", SAMBA_MARK, f"include = {snippet}"]
    return "\n".join(out) + "\n"


def _reload_smbd() -> str:
    """Ask a running smbd to re-read smb.conf; what happened, in words."""
    if os.path.isdir("/run/systemd/system"):
        cmd = ["systemctl", "try-reload-or-restart", "smbd.service"]
    else:
        cmd = ["smbcontrol", "smbd", "reload-config"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        return f"smbd not reloaded ({e}); it reads smb.conf when it next starts"
    if r.returncode != 0:
        return f"smbd not reloaded ({(r.stderr or r.stdout).strip() or r.returncode}); it reads smb.conf when it next starts"
    return "smbd reloaded"


def cmd_setup_samba(args: argparse.Namespace) -> int:
    """Add (or with --remove take out) the one include line smb.conf needs: idempotent, checked by
    testparm before smb.conf is replaced, the previous smb.conf kept as a backup."""
    from steno_exportd import config
    from steno_exportd.errors import ConfigError

    try:
        cfg = config.load(args.config)
    except ConfigError as e:
        raise CtlError(str(e)) from None
    except OSError as e:
        raise CtlError(f"cannot read {args.config or config.DEFAULT_PATH}: {e.strerror}",
                       EXIT_NOT_AUTHORIZED if isinstance(e, PermissionError) else EXIT_FAILED) from None
    snippet, conf = cfg.samba.snippet_path, args.smb_conf
    try:
        text = open(conf, encoding="utf-8").read()
    except FileNotFoundError:
        raise CtlError(f"{conf} does not exist: install samba first (apt install samba)") from None
    except OSError as e:
        raise CtlError(f"cannot read {conf}: {e.strerror}",
                       EXIT_NOT_AUTHORIZED if isinstance(e, PermissionError) else EXIT_FAILED) from None
    new = _smb_conf_with(text, snippet, add=not args.remove)
    if new == text or (args.remove and new == text + "\n"):
        print(f"{conf} {'does not include' if args.remove else 'already includes'} {snippet}: nothing to do")
        return EXIT_OK
    if not args.remove and not os.path.exists(snippet):
        raise CtlError(f"{snippet} does not exist yet: is steno-exportd installed and started? "
                       f"(systemctl start steno-exportd)")
    folder = os.path.dirname(os.path.abspath(conf))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".smb.conf.steno-", dir=folder)
    except PermissionError:
        raise CtlError(f"cannot write in {folder}: run setup-samba as root", EXIT_NOT_AUTHORIZED) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
        _, _, before = _testparm(conf)
        status, _, after = _testparm(tmp)
        added = [p for p in after if p.replace(tmp, conf) not in before]
        if status != 0 or added:
            raise CtlError(f"testparm refuses the new {conf}; it was not changed:\n  "
                           + "\n  ".join(added or [f"testparm exit status {status}"]))
        st = os.stat(conf)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, st.st_mode & 0o7777)
        stamp = f"{conf}.steno-exportd-{time.strftime('%Y%m%d-%H%M%S')}"
        backup = next(b for n in range(1000) if not os.path.exists(b := f"{stamp}{f'-{n}' if n else ''}.bak"))
        shutil.copy2(conf, backup)
        os.replace(tmp, conf)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    print(f"{conf}: {'removed' if args.remove else 'added'} 'include = {snippet}' (previous file: {backup})")
    if not args.remove and cfg.samba.guest_ok:
        _, guest, _ = _testparm(conf, "--section-name=global", "--parameter-name=map to guest")
        if guest.strip().lower() != "bad user":
            print(f"note: guests (samba.guest_ok) need 'map to guest = Bad User' in [global] of {conf}")
    print(_reload_smbd())
    if not args.remove:
        print("switch the share on with: steno-exportctl sharing on")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="steno-exportctl", description="Control steno-exportd over D-Bus.",
                                epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bus", default=os.environ.get("STENO_EXPORTCTL_BUS", "system"),
                   help="system (default), session, or a D-Bus address")
    p.set_defaults(local=False)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Any, help_: str, dbus: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        if dbus:                        # every command that talks to the daemon prints JSON on request
            sp.add_argument("--json", action="store_true", help="print JSON")
        sp.set_defaults(fn=fn)
        return sp

    add("status", cmd_status, "daemon state, session/device/job counts")
    sp = add("sessions", cmd_sessions, "list the recorder's sessions")
    sp.add_argument("--exportable", action="store_true", help="only exportable sessions")
    sp.add_argument("--query", help="only titles containing this")
    sp = add("search", cmd_search, "find sessions by what was said (and titles, summaries, people, places)")
    sp.add_argument("query", help='words (all must occur), "a phrase", or a prefix*; case and accents do not matter')
    sp.add_argument("--limit", type=_count, default=20, help="at most this many sessions (1-50, default 20)")
    add("devices", cmd_devices, "list USB sticks")
    add("jobs", cmd_jobs, "list export/eject jobs")
    add("formats", cmd_formats, "list formats and templates")
    sp = add("export", cmd_export, "export sessions to a device, a directory, smb:<remote> or rclone:<remote>")
    sp.add_argument("--to", required=True, help="device id/label/path, an allowed directory, smb:<remote> or rclone:<remote>")
    sp.add_argument("--sessions", nargs="+", required=True, help="session ids, uuids or short ids")
    sp.add_argument("--formats", nargs="+", help="formats, e.g. txt pdf audio (default: the configured ones)")
    sp.add_argument("--template", help="PDF/DOCX template")
    sp.add_argument("--wait", action="store_true", help="wait for the job (progress bar on a terminal)")
    sp = add("email", cmd_email, "mail sessions with their documents attached (through the outbox)")
    sp.add_argument("--to", nargs="+", required=True, help="addresses: a@b.example or 'Name <a@b.example>'")
    sp.add_argument("--sessions", nargs="+", required=True, help="session ids, uuids or short ids")
    sp.add_argument("--formats", nargs="+", help="formats to attach (default: export.formats)")
    sp.add_argument("--template", help="PDF/DOCX template")
    sp = add("outbox", cmd_outbox, "list the outbox: queued, sent and failed messages (and why); "
             "retry or cancel one")
    sp.add_argument("action", nargs="?", choices=("retry", "cancel"),
                    help="retry: send a failed or cancelled message again (or a queued one now); "
                    "cancel: withdraw a message still waiting")
    sp.add_argument("id", nargs="?", type=_whole(64), help="the message's id (the first column of the list)")
    add("schedules", _listing("ListSchedules", "no schedules", _schedule_lines),
        "list scheduled exports and their next run")
    sp = add("cancel", cmd_cancel, "cancel a job")
    sp.add_argument("job", help="job number or object path")
    sp = add("eject", cmd_eject, "unmount and power off a device")
    sp.add_argument("device", help="device id, label or object path")
    sp.add_argument("--wait", action="store_true", help="wait until it is safe to remove")
    add("reload", cmd_reload, "reload the daemon's configuration")
    add("pair", cmd_pair, "a one-time code (and URL/QR) that logs one browser in to the web page")
    add("browsers", _listing("ListPairedBrowsers", "no browser is logged in", _browser_lines),
        "list the browsers logged in to the web page")
    sp = add("revoke-browser", cmd_revoke_browser, "log one browser out at once")
    sp.add_argument("id", help="browser id (from 'browsers')")
    add("web-password", _set_password("SetWebPassword", "web password", "web password set"),
        "set the web page's password (read from the terminal or standard input)")
    add("samba-password", _set_password("SetSambaPassword", "share password",
                                        "share password handed to the root helper"),
        "set the read-only share user's password (read from the terminal or standard input)")
    for name, prop, what in (("sharing", "SambaEnabled", "the read-only Samba share"),
                             ("auto-export", "AutoExport", "automatic export to plugged-in sticks")):
        sp = add(name, _switch(prop, name), f"show, or switch on/off, {what} (until the config changes)")
        sp.add_argument("value", nargs="?", choices=("on", "off"))
    sp = add("setup-samba", cmd_setup_samba, f"add the line that includes the recorder's share to {SMB_CONF} "
             "(once, checked by testparm, with a backup; as root); the daemon need not run", dbus=False)
    sp.add_argument("--remove", action="store_true", help="take the line out again (before removing the package)")
    sp.add_argument("--smb-conf", default=SMB_CONF, help=f"Samba's configuration (default {SMB_CONF})")
    sp.add_argument("--config", help="steno-exportd's configuration, for samba.snippet_path "
                    "(default $STENO_CONFIG, else /etc/steno-exportd/config.toml)")
    sp.set_defaults(local=True)
    return p


async def _run(args: argparse.Namespace) -> int:
    c = Client(args.bus, raw=args.json)
    await c.connect()
    try:
        return await args.fn(c, args)
    finally:
        c.bus.disconnect()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    try:
        if args.local:                  # works on this machine's files, not over D-Bus
            return args.fn(args)
        return asyncio.run(_run(args))
    except CtlError as e:
        # (words on a terminal with --json too: a stick's label in "no device ...; devices: ..." came raw then)
        print(f"steno-exportctl: {_terminal_text(str(e))}", file=sys.stderr)
        return e.code
    except BrokenPipeError:             # `steno-exportctl sessions | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
