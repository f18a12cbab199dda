"""Web fixtures: the demo library, a real Core with the web app in front of it, the library's sessions."""
from __future__ import annotations

from pathlib import Path

import pytest

from steno_exportd import demo
from tests.configs import make_config
from tests.web.helpers import DaemonLikeServer, lib_sessions, on_library, started_core


@pytest.fixture(scope="session")
def demo_lib(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("weblib")
    demo.generate(d, sessions=9, seed=4)
    return d


@pytest.fixture
async def web_client(aiohttp_client, tmp_path, demo_lib):
    """make(**config overrides) -> (client, core)."""
    from steno_exportd.web import make_app
    cores = []

    async def make(**over):
        core = await started_core(make_config(tmp_path, **on_library(demo_lib, **over)))
        cores.append(core)
        return await aiohttp_client(DaemonLikeServer(make_app(core))), core
    yield make
    for c in cores:
        await c.stop()


@pytest.fixture(scope="module")
def sessions(demo_lib):
    return lib_sessions(demo_lib)
