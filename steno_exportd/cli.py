"""`steno-exportd`: the daemon and its offline subcommands.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``main(args) -> int``; only the chosen one is imported, so start-up stays light.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("steno_exportd.daemon", "run the daemon in the foreground (the default)"),
    "check-config": ("steno_exportd.cli", "validate a config file and print the effective config"),
    "demo-data": ("steno_exportd.demo.recorder", "write a demo recorder library (database and audio)"),
    "render": ("steno_exportd.render.command", "render one session (or several merged) to a format"),
    "export": ("steno_exportd.engine.command", "export sessions to a folder, a .zip or a .tar.gz"),
    "verify": ("steno_exportd.engine.verify_command", "check a target against its SHA256SUMS and manifest"),
    "hash-password": ("steno_exportd.web.password", "make a password hash for http.auth.password_hash"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of check-config."""
    parser.add_argument("path", nargs="?", help="config file (default: --config or /etc/steno-exportd/config.toml)")


def main_check_config(args: argparse.Namespace) -> int:
    from steno_exportd import config
    from steno_exportd.errors import ConfigError

    path = args.path or args.config
    try:
        cfg = config.load(path)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 1
    from steno_exportd.samba.share import check_config as samba_problems
    share = samba_problems(cfg.samba)        # what smbd would be given when sharing is switched on
    for p in share:
        print(f"{p}{'' if cfg.samba.enabled else ' (sharing is off now; it matters when it is switched on)'}",
              file=sys.stderr)
    from steno_exportd.rclone.process import config_problems as rclone_problems
    for p in rclone_problems(cfg):          # a warning: the daemon runs, the rclone pushes may fail
        print(f"warning: {p}", file=sys.stderr)
    print(config.dump(cfg))
    return 1 if share and cfg.samba.enabled else 0


def _top_parser() -> argparse.ArgumentParser:
    from steno_exportd import __version__

    p = argparse.ArgumentParser(
        prog="steno-exportd",
        description="Export daemon of the Silent Steno meeting recorder.",
        epilog="commands:\n" + "\n".join(f"  {n:<14} {h}" for n, (_, h) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="PATH",
                   help="config file (default $STENO_CONFIG, else /etc/steno-exportd/config.toml)")
    p.add_argument("--version", action="version", version=f"steno-exportd {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    # Find the subcommand: the first argument that is not an option or an option's value.
    cmd, i = "run", 0
    while i < len(argv):
        a = argv[i]
        if a == "--config":
            i += 2
            continue
        if a.startswith("-"):
            i += 1
            continue
        cmd = a
        break
    if i >= len(argv) and any(a in ("-h", "--help", "--version") for a in argv):
        top.parse_args(argv)  # prints help/version and exits
    if cmd not in COMMANDS:
        top.print_usage(sys.stderr)
        print(f"steno-exportd: unknown command {cmd!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, help_text = COMMANDS[cmd]
    sub = top.add_subparsers(dest="command")
    sp = sub.add_parser(cmd, help=help_text, description=help_text)
    if cmd == "check-config":
        add_arguments(sp)
        entry = main_check_config
    else:
        module = importlib.import_module(module_name)
        module.add_arguments(sp)
        entry = module.main
    if cmd == "run" and "run" not in argv:
        argv = argv[:i] + ["run"] + argv[i:]
    args = top.parse_args(argv)
    try:
        return int(entry(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
