"""A 10,000-session library: every sort order pages through every session exactly once, in order."""
from __future__ import annotations

import re

import pytest

from steno_exportd import demo
from tests.configs import make_config
from tests.web.helpers import DaemonLikeServer, on_library, started_core

N = 10_000


@pytest.fixture(scope="module")
def big_lib(tmp_path_factory):
    d = tmp_path_factory.mktemp("biglib")
    demo.generate(d, sessions=N, seed=7, small=True)
    return d


@pytest.fixture
async def big_client(big_lib, tmp_path, aiohttp_client):
    from steno_exportd.web import make_app
    core = await started_core(make_config(tmp_path, **on_library(big_lib)))
    try:
        yield await aiohttp_client(DaemonLikeServer(make_app(core)))
    finally:
        await core.stop()


async def walk(client, **params) -> list[dict]:
    """Every page of the list, as a user clicking "next" would get them."""
    items, page = [], 1
    while True:
        data = await (await client.get("/api/v1/sessions", params={**params, "per_page": "200",
                                                                    "page": str(page)})).json()
        assert data["total"] == N and data["pages"] == N // 200 and len(data["items"]) == 200, (page, data.get("error"))
        items += data["items"]
        if page == data["pages"]:
            return items
        page += 1


KEYS = {"date": lambda x: x["start_time"], "title": lambda x: x["title"].casefold(),
        "duration": lambda x: x["duration_seconds"] or 0}


@pytest.mark.parametrize("sort, order", [("duration", "desc"), ("title", "asc")])
async def test_every_session_once_and_in_order_across_all_pages(big_client, sort, order):
    items = await walk(big_client, sort=sort, order=order)
    assert len({x["id"] for x in items}) == N                          # none twice, none missing (ties included)
    keys = [KEYS[sort](x) for x in items]
    assert keys == sorted(keys, reverse=order == "desc")


async def test_other_orders_and_the_pages_a_user_clicks_through(big_client):
    for sort in ("date", "title", "duration"):
        for order in ("asc", "desc"):
            first = await (await big_client.get("/api/v1/sessions", params={"sort": sort, "order": order,
                                                                            "per_page": "200"})).json()
            last = await (await big_client.get("/api/v1/sessions", params={"sort": sort, "order": order,
                                                                           "per_page": "200", "page": "50"})).json()
            keys = [KEYS[sort](x) for x in first["items"] + last["items"]]
            assert keys == sorted(keys, reverse=order == "desc"), (sort, order)
    # the HTML list: 50 a page, newest first; the pager's links lead on and back
    html = await (await big_client.get("/")).text()
    assert "(10000)" in html and "page 1 of 200" in html and 'rel="prev"' not in html
    assert len(re.findall(r'<tr>\s*<td class="pick">', html)) == 50
    nxt = re.search(r'href="(/\?[^"]+)" rel="next">Older →', html).group(1).replace("&amp;", "&")
    html = await (await big_client.get(nxt)).text()
    assert "page 2 of 200" in html and 'rel="prev"' in html
    html = await (await big_client.get("/", params={"sort": "title", "order": "asc", "page": "200"})).text()
    assert "page 200 of 200" in html and 'rel="next"' not in html and 'rel="prev">← Previous<' in html
    titles = re.findall(r'<a href="/sessions/[0-9a-f-]{36}">([^<]*)</a>', html)     # (named by uuid)
    assert len(titles) == 50 and titles == sorted(titles, key=str.casefold)
