"""`steno-exportd verify DIR|FILE.zip|FILE.tar.gz`: check a target against its SHA256SUMS and manifest."""
from __future__ import annotations

import argparse
import json
import os
import stat
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR|FILE.zip|FILE.tar.gz",
                   help="the target folder (the one holding the root folder, SilentSteno/ by default), the root "
                        "folder itself (a folder holding manifest.json or SHA256SUMS: checked whatever its name and "
                        "the config), or an exported archive")
    p.add_argument("--root-folder", default=None,
                   help="the root folder to check (default: DIR itself when it holds manifest.json or SHA256SUMS, "
                        "else export.root_folder of the config the daemon reads: --config, else "
                        "/etc/steno-exportd/config.toml)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-mark", action="store_true",
                   help="do not write the manifest: changed files are not flagged (flagged files are re-copied by "
                        "the next export), and files found good keep the mark of an export without verify (re-copied "
                        "by the next export that verifies)")


BUSY = 75       # exit code: an export wrote to the folder while it was checked; nothing judged wrong, verify again


def main(args: argparse.Namespace) -> int:
    from steno_exportd.engine.verify import verify_target
    from steno_exportd.errors import ConfigError, StenoError
    from steno_exportd.safeparse import printable as shown   # names a stick's author chose: no escapes, one line

    try:
        target, root, source = _root(args)
    except ConfigError as e:
        # the daemon's config is needed for its root folder only: said how to go on without it
        said = "; ".join(e.problems[:10]) + (f"; {len(e.problems) - 10} more" if len(e.problems) > 10 else "")
        print(f"verify failed: invalid configuration in {shown(e.source)}: {shown(said)} (pass --root-folder NAME to "
              "verify without the config)", file=sys.stderr)
        return 1
    try:
        rep = verify_target(target, root, mark=not args.no_mark)
    except StenoError as e:
        print(f"verify failed: {shown(str(e))}" + (f" (root folder: {shown(source)})" if source else ""),
              file=sys.stderr)
        return 1
    if args.json:
        # (ensure_ascii: every control character escaped)
        print(json.dumps({**rep.to_json(), "root_from": source}, indent=1))
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
        if rep.busy:
            print(f"BUSY     {shown(rep.busy)}")
        print(f"{rep.ok_count} files verified, {len(rep.changed)} changed, {len(rep.missing)} missing, "
              f"{len(rep.extra)} extra" + (f", {len(rep.incomplete)} session(s) incomplete" if rep.incomplete else "")
              + f"; checked {shown(root)}/")
    if rep.ok:
        return 0
    # an export writing there (and nothing else found): not damage, try again later (sysexits' EX_TEMPFAIL)
    return BUSY if rep.busy and not (rep.changed or rep.missing or rep.problems or rep.incomplete) else 1


def _root(args: argparse.Namespace) -> tuple[str, str, str]:
    """What to check (DIR, or the folder above it), the root folder in it and where that came from: --root-folder;
    else DIR itself when it holds manifest.json or SHA256SUMS and no folder named as the config's root folder (the
    root folder given, whatever its name: a stick exported under another export.root_folder, or by another
    recorder; no config needed); else export.root_folder of the config the daemon reads (--config, else the
    default path; a missing default file means the defaults, as for the daemon). ConfigError for a config the
    daemon would refuse too (unless DIR is a root folder)."""
    from steno_exportd import config
    from steno_exportd.engine import manifest as mf
    from steno_exportd.engine.naming import root_folder
    from steno_exportd.errors import ConfigError
    if args.root_folder:
        return args.dir, args.root_folder, "--root-folder"
    folder = os.path.abspath(args.dir)
    name = os.path.basename(folder)
    held = next((h for h in (mf.MANIFEST, mf.SUMS) if os.path.lexists(os.path.join(folder, h))), "") \
        if name and _is_dir(folder) else ""
    given = os.path.dirname(folder), name, f"the folder given: it holds {held}"
    path = getattr(args, "config", None)
    try:
        cfg = config.load(path)
    except ConfigError:
        if held:
            return given
        raise
    root = root_folder(cfg)
    if held and not _is_dir(os.path.join(folder, root)):   # (a stick's own manifest.json beside SilentSteno/: not it)
        return given
    where = str(path or config.DEFAULT_PATH)
    if path is None and not config.DEFAULT_PATH.exists():
        return args.dir, root, f"the default root folder: no {where}"
    return args.dir, root, f"export.root_folder of {where}"


def _is_dir(path: str) -> bool:
    """A folder, not a symlink to one (nothing on a stick is followed)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
