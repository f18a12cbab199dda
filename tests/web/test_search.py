"""Search on the web: GET /api/v1/search and the /search page, on a real core and a real aiohttp server,
over a recorder database with words said at known seconds (and markup in what was said)."""
from __future__ import annotations

import html
import re

import pytest

from tests.parts import until
from tests.recorder_db import meetings_to_search
from tests.configs import make_config
from tests.web.helpers import PASSWORD_HASH, DaemonLikeServer, on_library, started_core


@pytest.fixture
async def searcher(aiohttp_client, tmp_path):
    """make(**config overrides) -> (client, recorder DB) once the core has indexed the meetings."""
    from steno_exportd.web import make_app
    rec = meetings_to_search(tmp_path / "library")
    cores = []

    async def make(**over):
        home = tmp_path / f"core{len(cores)}"          # a state dir (and search index) of its own
        home.mkdir()
        core = await started_core(make_config(home, **on_library(rec.root, **over)))
        cores.append(core)

        async def indexed():
            r = await core.search("budget")
            return r.total == 1 and r.pending == 0
        await until(indexed, "the core to index the meetings", timeout=30)
        return await aiohttp_client(DaemonLikeServer(make_app(core))), rec
    yield make
    for c in cores:
        await c.stop()
    rec.close()


def uuid_of(rec, name: str) -> str:
    return rec.conn.execute("SELECT uuid FROM sessions WHERE id = ?", (rec.ids[name],)).fetchone()[0]


async def test_api_search_finds_what_was_said_with_its_second(searcher):
    client, rec = await searcher()
    r = await client.get("/api/v1/search", params={"q": "Photosynthesis"})
    assert r.status == 200
    data = await r.json()
    assert data["total"] == 1 and data["pending"] == 0 and data["indexed"] == 3
    item = data["items"][0]
    uuid = uuid_of(rec, "budget")         # (its URLs name it by its uuid, as its page's links do)
    assert (item["id"], item["uuid"], item["title"], item["url"]) == (rec.ids["budget"], uuid, "Budget review",
                                                                      f"/sessions/{uuid}")
    hit = item["hits"][0]
    assert (hit["kind"], hit["seconds"], hit["speaker"]) == ("transcript", 1234.5, "Carla")
    assert hit["url"] == f"/sessions/{uuid}#t=1234.500"
    assert [hit["snippet"][a:b] for a, b in hit["marks"]] == ["photosynthesis"]

    data = await (await client.get("/api/v1/search", params={"q": "zurich"})).json()
    assert [x["id"] for x in data["items"]] == [rec.ids["intl"]]
    data = await (await client.get("/api/v1/search", params={"q": "начнем"})).json()
    assert data["items"][0]["hits"][0]["seconds"] == 3.0

    data = await (await client.get("/api/v1/search", params={"q": "meeting", "limit": "1"})).json()
    assert data["total"] == 2 and len(data["items"]) == 1
    second = await (await client.get("/api/v1/search", params={"q": "meeting", "limit": "1", "offset": "1"})).json()
    assert {data["items"][0]["id"], second["items"][0]["id"]} == {rec.ids["budget"], rec.ids["plain"]}


@pytest.mark.parametrize("params, message", [
    ({}, "nothing to search for: type a word"),
    ({"q": "   "}, "nothing to search for: type a word"),
    ({"q": "x" * 5000}, "search text too long (5,000 characters; at most 200)"),
    ({"q": "budget", "limit": "0"}, "limit: 0 is out of range 1..50"),
    ({"q": "budget", "limit": "51"}, "limit: 51 is out of range 1..50"),
    ({"q": "budget", "limit": "ten"}, "limit: 'ten' is not a number (ASCII digits)"),
    ({"q": "budget", "offset": "-1"}, "offset: '-1' is not a number (ASCII digits)"),
    ({"q": "budget", "offset": "100001"}, "offset: 100001 is out of range 0..100000"),
])
async def test_api_search_bad_parameters_are_400_with_the_reason(searcher, params, message):
    client, _ = await searcher()
    r = await client.get("/api/v1/search", params=params)
    assert r.status == 400 and (await r.json())["error"] == message


async def test_search_page_lists_escaped_snippets_linking_to_the_second(searcher):
    client, rec = await searcher()
    home = await (await client.get("/")).text()
    assert '<a href="/search">' in home                               # reachable from every page
    r = await client.get("/search")
    page = await r.text()
    assert r.status == 200 and 'name="q"' in page and "found" not in page
    r = await client.get("/search", params={"q": "tags"})            # said beside markup
    page = await r.text()
    assert r.status == 200 and "1 meeting found" in page
    uuid = uuid_of(rec, "budget")
    assert f'<a href="/sessions/{uuid}">Budget review</a>' in page
    assert f'<a href="/sessions/{uuid}#t=1300.000">' in page
    snippet = re.search(r'<span class="snippet">(.*?)</span>', page).group(1)
    assert snippet == ("Beware of &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; other <mark>tags</mark> "
                       "in the budget sheet.")
    assert "<script>alert" not in page
    assert 'value="tags"' in page                                        # the box keeps what was typed

    r = await client.get("/search", params={"q": '"><img src=x onerror=alert(1)> ***'})
    page = await r.text()
    assert r.status == 200 and "<img" not in page and "&#34;&gt;&lt;img src=x" in page

    r = await client.get("/search", params={"q": "x" * 300})
    page = await r.text()
    assert r.status == 400 and "search text too long (300 characters; at most 200)" in page and 'name="q"' in page


async def test_search_page_pages_through_results(searcher):
    client, rec = await searcher()
    page = await (await client.get("/search", params={"q": "meeting", "limit": "1"})).text()
    assert "2 meetings found" in page and len(re.findall(r'<li><a href="/sessions/[0-9a-f-]{36}">', page)) == 1
    nxt = re.search(r'<a href="/search\?([^"]+)" rel="next">', page).group(1)
    assert html.unescape(nxt) == "q=meeting&limit=1&offset=1"
    page = await (await client.get("/search?" + html.unescape(nxt))).text()
    assert "2 meetings found" in page and 'rel="prev"' in page and 'rel="next"' not in page
    assert '<ol class="results" start="2">' in page


async def test_search_is_behind_the_same_login_and_networks_as_the_listing(searcher):
    client, _ = await searcher(**{"http.auth.mode": "password", "http.auth.password_hash": PASSWORD_HASH})
    r = await client.get("/api/v1/search", params={"q": "budget"})
    assert r.status == 401 and (await r.json())["error"] == "log in first"
    r = await client.get("/search", params={"q": "budget"}, allow_redirects=False)
    assert r.status == 302 and r.headers["Location"].startswith("/login?next=")
    client, _ = await searcher(**{"http.auth.allowed_networks": ["10.0.0.0/8"]})
    for path in ("/api/v1/search?q=budget", "/search?q=budget"):
        r = await client.get(path)
        assert r.status == 403 and "127.0.0.1" in await r.text(), path
