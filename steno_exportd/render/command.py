"""`steno-exportd render`: one session (or several merged) to a format, to a file or stdout."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile

from steno_exportd.errors import StenoError
from steno_exportd.formats import DOCUMENT_TEMPLATES, FORMATS

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `render`."""
    parser.add_argument("--db", required=True, help="recorder database (silent_steno.db), opened read-only")
    parser.add_argument("--data-dir", help="folder the database's relative paths are under")
    g = parser.add_mutually_exclusive_group(required=True)
    g.add_argument("--session", help="session id, uuid or short id")
    g.add_argument("--merge", help="comma-separated sessions rendered into one document")
    parser.add_argument("--format", "-f", required=True, help=f"one of: {', '.join(FORMATS)}")
    parser.add_argument("--template", "-t", default=None,
                        help=f"document template: {', '.join(DOCUMENT_TEMPLATES)} (default detailed; more in template_dir/templates.toml)")
    parser.add_argument("--audio-filename", help="HTML: audio file beside the page for the player")
    parser.add_argument("-o", "--output", required=True, help="output file, or - for stdout")


def _key(v: str) -> int | str:
    return int(v) if v.isdigit() else v


def _write(path: str, data: bytes) -> None:
    """Write via a temporary name and rename, so a partial file never has the final name."""
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".render-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(args: argparse.Namespace) -> int:
    """Render and write; errors are one line on stderr with exit status 1 (2 for bad arguments)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from steno_exportd import render

    try:
        renderer = render.get(args.format)
        template = args.template or "detailed"
        options = render.RenderOptions(template=template, audio_filename=args.audio_filename)
        cfg_path = getattr(args, "config", None)
        if cfg_path:
            from steno_exportd import config
            cfg = config.load(cfg_path)
            options = render.RenderOptions.from_config(cfg.render, template=template,
                                                       audio_filename=args.audio_filename)
        options.checked()
        from steno_exportd.library import Library
        lib = Library(args.db, data_dir=args.data_dir)
        try:
            if args.merge:
                keys = [k.strip() for k in args.merge.split(",") if k.strip()]
                if not renderer.mergeable:
                    print(f"steno-exportd render: format {args.format!r} cannot merge; mergeable: "
                          + ", ".join(n for n in render.names() if render.get(n).mergeable), file=sys.stderr)
                    return 2
                sessions = [lib.get_session(_key(k)) for k in keys]
                result = renderer.render_merged_result(sessions, options)
            else:
                result = renderer.render_result(lib.get_session(_key(args.session)), options)
        finally:
            lib.close()
        _write(args.output, result.data)
    except StenoError as e:
        print(f"steno-exportd render: {e}", file=sys.stderr)
        return 1
    for w in result.warnings:
        print(f"steno-exportd render: warning: {w}", file=sys.stderr)
    return 0
