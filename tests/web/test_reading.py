"""What the pages say, without a browser: human times and sizes (history, jobs), sizes on download buttons,
job rows naming their meetings, the transcript in pieces and found without scripts, share links in full."""
from __future__ import annotations

import datetime as dt
import re

import pytest

from steno_exportd.access import share_url
from steno_exportd.web import human
from steno_exportd.web.pages import FIRST_LINES, MAX_LINES
from tests.parts import until
from tests.web.helpers import csrf, with_audio


def cells(html: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", html, re.S)]


async def test_history_and_jobs_read_as_people_read(web_client, sessions, tmp_path):
    """History once showed '1796116441.4588404' and raw bytes; the jobs page a target but not the meetings."""
    client, core = await web_client()
    s = with_audio(sessions)
    r = await client.post("/api/v1/exports", json={"sessions": [s.id], "formats": ["txt"],
                                                    "target": str(tmp_path / "exports")},
                          headers={"X-CSRF-Token": await csrf(client)})
    assert r.status == 202, await r.text()
    await until(lambda: any(str(j.state) == "completed" for j in core.jobs.list()), "the export", timeout=60)
    history = await (await client.get("/history")).text()
    row = cells(history.split("<tbody>")[1])
    assert not re.search(r"\b1[0-9]{9}\.[0-9]+\b", history)                # no epoch seconds anywhere
    assert re.fullmatch(r"[0-9]{1,2} [A-Z][a-z]{2} 20[0-9]{2}, [0-9]{2}:[0-9]{2}", row[0]), row
    assert re.search(r'<time datetime="20[0-9-]{8}T[0-9:]{8}[+-][0-9:]{5}"', history)
    size = next(c for c in row if re.fullmatch(r"[0-9.]+ (bytes|kB|MB)", c))
    [h] = [x for x in core.state.history(None, 10) if x["path"].endswith(".txt")]
    assert size == human.size(h["size"]) and not re.search(rf"\b{h['size']}\b", history.split("<tbody>")[1])
    jobs = await (await client.get("/devices")).text()
    assert f'<td class="meetings" data-label="Meetings">{s.title}</td>' in jobs.replace("&#39;", "'")


async def test_download_buttons_show_sizes_once_known(web_client, sessions):
    client, _ = await web_client()
    s = with_audio(sessions)
    html = await (await client.get(f"/sessions/{s.id}")).text()
    assert f"({s.audio.path.suffix[1:].upper()}, {human.size(s.audio.size)})" in html
    assert not re.search(r'download/txt">TXT <span class="size">', html)
    body = await (await client.get(f"/sessions/{s.id}/download/txt")).read()
    html = await (await client.get(f"/sessions/{s.id}")).text()
    assert f'download/txt">TXT <span class="size">({human.size(len(body))})</span>' in html
    zip_at, first_doc = html.index("Everything (ZIP)"), html.index("/download/")
    assert zip_at < first_doc                                     # the one button most want comes first


async def test_the_transcript_comes_in_pieces_and_is_found_without_scripts(web_client, sessions):
    client, _ = await web_client()
    s = max(sessions.values(), key=lambda x: len(x.segments))
    assert len(s.segments) > FIRST_LINES
    html = await (await client.get(f"/sessions/{s.id}")).text()
    assert len(re.findall(r"<li id=\"l[0-9]+\">", html)) == FIRST_LINES
    assert f'href="/sessions/{s.summary.uuid}?all=1#tr"' in html       # (the page's links name it by its uuid)
    got = []
    while len(got) + FIRST_LINES < len(s.segments):
        r = await client.get(f"/sessions/{s.id}/transcript", params={"from": str(FIRST_LINES + len(got)),
                                                                     "count": "100000"})
        assert r.status == 200 and r.headers["X-Lines-Total"] == str(len(s.segments))
        piece = [float(x) for x in re.findall(r'data-start="([0-9.]+)"', await r.text())]
        assert 0 < len(piece) <= MAX_LINES
        got += piece
    assert got == [g.start for g in s.segments[FIRST_LINES:]]
    for bad in ("-1", "x", "1" * 30):
        assert (await client.get(f"/sessions/{s.id}/transcript", params={"from": bad})).status == 400
    # find without scripts: accents and case folded, only the lines that hold the word
    word = next(w for g in s.segments[FIRST_LINES:] for w in re.findall(r"[^\W\d_]{6,}", g.text))
    typed = human_unaccent(word).upper()
    html = await (await client.get(f"/sessions/{s.id}", params={"find": typed})).text()
    texts = re.findall(r'<span class="text">(.*?)</span>', html)
    expected = [g for g in s.segments if human_unaccent(word).casefold() in human_unaccent(g.text).casefold()
                or human_unaccent(word).casefold() in human_unaccent(g.speaker_name).casefold()]
    assert len(texts) == len(expected) > 0
    assert f"{len(expected)} line" in html


def human_unaccent(text: str) -> str:
    import unicodedata
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


async def test_a_share_link_is_shown_in_full_with_its_state(web_client, sessions):
    client, core = await web_client()
    s = with_audio(sessions)
    token = await csrf(client)
    r = await client.post(f"/sessions/{s.id}/share", data={"csrf": token, "hours": "2", "max_downloads": "4"},
                          allow_redirects=False)
    assert r.status == 303
    html = await (await client.get(f"/sessions/{s.id}")).text()
    [(tok, full)] = re.findall(r'<code id="u-([^"]+)" class="full-url">([^<]+)</code>', html)
    assert full == share_url(core.cfg, tok, f"127.0.0.1:{client.server.port}") and full.endswith(f"/s/{tok}")
    assert "4 of 4 downloads left" in html and '<svg role="img" aria-label="QR code of the share link"' in html
    assert f'data-copy="u-{tok}"' in html


def test_share_url_names_the_recorder_as_another_device_reaches_it():
    import socket

    from tests.configs import make_config
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        cfg = make_config(Path(d), **{"http.port": 8080})
        here = f"http://{socket.gethostname().lower()}.local:8080/s/T"
        assert share_url(cfg, "T") == here                                    # D-Bus: no browser
        assert share_url(cfg, "T", "localhost:8080") == here                  # only this machine: .local
        assert share_url(cfg, "T", "127.0.0.1:8080") == here
        assert share_url(cfg, "T", "[::1]:8080") == here
        assert share_url(cfg, "T", "192.168.1.20:8080") == "http://192.168.1.20:8080/s/T"
        assert share_url(cfg, "T", "steno.local:8080", tls=True) == "https://steno.local:8080/s/T"
        cfg = make_config(Path(d), **{"http.public_url": "https://rec.example.org/"})
        assert share_url(cfg, "T", "192.168.1.20:8080") == "https://rec.example.org/s/T"


def test_a_share_link_made_over_a_link_local_address_names_the_recorder_by_name(tmp_path):
    """A laptop that reached the page at the recorder's IPv6 link-local address ([fe80::1%25eth0], its zone that of
    the laptop's own interface) made a share link for a phone: the link named that address and zone, which no
    other device can use. Like a loopback address, it is the recorder's <host>.local instead."""
    import socket

    from tests.configs import make_config
    cfg = make_config(tmp_path, **{"http.port": 8080})
    here = f"http://{socket.gethostname().lower()}.local:8080/s/T"
    for host in ("[fe80::1%25eth0]:8080", "[fe80::1%eth0]:8080", "[fe80::1]:8080", "[FE80::1%25wlan0]"):
        assert share_url(cfg, "T", host) == here, host
    assert share_url(cfg, "T", "[fd00::5]:8080") == "http://[fd00::5]:8080/s/T"     # a LAN's own address: kept
    assert share_url(cfg, "T", "169.254.7.9:8080") == "http://169.254.7.9:8080/s/T"  # (IPv4 has no zones)


@pytest.mark.parametrize("host,shown", [("Café", "xn--caf-dma.local"), ("desk/42", None), ("desk\udcff42", None),
                                        ("a b", None)])
def test_a_share_link_of_a_host_whose_name_cannot_be_looked_up_still_reaches_the_recorder(monkeypatch, tmp_path,
                                                                                          host, shown):
    """A share link made over D-Bus (no browser to copy a name from) named the recorder <hostname>.local with the
    host name as the kernel holds it: "desk/42" made http://desk/42.local:8080/s/T, whose host is "desk" (some
    other machine) and whose path is wrong; "Café" and bytes not UTF-8 made names no resolver takes. Now it is
    the name's IDNA form (what a browser looks up) and, for a name that cannot be looked up, an address of this
    machine other devices reach (else localhost): the link's host is always the recorder."""
    import ipaddress
    import socket
    from urllib.parse import urlsplit

    import psutil

    from steno_exportd.web.app import listening_url
    from tests.configs import make_config
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    cfg = make_config(tmp_path, **{"http.port": 8080})
    ours = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family == socket.AF_INET} | {"localhost"}
    for url in (share_url(cfg, "T"), listening_url(cfg, ["0.0.0.0"]) + "/s/T"):
        parts = urlsplit(url)
        assert parts.path == "/s/T" and parts.port == 8080, url
        if shown:
            assert parts.hostname == shown, url
        else:
            assert parts.hostname == "localhost" or (parts.hostname in ours
                                                     and not ipaddress.ip_address(parts.hostname).is_loopback), url


