"""Web fixtures: the demo library, a real Core with the web app in front of it, the library's sessions,
a library of a test's own (for tests that change recordings) and the real daemon serving the page."""
from __future__ import annotations

from pathlib import Path

import pytest

from steno_exportd import demo
from tests.configs import make_config
from tests.web.helpers import DaemonLikeServer, WebDaemon, lib_sessions, on_library, started_core


@pytest.fixture(scope="session")
def demo_lib(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("weblib")
    demo.generate(d, sessions=9, seed=4)
    return d


@pytest.fixture
def own_lib(tmp_path) -> Path:
    """A small library only this test uses (it may swap, truncate or remove recordings)."""
    d = tmp_path / "ownlib"
    demo.generate(d, sessions=4, seed=4, small=True)
    return d


@pytest.fixture
async def web_client(aiohttp_client, tmp_path, demo_lib):
    """make(lib=None, **config overrides) -> (client, core); a second make() on the same test reuses its state
    dir, like a restarted daemon."""
    from steno_exportd.web import make_app
    cores = []

    async def make(lib: Path | None = None, **over):
        core = await started_core(make_config(tmp_path, **on_library(lib or demo_lib, **over)))
        cores.append(core)
        return await aiohttp_client(DaemonLikeServer(make_app(core))), core
    yield make
    for c in cores:
        await c.stop()


@pytest.fixture(scope="module")
def sessions(demo_lib):
    return lib_sessions(demo_lib)


@pytest.fixture
def web_daemon(tmp_path, daemon_factory):
    """start(lib, prefix=(), **'section.key': TOML value) -> WebDaemon: the real daemon serving the page."""
    def start(lib: Path, prefix: tuple[str, ...] = (), **extra: str) -> WebDaemon:
        return WebDaemon.start(daemon_factory, tmp_path, lib, list(prefix), extra)
    return start
