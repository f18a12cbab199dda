"""The one config builder of the tests: a validated Config with everything under a test's folder."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from steno_exportd import config
from steno_exportd.demo import DB_NAME


def make_config(tmp: Path, **overrides: Any) -> config.Config:
    """Config.from_dict of the defaults below with ``overrides`` (dotted keys: ``"samba.enabled": True``).

    The recorder database is tmp/library/silent_steno.db, state and runtime folders are under tmp,
    exports are allowed to tmp/exports (created), and the adapters that reach the machine (USB,
    the web page) are off unless a test switches them on, like the background hasher (its reads
    would race a test's own "hashed on the way" downloads).
    """
    (tmp / "exports").mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "recorder": {"db_path": str(tmp / "library" / DB_NAME)},
        "state": {"dir": str(tmp / "state"), "runtime_dir": str(tmp / "run")},
        "export": {"allowed_dirs": [str(tmp / "exports")], "hash_ahead": False},
        "usb": {"enabled": False}, "http": {"enabled": False},
    }
    for dotted, value in overrides.items():
        *path, key = dotted.split(".")
        table = data
        for name in path:
            table = table.setdefault(name, {})
        table[key] = value
    return config.from_dict(data)
