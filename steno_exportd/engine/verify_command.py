"""`steno-exportd verify DIR|FILE.zip|FILE.tar.gz`: check a target against its SHA256SUMS and manifest."""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR|FILE.zip|FILE.tar.gz",
                   help="the target folder (the one holding SilentSteno/), SilentSteno/ itself, or an exported archive")
    p.add_argument("--root-folder", default="SilentSteno", help="export.root_folder (default SilentSteno)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-mark", action="store_true",
                   help="do not write the manifest: changed files are not flagged (flagged files are re-copied by "
                        "the next export), and files found good keep the mark of an export without verify (re-copied "
                        "by the next export that verifies)")


def main(args: argparse.Namespace) -> int:
    from steno_exportd.engine.verify import verify_target
    from steno_exportd.errors import StenoError
    from steno_exportd.safeparse import printable as shown   # names a stick's author chose: no escapes, one line

    try:
        rep = verify_target(args.dir, args.root_folder, mark=not args.no_mark)
    except StenoError as e:
        print(f"verify failed: {shown(str(e))}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rep.to_json(), indent=1))      # (ensure_ascii: every control character escaped)
    else:
        for p in rep.changed:
            print(f"CHANGED  {shown(p)}")
        for p in rep.missing:
            print(f"MISSING  {shown(p)}")
        for p in rep.extra:
            print(f"EXTRA    {shown(p)}")
        for p in rep.problems:
            print(f"PROBLEM  {shown(p)}")
        for p in rep.incomplete:
            print(f"INCOMPLETE  {shown(p)} (an export was interrupted; export again to finish it)")
        for p in rep.notes:
            print(f"NOTE     {shown(p)}")
        print(f"{rep.ok_count} files verified, {len(rep.changed)} changed, {len(rep.missing)} missing, "
              f"{len(rep.extra)} extra" + (f", {len(rep.incomplete)} session(s) incomplete" if rep.incomplete else ""))
    return 0 if rep.ok else 1
