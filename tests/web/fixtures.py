"""A real Core on a real demo library, and the web app in front of it."""
from __future__ import annotations

from pathlib import Path

import pytest

from steno_exportd import config, demo
from steno_exportd.core import Core
from steno_exportd.web.password import hash_password

PASSWORD = "correct horse battery"
PASSWORD_HASH = hash_password(PASSWORD)


@pytest.fixture(scope="session")
def demo_lib(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("weblib")
    demo.generate(d, sessions=9, seed=4)
    return d


def make_config(tmp: Path, lib: Path, **over):
    (tmp / "exports").mkdir(exist_ok=True)
    data = {"recorder": {"db_path": str(lib / demo.DB_NAME)},
            "state": {"dir": str(tmp / "state"), "runtime_dir": str(tmp / "run")},
            "export": {"allowed_dirs": [str(tmp / "exports")]},
            "usb": {"enabled": False}, "http": {"bind": ["127.0.0.1"], "port": 8080}}
    for dotted, value in over.items():
        *path, key = dotted.split(".")
        d = data
        for p in path:
            d = d.setdefault(p, {})
        d[key] = value
    return config.from_dict(data)


async def started_core(cfg):
    core = Core(cfg)
    await core.start()
    return core


@pytest.fixture
async def web_client(aiohttp_client, tmp_path, demo_lib):
    """make(**config overrides) -> (client, core)."""
    from steno_exportd.web import make_app
    cores = []

    async def make(**over):
        core = await started_core(make_config(tmp_path, demo_lib, **over))
        cores.append(core)
        return await aiohttp_client(make_app(core)), core
    yield make
    for c in cores:
        await c.stop()
