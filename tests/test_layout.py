"""The core imports no adapter and no outside I/O library: every import statement of its files, walked with ast."""
from __future__ import annotations

import ast
import pathlib

import steno_exportd

PACKAGE = pathlib.Path(steno_exportd.__file__).parent
CORE = ("library", "render", "engine", "core", "config", "model", "events", "errors", "formats", "devices", "pools")
OUTSIDE = ("aiohttp", "dbus_fast", "pyudev", "smbprotocol", "smbclient")
ADAPTERS = ("usb", "dbus", "web", "samba", "smb", "rclone", "daemon", "notify", "cli", "exportctl")


def core_files() -> list[pathlib.Path]:
    out = []
    for name in CORE:
        if (PACKAGE / name).is_dir():
            out += sorted((PACKAGE / name).rglob("*.py"))
        else:
            out.append(PACKAGE / f"{name}.py")
    return out


def imported(source: str, module: str) -> list[tuple[int, str]]:
    """(line, dotted name) of everything ``source`` (the module ``module``) imports, wherever the
    statement is (top level, a function, a try block), relative imports resolved, and the constant
    names given to importlib.import_module / __import__."""
    package = module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                head = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{head}.{base}" if base else head
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__"):
                out.append((node.lineno, node.args[0].value))
    return out


def forbidden(name: str) -> bool:
    parts = name.split(".")
    if parts[0] in OUTSIDE:
        return True
    return parts[0] == "steno_exportd" and len(parts) > 1 and parts[1] in ADAPTERS


def violations(path: pathlib.Path) -> list[str]:
    module = "steno_exportd." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    return [f"{path.relative_to(PACKAGE.parent)}:{line}: {name}"
            for line, name in imported(path.read_text(encoding="utf-8"), module) if forbidden(name)]


def test_the_core_imports_no_adapter_and_no_outside_io_library():
    files = core_files()
    assert len(files) > 30 and all(p.is_file() for p in files)
    found = [v for p in files for v in violations(p)]
    assert found == []


def test_the_walk_finds_every_kind_of_import():
    source = '''
import aiohttp.web
from steno_exportd import usb
def f():
    from steno_exportd.smb.push import SmbKind
    try:
        import smbclient
    except ImportError:
        pass
    importlib.import_module("steno_exportd.web.app")
    __import__("pyudev")
from ..dbus import service
from . import manifest
from steno_exportd.engine import export
'''
    names = [n for _, n in imported(source, "steno_exportd.engine.export")]
    assert sorted(n for n in names if forbidden(n)) == sorted([
        "aiohttp.web", "steno_exportd.usb", "steno_exportd.dbus", "steno_exportd.dbus.service",
        "steno_exportd.smb.push", "steno_exportd.smb.push.SmbKind", "smbclient", "steno_exportd.web.app", "pyudev"])
    assert "steno_exportd.engine.manifest" in names and not forbidden("steno_exportd.engine.export")
