"""`steno-exportd export`: export sessions to a folder, a .zip or a .tar.gz without the daemon."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from typing import Any

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="recorder database (default: recorder.db_path of the config)")
    p.add_argument("--data-dir", help="recorder data dir (relative audio paths)")
    p.add_argument("--to", required=True, metavar="DIR|FILE.zip|FILE.tar.gz", help="where to export")
    p.add_argument("--sessions", default="new", help="new, all or a comma separated list of ids/uuids")
    p.add_argument("--formats", help="comma separated formats (default: export.formats)")
    p.add_argument("--template", help="PDF/DOCX template")
    p.add_argument("--merge", action="store_true", help="one merged document per format")
    p.add_argument("--no-audio", action="store_true", help="do not copy the recordings")
    p.add_argument("--no-verify", action="store_true", help="skip read-back verification")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


class _Printer:
    """Progress on a terminal (a bar), plain lines otherwise."""

    def __init__(self, tty: bool, quiet: bool) -> None:
        self.tty, self.quiet = tty, quiet
        self.fields: dict = {}
        self.cancel = threading.Event()
        self._last = 0.0
        self._last_file = ""
        self._start = time.monotonic()

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set()

    def update(self, force: bool = False, **f: Any) -> None:
        self.fields.update(f)
        if self.quiet:
            return
        now = time.monotonic()
        cur = self.fields.get("current_file", "")
        if self.tty:
            if force or now - self._last > 0.1:
                self._last = now
                done, total = self.fields.get("bytes_done", 0), self.fields.get("bytes_total", 0) or 1
                frac = min(1.0, done / total)
                rate = done / max(1e-6, now - self._start) / 2**20
                bar = "#" * int(frac * 30)
                sys.stderr.write(f"\r[{bar:<30}] {frac * 100:5.1f}% {rate:7.1f} MiB/s {cur[-40:]:<40}")
                sys.stderr.flush()
        elif cur and cur != self._last_file:
            self._last_file = cur
            print(f"writing {cur}", file=sys.stderr)

    def done(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\n")


def main(args: argparse.Namespace) -> int:
    from steno_exportd import config
    from steno_exportd.engine.export import SimpleSpec, run_export
    from steno_exportd.engine.registry import local
    from steno_exportd.errors import StenoError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config.load(args.config) if args.config else config.from_dict({})
        rec = {}
        if args.db:
            rec["db_path"] = str(__import__("os").path.abspath(args.db))
        if args.data_dir:
            rec["data_dir"] = str(__import__("os").path.abspath(args.data_dir))
        if rec:
            cfg = config.replace(cfg, recorder=__import__("dataclasses").replace(cfg.recorder, **rec))
        from steno_exportd import request
        from steno_exportd.errors import InvalidArgument, NotFoundError
        from steno_exportd.library import Library, SessionListing
        try:                                    # the same checks as every other caller (Core.check_export)
            keys = request.session_keys(args.sessions)
            formats = request.format_names(args.formats) or tuple(cfg.export.formats)
            opts = request.export_options(dict(template=args.template, merge=args.merge,
                                               include_audio=False if args.no_audio else None,
                                               verify=False if args.no_verify else None))
            request.template_name(opts.template or cfg.export.template, cfg.render.template_dir)
        except (InvalidArgument, NotFoundError) as e:
            print(str(e), file=sys.stderr)
            return 2
        targets = local()           # what this command supports: a folder, FILE.zip, FILE.tar.gz
        targets.check(args.to, cfg, trusted=True)      # a refused target: "export failed", as a failed export
        lib = Library.from_config(cfg)
        ids = request.resolve_sessions(keys, SessionListing(tuple(lib.list_sessions())), opts)
        printer = _Printer(sys.stderr.isatty(), args.json)
        t0 = time.monotonic()
        results = run_export(lib, SimpleSpec(args.to, ids, formats, opts, target_name=args.to), cfg, printer,
                             targets=targets)
        printer.done()
    except StenoError as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    ok = all(r.ok for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "target": args.to, "seconds": round(time.monotonic() - t0, 3),
                          "bytes": printer.fields.get("bytes_done", 0),
                          "sessions": [{"id": r.session_id, "uuid": r.uuid, "title": r.title, "ok": r.ok,
                                        "skipped": r.skipped, "status": str(r.status),
                                        "warnings": list(r.warnings), "error": r.error,
                                        "files": [{"path": f.path, "ok": f.ok, "size": f.size,
                                                   "sha256": f.sha256, "error": f.error} for f in r.files]}
                                       for r in results]}, indent=1))
    else:
        for r in results:
            status = ("skipped (already there)" if r.skipped else f"FAILED: {r.error}" if not r.ok
                      else f"ok with warnings: {'; '.join(r.warnings)}" if r.warnings else "ok")
            print(f"{r.session_id:>5} {r.title[:50]:<50} {status}")
        n_ok = sum(r.ok and not r.skipped for r in results)
        n_skip = sum(r.skipped for r in results)
        n_fail = len(results) - n_ok - n_skip
        print(f"{n_ok} exported, {n_skip} already there, {n_fail} failed; target {args.to}")
    return 0 if ok else 1