def test_human_sizes_and_times():
    assert [human.size(n) for n in (0, 1, 999, 1000, 1449, 9951, 999_600, 5 * 10 ** 9)] == \
        ["0 bytes", "1 byte", "999 bytes", "1.0 kB", "1.4 kB", "10 kB", "1.0 MB", "5.0 GB"]
    t = dt.datetime(2026, 3, 4, 9, 5, tzinfo=dt.timezone.utc)
    tag = str(human.when(t))
    assert tag.startswith(f'<time datetime="{t.astimezone().isoformat(timespec="seconds")}" data-style="datetime">')
    assert str(human.when(dt.date(2026, 3, 4))) == '<time datetime="2026-03-04" data-style="day">4 Mar 2026</time>'
    assert str(human.when(None)) == "—" and str(human.when(0, none="never")) == "never"


async def test_select_all_without_scripts(web_client):
    """"Select all" is a link: without scripts it reloads the list with every box ticked (and "Select none")."""
    client, _ = await web_client()
    html = await (await client.get("/")).text()
    boxes = re.findall(r'<input type="checkbox" name="id" value="[0-9a-f-]{36}"( checked)?>', html)   # (uuids)
    assert boxes and not any(boxes) and ">Select all</a>" in html
    href = re.search(r'<a class="button secondary" id="select-all" href="([^"]+)"', html).group(1)
    html = await (await client.get(href.replace("&amp;", "&"))).text()
    boxes = re.findall(r'<input type="checkbox" name="id" value="[0-9a-f-]{36}"( checked)?>', html)
    assert boxes and all(boxes) and ">Select none</a>" in html
