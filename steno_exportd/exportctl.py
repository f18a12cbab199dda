"""`steno-exportctl`: a command line over the daemon's D-Bus API.

Exit codes: 0 ok, 1 failed, 2 bad arguments, 3 daemon not running, 4 not found,
5 not authorised, 6 busy, 7 the export job finished with errors or was cancelled, 130 interrupted.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

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


class CtlError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _plain(v: Any) -> Any:
    if isinstance(v, Variant):
        return _plain(v.value)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


class Client:
    """A thin async client of org.silentsteno.Export1."""

    def __init__(self, bus_spec: str) -> None:
        self.bus_spec = bus_spec
        self.bus: MessageBus | None = None

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

    async def call(self, path: str, iface: str, member: str, sig: str = "", body: list | None = None) -> list:
        reply = await self.bus.call(Message(destination=BUS_NAME, path=path, interface=iface, member=member,
                                            signature=sig, body=body or []))
        if reply.message_type == MessageType.ERROR:
            code = _ERROR_CODES.get(reply.error_name, EXIT_FAILED)
            text = reply.body[0] if reply.body else reply.error_name
            if code == EXIT_NOT_RUNNING:
                text = f"steno-exportd is not running on the {self.bus_spec} bus ({BUS_NAME} has no owner)"
            raise CtlError(text, code)
        return reply.body

    async def props(self, path: str, iface: str) -> dict:
        return _plain((await self.call(path, PROPS, "GetAll", "s", [iface]))[0])

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
    print(json.dumps(data, indent=2, ensure_ascii=False))


# ---- commands ------------------------------------------------------------------------

async def cmd_status(c: Client, args: argparse.Namespace) -> int:
    p = await c.props(ROOT_PATH, MANAGER_IFACE)
    devices = await c.objects(DEVICE_IFACE)
    jobs = await c.objects(JOB_IFACE)
    if args.json:
        _print_json({**p, "Devices": len(devices), "Jobs": len(jobs)})
        return EXIT_OK
    web = str(p.get("WebAccess", ""))
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


async def cmd_devices(c: Client, args: argparse.Namespace) -> int:
    devices = await c.objects(DEVICE_IFACE)
    if args.json:
        _print_json([{"Path": p, **d} for p, d in devices.items()])
        return EXIT_OK
    if not devices:
        print("no devices")
    for d in devices.values():
        err = f"  error: {d['Error']}" if d["Error"] else ""
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
    if not fmts:
        raise CtlError("give --formats (see: steno-exportctl formats)", EXIT_USAGE)
    to = args.to
    if to.startswith("/") and not to.startswith(ROOT_PATH + "/"):
        target = os.path.abspath(to)
    elif to.startswith("smb:"):
        target = to
    else:
        target = await _device_path(c, to)
    job = (await c.call(ROOT_PATH, MANAGER_IFACE, "ExportSessions", "asassa{sv}", [ids, fmts, target, opts]))[0]
    print(f"job {job.rsplit('/', 1)[-1]} started ({job})", file=sys.stderr if args.wait else sys.stdout)
    if not args.wait:
        return EXIT_OK
    return await _wait(c, job, args.json)


async def _wait(c: Client, job: str, as_json: bool) -> int:
    tty = sys.stderr.isatty()
    j: dict = {}
    while True:
        try:
            j = await c.props(job, JOB_IFACE)
        except CtlError as e:
            if e.code == EXIT_FAILED and not j:
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
        ok = sum(1 for r in j.get("Results", []) if r["ok"])
        print(f"{j.get('State', 'gone')}: {ok}/{len(j.get('Results', []))} session(s) ok"
              + (f"; {j['Error']}" if j.get("Error") else ""))
        for r in j.get("Results", []):
            if not r["ok"]:
                print(f"  session {r['session_id']} {r['title']}: {r['error']}")
    return EXIT_OK if j.get("State") == "completed" else EXIT_JOB_FAILED


async def cmd_cancel(c: Client, args: argparse.Namespace) -> int:
    await c.call(_job_path(args.job), JOB_IFACE, "Cancel")
    print(f"job {args.job} cancelled")
    return EXIT_OK


async def cmd_eject(c: Client, args: argparse.Namespace) -> int:
    path = await _device_path(c, args.device)
    job = (await c.call(path, DEVICE_IFACE, "Eject"))[0]
    if args.wait:
        return await _wait(c, job, False)
    print(f"ejecting ({job})")
    return EXIT_OK


async def cmd_reload(c: Client, args: argparse.Namespace) -> int:
    await c.call(ROOT_PATH, MANAGER_IFACE, "Reload")
    print("configuration reloaded")
    return EXIT_OK


def _switch(prop: str, what: str):
    """A command that shows an on/off switch of the daemon, or sets it ("on"/"off")."""
    async def cmd(c: Client, args: argparse.Namespace) -> int:
        if args.value is not None:
            await c.call(ROOT_PATH, PROPS, "Set", "ssv", [MANAGER_IFACE, prop, Variant("b", args.value == "on")])
        p = await c.props(ROOT_PATH, MANAGER_IFACE)
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


async def cmd_browsers(c: Client, args: argparse.Namespace) -> int:
    found = _plain((await c.call(ROOT_PATH, MANAGER_IFACE, "ListPairedBrowsers"))[0])
    if args.json:
        _print_json(found)
        return EXIT_OK
    for b in found:
        seen = time.strftime("%Y-%m-%d %H:%M", time.localtime(b["last_seen"]))
        print(f"{b['id']}  {b['kind']:8}  {b['address'][:39]:39}  {seen}  {b['agent'][:40]}")
    if not found:
        print("no browser is logged in")
    return EXIT_OK


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="steno-exportctl", description="Control steno-exportd over D-Bus.",
                                epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bus", default=os.environ.get("STENO_EXPORTCTL_BUS", "system"),
                   help="system (default), session, or a D-Bus address")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Any, help_: str, listing: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        if listing:
            sp.add_argument("--json", action="store_true", help="print JSON")
        sp.set_defaults(fn=fn)
        return sp

    add("status", cmd_status, "daemon state, session/device/job counts")
    sp = add("sessions", cmd_sessions, "list the recorder's sessions")
    sp.add_argument("--exportable", action="store_true", help="only exportable sessions")
    sp.add_argument("--query", help="only titles containing this")
    add("devices", cmd_devices, "list USB sticks")
    add("jobs", cmd_jobs, "list export/eject jobs")
    add("formats", cmd_formats, "list formats and templates")
    sp = add("export", cmd_export, "export sessions to a device, a directory or smb:<remote>")
    sp.add_argument("--to", required=True, help="device id/label/path, an allowed directory, or smb:<remote>")
    sp.add_argument("--sessions", nargs="+", required=True, help="session ids, uuids or short ids")
    sp.add_argument("--formats", nargs="+", help="formats, e.g. txt pdf audio")
    sp.add_argument("--template", help="PDF/DOCX template")
    sp.add_argument("--wait", action="store_true", help="wait for the job (progress bar on a terminal)")
    sp = add("cancel", cmd_cancel, "cancel a job", listing=False)
    sp.add_argument("job", help="job number or object path")
    sp = add("eject", cmd_eject, "unmount and power off a device", listing=False)
    sp.add_argument("device", help="device id, label or object path")
    sp.add_argument("--wait", action="store_true", help="wait until it is safe to remove")
    add("reload", cmd_reload, "reload the daemon's configuration", listing=False)
    add("pair", cmd_pair, "a one-time code (and URL/QR) that logs one browser in to the web page")
    add("browsers", cmd_browsers, "list the browsers logged in to the web page")
    sp = add("revoke-browser", cmd_revoke_browser, "log one browser out at once", listing=False)
    sp.add_argument("id", help="browser id (from 'browsers')")
    add("web-password", _set_password("SetWebPassword", "web password", "web password set"),
        "set the web page's password (read from the terminal or standard input)", listing=False)
    add("samba-password", _set_password("SetSambaPassword", "share password",
                                        "share password handed to the root helper"),
        "set the read-only share user's password (read from the terminal or standard input)", listing=False)
    for name, prop, what in (("sharing", "SambaEnabled", "the read-only Samba share"),
                             ("auto-export", "AutoExport", "automatic export to plugged-in sticks")):
        sp = add(name, _switch(prop, name), f"show, or switch on/off, {what} (until the config changes)",
                 listing=False)
        sp.add_argument("value", nargs="?", choices=("on", "off"))
    return p


async def _run(args: argparse.Namespace) -> int:
    c = Client(args.bus)
    await c.connect()
    try:
        return await args.fn(c, args)
    finally:
        c.bus.disconnect()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    try:
        return asyncio.run(_run(args))
    except CtlError as e:
        print(f"steno-exportctl: {e}", file=sys.stderr)
        return e.code
    except BrokenPipeError:             # `steno-exportctl sessions | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
