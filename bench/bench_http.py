"""HTTP benchmark (`bench/run http`): our web page beside nginx serving the same files, one run.

- a 1 GiB recording downloaded (sendfile) vs nginx serving that file as Debian configures it (sendfile on,
  tcp_nopush on), and beside it nginx's own default (tcp_nopush off);
- a ZIP of a 1 GiB multi-session selection (4 x 256 MiB recordings) streamed vs nginx's single file:
  the first time (recordings never hashed: hashed by one thread per core while they are sent), once their
  checksums are known, and the first ZIP of a daemon whose background hasher ran (export.hash_ahead) before it was
  asked;
- 64 concurrent small downloads (curl --parallel), requests/s, ours vs nginx;
- the longest event-loop stall while an export job (PDF + audio) runs beside the downloads;
- the real daemon (a process of its own, password mode, the unit's LimitNOFILE and Environment): its RSS peak under 40
  concurrent logins + 20 ZIP clients (target <= 120 MB; MemoryMax is 256 MB), and a normal page's time while
  2,000 idle connections sit on it (target <= 100 ms) beside the same page's time without them.
Client: curl to /dev/null, the same command for ours and nginx. A 1 GiB transfer over loopback lasts about a
second here and swings by up to 3x from one to the next for nginx as for us (the client's copy and the kernel's
TCP work, not the server's few sendfile calls, take the time; where the scheduler puts curl beside the server and
beside other work decides it). So every figure against nginx is taken in interleaved rounds, ours and nginx's
back to back in each (which goes first alternates), and reported as the median of the rounds' ratios with its
spread (quartiles, min-max) and every round's seconds: BENCH_HTTP_ROUNDS rounds (default 9) for the single
download and the ZIPs with checksums known; the first ZIPs (the recordings hashed while sent, and after the
background hasher ran) in BENCH_HTTP_AHEAD samples each (default 5), each the first ZIP of a daemon of its own
(a fresh state: nothing hashed). The files are read into the page cache before each round (other benchmarks drop
caches: a file evicted meanwhile would cost whichever server went first).
Placement (printed as http_placement): on the device the client is another machine on the LAN; here it is curl on
loopback, and on 2 cores where the scheduler puts it decided a transfer's time (curl on the server's core: 1.0-1.2 s
per GiB, on the other: 0.66-0.99 s, for nginx as for us). So for every figure against nginx except the first ZIP
hashed while sent, both servers and curl are pinned the same way: the server (nginx's one worker process; every
thread of ours, which serves from this benchmark's own process) on CPU SERVER_CPU, curl on CPU CLIENT_CPU.
The first ZIP hashed while sent is left to the scheduler for both servers (its hashing threads take every core a
daemon has; pinned to one core it would measure a one-core daemon). BENCH_HTTP_PIN=0 leaves all to the scheduler.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cleanup  # noqa: E402
from steno_exportd import config, demo  # noqa: E402
from steno_exportd.core import Core  # noqa: E402
from tests.parts import LoopLag  # noqa: E402

SIZE = 1024 * 1024 * 1024
ZIP_PART = 256 * 1024 * 1024
ROUNDS = int(os.environ.get("BENCH_HTTP_ROUNDS", "9"))
AHEAD = int(os.environ.get("BENCH_HTTP_AHEAD", "5"))
PIN = os.environ.get("BENCH_HTTP_PIN", "1") != "0" and len(os.sched_getaffinity(0)) >= 2
SERVER_CPU, CLIENT_CPU = sorted(os.sched_getaffinity(0))[:2] if PIN else (None, None)
ALL_CPUS = os.sched_getaffinity(0)


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    """cmd run on one CPU (taskset), or as it is when cpu is None."""
    return cmd if cpu is None else ["taskset", "-c", str(cpu), *cmd]


def pin_this_process(cpus: set[int] | None) -> None:
    """Every thread of this process (ours serves from it) on these CPUs; threads started later inherit it."""
    if cpus is None:
        return
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):
            pass              # a thread that just ended


def placement() -> str:
    if not PIN:
        return "left to the scheduler for both servers and curl (BENCH_HTTP_PIN=0)"
    return (f"server on CPU {SERVER_CPU} (nginx's worker process; every thread of ours), curl on CPU {CLIENT_CPU}, "
            f"the same for both; the first ZIP hashed while sent: left to the scheduler for both")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curl_timed(url: str, cpu: int | None = None) -> tuple[float, float, int]:
    """(seconds to the first byte, seconds in all, bytes) of one GET by curl to /dev/null (on CPU cpu)."""
    r = subprocess.run(pinned(["curl", "-s", "-o", "/dev/null", "-w",
                               "%{time_starttransfer} %{time_total} %{size_download} %{http_code}", url], cpu),
                       capture_output=True, text=True, check=True)
    first, t, size, code = r.stdout.split()
    assert code == "200", (url, code)
    return float(first), float(t), int(size)


def curl_seconds(url: str, cpu: int | None = None) -> tuple[float, int]:
    first, t, size = curl_timed(url, cpu)
    return t, size


def spread(ratios: list[float]) -> str:
    """The median's company: quartiles, min-max and every round's ratio."""
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return (f"quartiles {q[0]:.2f}-{q[2]:.2f}, min-max {min(ratios):.2f}-{max(ratios):.2f}; rounds "
            + " ".join(f"{r:.2f}" for r in ratios))


def seconds(xs: list[float]) -> str:
    return " ".join(f"{x:.3f}" for x in xs)


def warm(paths: list[Path]) -> None:
    """The files in the page cache (read through once): a transfer never pays for a cache another process
    dropped meanwhile (other benchmarks drop caches), which would land on whichever server went first."""
    subprocess.run(["cat", *map(str, paths)], stdout=subprocess.DEVNULL, check=True)


async def interleaved(rounds: int, files: list[Path], anchor: str, *ours: str) -> tuple[list, ...]:
    """Each round: the files warmed, then the anchor's URL and each of ours back to back, the anchor first in even
    rounds and last in odd ones; (first byte, total, bytes) per URL per round."""
    out: tuple[list, ...] = tuple([] for _ in range(1 + len(ours)))
    urls = [anchor, *ours]
    for i in range(rounds):
        await asyncio.to_thread(warm, files)
        order = list(range(len(urls))) if i % 2 == 0 else [*range(1, len(urls)), 0]
        for k in order:
            out[k].append(await asyncio.to_thread(curl_timed, urls[k], CLIENT_CPU))
    return out


def start_nginx(root: Path, port: int, work: Path, cpu: int | None, nopush: bool = True) -> subprocess.Popen:
    """nginx serving root: as Debian's nginx.conf sets it up (sendfile on, tcp_nopush on), or without tcp_nopush
    (nginx's own default: the file's segments pushed out as they come, as asyncio's TCP_NODELAY does)."""
    name = "nginx" if nopush else "nginx-push"
    conf = work / f"{name}.conf"
    conf.write_text(f"""daemon off; worker_processes 1; pid {work}/{name}.pid; error_log {work}/{name}-error.log;
events {{}}
http {{ access_log off; sendfile on; tcp_nopush {'on' if nopush else 'off'}; client_body_temp_path {work}; proxy_temp_path {work};
  fastcgi_temp_path {work}; uwsgi_temp_path {work}; scgi_temp_path {work};
  server {{ listen 127.0.0.1:{port}; root {root}; }} }}
""")
    p = subprocess.Popen(pinned(["nginx", "-c", str(conf), "-p", str(work)], cpu), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return p
        time.sleep(0.05)
    p.kill()
    raise SystemExit("nginx did not start")


def parallel_rps(url: str, n: int = 1000, par: int = 64) -> float:
    args = []
    for _ in range(n):
        args += ["-o", "/dev/null", url]
    t = time.perf_counter()
    subprocess.run(["curl", "-s", "--no-progress-meter", "--parallel", "--parallel-max", str(par), *args],
                   check=True, stderr=subprocess.DEVNULL)
    return n / (time.perf_counter() - t)


async def main() -> None:
    if not shutil.which("nginx"):
        raise SystemExit("bench_http: nginx is not installed (packaging/install-test-deps.sh)")
    with tempfile.TemporaryDirectory(prefix="bench-http-", dir="/var/tmp") as tmp:
        tmp_path = Path(tmp)
        os.chmod(tmp_path, 0o755)
        lib = tmp_path / "library"
        demo.generate(lib, sessions=9, seed=9)
        db = sqlite3.connect(lib / demo.DB_NAME)
        rows = db.execute("SELECT id, audio_file_path FROM sessions WHERE audio_file_path IS NOT NULL "
                          "AND status IN ('completed', 'archived') ORDER BY id").fetchall()
        db.close()
        audio = {sid: (Path(rel) if os.path.isabs(rel) else lib / rel) for sid, rel in rows}
        audio = {sid: p for sid, p in audio.items() if p.is_file()}
        big, *zip_ids = list(audio)[:5]
        with open(audio[big], "r+b") as f:        # keep the header, grow the file
            f.truncate(SIZE)
        for sid in zip_ids:
            with open(audio[sid], "r+b") as f:
                f.truncate(ZIP_PART)
        www = tmp_path / "www"
        www.mkdir()
        os.link(audio[big], www / "audio.bin")
        (www / "small.txt").write_bytes(b"x" * 4096)
        for p in (tmp_path, www, lib, lib / "audio"):
            os.chmod(p, 0o755)
        os.chmod(www / "audio.bin", 0o644)
        os.chmod(www / "small.txt", 0o644)
        port, nport, pport = free_port(), free_port(), free_port()
        (tmp_path / "exports").mkdir()
        cfg = config.from_dict({"recorder": {"db_path": str(lib / demo.DB_NAME)},
                                "state": {"dir": str(tmp_path / "state"), "runtime_dir": str(tmp_path / "run")},
                                "export": {"allowed_dirs": [str(tmp_path / "exports")], "hash_ahead": False},
                                "usb": {"enabled": False},
                                "http": {"bind": ["127.0.0.1"], "port": port, "auth": {"mode": "none"}}})
        core = Core(cfg)
        await core.start()
        from steno_exportd.web import serve
        ng = start_nginx(www, nport, tmp_path, SERVER_CPU)
        nginxes = [ng]
        try:
            nginxes.append(start_nginx(www, pport, tmp_path, SERVER_CPU, nopush=False))
            async with serve(core) as url:
                files = [audio[big], *(audio[i] for i in zip_ids)]
                warm(files)
                zip_url = f"{url}/zip?formats=audio&" + "&".join(f"id={i}" for i in zip_ids)
                load = open("/proc/loadavg").read().split()[0]
                await asyncio.to_thread(curl_seconds, zip_url)    # hashes the recordings (first ZIPs: below)
                pin_this_process({SERVER_CPU} if PIN else None)
                try:
                    ng_runs, audio_runs, zip_runs, push_runs = await interleaved(
                        ROUNDS, files, f"{nginx_url(nport)}/audio.bin", f"{url}/sessions/{big}/audio?dl=1", zip_url,
                        f"{nginx_url(pport)}/audio.bin")
                finally:
                    pin_this_process(ALL_CPUS)
                assert all(n == SIZE for *_, n in ng_runs + audio_runs) and all(n > 4 * ZIP_PART for *_, n in zip_runs)
                nginx_file, ours_audio, ours_zip = ([t for _, t, _ in xs] for xs in (ng_runs, audio_runs, zip_runs))
                a, z, ng_t = (statistics.median(x) for x in (ours_audio, ours_zip, nginx_file))
                rounds = [n / o for n, o in zip(nginx_file, ours_audio)]
                zip_rounds = [n / o for n, o in zip(nginx_file, ours_zip)]
                gib = SIZE / 2 ** 30
                print(f"http_load_average_1min: {load} (2 cores)")
                print(f"http_placement: {placement()}")
                print(f"http_download_1GiB_MBps: {1024 * gib / a:.0f}")
                print(f"anchor_nginx_1GiB_MBps: {1024 * gib / ng_t:.0f}")
                print(f"http_download_ratio_ours_over_nginx: {statistics.median(rounds):.2f}  (target >= 1.0; median "
                      f"of {len(rounds)} rounds; {spread(rounds)})")
                print(f"http_download_rounds_s: ours {seconds(ours_audio)} | nginx {seconds(nginx_file)}")
                ttfb = [1000 * statistics.median(f for f, _, _ in xs) for xs in (audio_runs, ng_runs)]
                push_t = [t for _, t, _ in push_runs]
                print(f"http_download_ratio_ours_over_nginx_without_tcp_nopush: "
                      f"{statistics.median(p / o for p, o in zip(push_t, ours_audio)):.2f}  (nginx's own default; "
                      f"its rounds {seconds(push_t)})")
                print(f"http_download_first_byte_ms_median: ours {ttfb[0]:.1f} | nginx {ttfb[1]:.1f}")
                print(f"http_zip_1GiB_selection_MBps: {1024 / z:.0f}")
                print(f"http_zip_ratio_ours_over_nginx: {statistics.median(zip_rounds):.2f}  (target >= 0.7; checksums "
                      f"known; {spread(zip_rounds)})")
                print(f"http_zip_rounds_s: ours {seconds(ours_zip)}")
                ours_rps = await asyncio.to_thread(parallel_rps, f"{url}/static/style.css")
                ng_rps = await asyncio.to_thread(parallel_rps, f"{nginx_url(nport)}/small.txt")
                print(f"http_64_concurrent_small_req_per_s: {ours_rps:.0f}")
                print(f"anchor_nginx_64_concurrent_small_req_per_s: {ng_rps:.0f}")
                print(f"http_small_ratio_ours_over_nginx: {ours_rps / ng_rps:.2f}")
                # loop stall while an export job (PDF rendering + audio copies) runs beside downloads
                from steno_exportd.engine.options import ExportOptions
                with LoopLag() as lag:
                    job = await core.export_sessions([str(i) for i in audio], ["pdf", "docx", "txt", "audio"],
                                                     str(tmp_path / "exports"), ExportOptions())
                    dl = asyncio.create_task(asyncio.to_thread(curl_seconds, zip_url))
                    while not core.jobs.get(job.id).state.finished:
                        await asyncio.sleep(0.05)
                    await dl
                print(f"http_export_job_state: {core.jobs.get(job.id).state}")
                print(f"http_longest_loop_stall_during_export_ms: {lag.worst * 1000:.0f}  (target <= 100)")
        finally:
            for n in nginxes:
                n.send_signal(signal.SIGTERM)
                n.wait(10)
            await core.stop()
        await first_zips(cfg, tmp_path, www, zip_ids, [audio[i] for i in zip_ids], ahead=False)
        await first_zips(cfg, tmp_path, www, zip_ids, [audio[i] for i in zip_ids], ahead=True)
        await daemon_under_load(tmp_path, lib, zip_ids[0])


async def first_zips(cfg: config.Config, tmp: Path, www: Path, zip_ids: list[int], files: list[Path],
                     ahead: bool) -> None:
    """AHEAD daemons, one after the other, each with a state of its own (nothing hashed yet): each sample is that
    daemon's first ZIP of the selection beside one nginx download (the order alternating). ahead=False: the
    recordings are hashed while they are sent; ahead=True: the daemon idled first and its background hasher ran
    (export.hash_ahead), so the ZIP finds every checksum."""
    import dataclasses

    from steno_exportd.web import serve
    nport = free_port()
    cpu = SERVER_CPU if ahead else None     # hashed while sent: every core the daemon has (see the docstring)
    ng = start_nginx(www, nport, tmp, cpu)
    client = CLIENT_CPU if ahead else None
    ratios, ours, theirs, idle = [], [], [], []
    kind = "ahead" if ahead else "first"
    pin_this_process({cpu} if cpu is not None else None)
    try:
        for i in range(AHEAD):
            state = dataclasses.replace(cfg.state, dir=str(tmp / f"state-{kind}-{i}"))
            export = dataclasses.replace(cfg.export, hash_ahead=ahead)
            http = dataclasses.replace(cfg.http, port=free_port())
            core = Core(dataclasses.replace(cfg, state=state, export=export, http=http))
            await core.start()
            try:
                if ahead:
                    t0 = time.monotonic()
                    await core.prehasher.settled(timeout=600)
                    idle.append(time.monotonic() - t0)
                    hashed = (core.prehasher.hashed, core.prehasher.bytes, core.prehasher.idle_seconds)
                await asyncio.to_thread(warm, [www / "audio.bin", *files])
                async with serve(core) as url:
                    zip_url = f"{url}/zip?formats=audio&" + "&".join(f"id={sid}" for sid in zip_ids)
                    ng_url = f"{nginx_url(nport)}/audio.bin"
                    if i % 2 == 0:
                        ng_t, _ = await asyncio.to_thread(curl_seconds, ng_url, client)
                    first, n = await asyncio.to_thread(curl_seconds, zip_url, client)
                    assert n > 4 * ZIP_PART
                    if i % 2:
                        ng_t, _ = await asyncio.to_thread(curl_seconds, ng_url, client)
            finally:
                await core.stop()
            ours.append(first)
            theirs.append(ng_t)
            ratios.append(ng_t / first)
    finally:
        pin_this_process(ALL_CPUS)
        ng.send_signal(signal.SIGTERM)
        ng.wait(10)
    if ahead:
        print(f"http_background_hasher_s: {statistics.median(idle):.1f}  (median of {len(idle)} daemons; each hashed "
              f"{hashed[0]} recordings, {hashed[1] / 2 ** 20:.0f} MiB, after {hashed[2]:.0f} s idle)")
        print(f"http_zip_first_after_background_hashing_ratio_ours_over_nginx: {statistics.median(ratios):.2f}  "
              f"(target >= 1.0; median of {len(ratios)} daemons' first ZIPs; {spread(ratios)})")
        print(f"http_zip_first_after_background_hashing_s: ours {seconds(ours)} | nginx {seconds(theirs)}")
    else:
        print(f"http_zip_1GiB_first_time_MBps (recordings hashed while sent, one thread per core): "
              f"{1024 / statistics.median(ours):.0f}")
        print(f"http_zip_first_time_ratio_ours_over_nginx: {statistics.median(ratios):.2f}  (target >= 0.7; median "
              f"of {len(ratios)} daemons' first ZIPs; {spread(ratios)})")
        print(f"http_zip_first_time_s: ours {seconds(ours)} | nginx {seconds(theirs)}")


UNIT = Path(__file__).resolve().parents[1] / "systemd" / "steno-exportd.service"
PASSWORD = "bench password 1"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024


async def daemon_under_load(tmp: Path, lib: Path, zip_session: int) -> None:
    """The real daemon as the unit runs it (its LimitNOFILE), loaded by logins, ZIP clients, idle sockets."""
    import re
    import resource

    import aiohttp

    from steno_exportd.access.passwords import hash_password
    nofile = re.search(r"(?m)^LimitNOFILE=(\d+)$", UNIT.read_text()).group(1)
    port = free_port()
    (tmp / "d").mkdir()
    conf = tmp / "d" / "config.toml"
    conf.write_text(f"""[recorder]\ndb_path = "{lib / demo.DB_NAME}"\n[state]\ndir = "{tmp}/d/state"
runtime_dir = "{tmp}/d/run"\n[export]\nallowed_dirs = ["{tmp}/exports"]\n[usb]\nenabled = false
[dbus]\nenabled = false\n[samba]\nexport_dir = "{tmp}/d/share"\nsnippet_path = "{tmp}/d/snippet.conf"
[http]\nbind = ["127.0.0.1"]\nport = {port}\n[http.auth]\nmode = "password"
password_hash = "{hash_password(PASSWORD)}"\n""")
    log = open(tmp / "d" / "daemon.log", "wb")
    env = dict(os.environ, **dict(x.split("=", 1) for line in UNIT.read_text().splitlines()
                                  if line.startswith("Environment=") for x in line[12:].split()))
    proc = subprocess.Popen(["prlimit", f"--nofile={nofile}:{nofile}", sys.executable, "-m", "steno_exportd",
                             "--config", str(conf), "run"], stdout=log, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parents[1], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("bench_http: the daemon did not start; see " + str(tmp / "d" / "daemon.log"))
            await asyncio.sleep(0.1)
        idle_rss = rss_mb(proc.pid)
        peak = [idle_rss]

        async def sample() -> None:
            while True:
                peak[0] = max(peak[0], rss_mb(proc.pid))
                await asyncio.sleep(0.01)

        async def login(http: aiohttp.ClientSession) -> int:
            async with http.get(url + "/login") as r:
                token = re.search(r'name="csrf" value="([^"]+)"', await r.text()).group(1)
            async with http.post(url + "/login", data={"password": PASSWORD, "csrf": token},
                                 allow_redirects=False) as r:
                return r.status

        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            assert await login(http) == 303
            cookie = "; ".join(f"{c.key}={c.value}" for c in jar)
            sampler = asyncio.create_task(sample())
            zips = [asyncio.create_task(asyncio.create_subprocess_exec(
                "curl", "-s", "-o", "/dev/null", "-H", f"Cookie: {cookie}", f"{url}/sessions/{zip_session}/zip?formats=audio,txt",
                stdout=subprocess.DEVNULL)) for _ in range(20)]
            logins = []
            for i in range(40):
                conn = aiohttp.TCPConnector(local_addr=(f"127.60.{i}.1", 0))
                logins.append(aiohttp.ClientSession(connector=conn, cookie_jar=aiohttp.CookieJar(unsafe=True)))
            t0 = time.perf_counter()
            codes = await asyncio.gather(*(login(h) for h in logins))
            login_s = time.perf_counter() - t0
            for h in logins:
                await h.close()
            for z in zips:
                await (await z).wait()
            sampler.cancel()
        print(f"http_daemon_rss_idle_MB: {idle_rss:.0f}")
        print(f"http_daemon_rss_peak_40_logins_20_zips_MB: {peak[0]:.0f}  (target <= 120; MemoryMax 256; "
              f"before issue 14: 197-325 under 40 logins)")
        print(f"http_40_concurrent_logins_s: {login_s:.2f}  ({codes.count(303)} of 40 logged in)")

        async def page_ms(n: int = 20) -> list[float]:
            out = []
            async with aiohttp.ClientSession(cookie_jar=jar) as http:
                for _ in range(n):
                    t = time.perf_counter()
                    async with http.get(url + "/") as r:
                        await r.read()
                        assert r.status == 200, r.status
                    out.append((time.perf_counter() - t) * 1000)
                    await asyncio.sleep(0.05)
            return out
        quiet = await page_ms()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
        socks = []
        for _ in range(2000):
            sock = socket.socket()
            sock.setblocking(False)
            try:
                sock.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            socks.append(sock)
        await asyncio.sleep(1.0)
        flooded = await page_ms()
        for sock in socks:
            sock.close()
        q, f = statistics.median(quiet), statistics.median(flooded)
        print(f"http_page_ms_quiet: {q:.0f}  (the meetings page, median of 20)")
        print(f"http_page_ms_during_2000_idle_connections: {f:.0f}  (max {max(flooded):.0f}; target <= 100; "
              f"ratio to quiet {f / q:.2f})")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def nginx_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


if __name__ == "__main__":
    sys.exit(cleanup.run(lambda: asyncio.run(main()), "bench_http"))
