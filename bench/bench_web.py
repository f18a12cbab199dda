"""Web benchmark: audio download and streamed ZIP from our page, beside nginx serving the same file.

One demo session's recording is replaced by a 512 MiB file. Anchor: nginx (sendfile) serving that
file, fetched by the same client (curl to /dev/null), in the same run. Medians of 3 rounds.
Also: small-request rate (the session list API) against nginx serving a small static file.
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

from steno_exportd import config, demo  # noqa: E402
from steno_exportd.core import Core  # noqa: E402

SIZE = 512 * 1024 * 1024
ROUNDS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curl_seconds(url: str) -> tuple[float, int]:
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{time_total} %{size_download} %{http_code}", url],
                       capture_output=True, text=True, check=True)
    t, size, code = r.stdout.split()
    assert code == "200", (url, code)
    return float(t), int(size)


def requests_per_second(url: str, n: int = 300) -> float:
    t = time.perf_counter()
    args = []
    for _ in range(n):
        args += ["-o", "/dev/null", url]
    subprocess.run(["curl", "-s", *args], check=True)
    return n / (time.perf_counter() - t)


def start_nginx(root: Path, port: int, work: Path) -> subprocess.Popen:
    conf = work / "nginx.conf"
    conf.write_text(f"""daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/error.log;
events {{}}
http {{ access_log off; sendfile on; client_body_temp_path {work}; proxy_temp_path {work};
  fastcgi_temp_path {work}; uwsgi_temp_path {work}; scgi_temp_path {work};
  server {{ listen 127.0.0.1:{port}; root {root}; }} }}
""")
    p = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(work)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return p
        time.sleep(0.05)
    p.kill()
    raise SystemExit("nginx did not start")


async def main() -> None:
    if not shutil.which("nginx"):
        raise SystemExit("bench_web: nginx is not installed (packaging/install-test-deps.sh)")
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        tmp_path = Path(tmp)
        os.chmod(tmp_path, 0o755)
        lib = tmp_path / "library"
        demo.generate(lib, sessions=7, seed=9)
        db = sqlite3.connect(lib / demo.DB_NAME)
        sid, rel = db.execute("SELECT id, audio_file_path FROM sessions WHERE audio_file_path IS NOT NULL "
                              "AND status = 'completed' ORDER BY id LIMIT 1").fetchone()
        db.close()
        audio = Path(rel) if os.path.isabs(rel) else lib / rel
        with open(audio, "r+b") as f:          # keep the header, grow the file to SIZE
            f.truncate(SIZE)
        www = tmp_path / "www"
        www.mkdir()
        os.link(audio, www / "audio.bin")
        (www / "small.json").write_bytes(b"{}" * 2000)
        for p in (tmp_path, www):
            os.chmod(p, 0o755)
        os.chmod(www / "audio.bin", 0o644)
        port, nport = free_port(), free_port()
        cfg = config.from_dict({"recorder": {"db_path": str(lib / demo.DB_NAME)},
                                "state": {"dir": str(tmp_path / "state"), "runtime_dir": str(tmp_path / "run")},
                                "usb": {"enabled": False}, "http": {"bind": ["127.0.0.1"], "port": port}})
        core = Core(cfg)
        await core.start()
        from steno_exportd.web import serve
        ng = start_nginx(www, nport, tmp_path)
        try:
            async with serve(core) as url:
                ours_audio, ours_zip, nginx_file = [], [], []
                for _ in range(ROUNDS):
                    t, n = await asyncio.to_thread(curl_seconds, f"{nginx_url(nport)}/audio.bin")
                    assert n == SIZE
                    nginx_file.append(t)
                    t, n = await asyncio.to_thread(curl_seconds, f"{url}/sessions/{sid}/audio?dl=1")
                    assert n == SIZE
                    ours_audio.append(t)
                    t, n = await asyncio.to_thread(curl_seconds, f"{url}/sessions/{sid}/zip?formats=audio")
                    assert n > SIZE
                    ours_zip.append(t)
                a, z, ng_t = (statistics.median(x) for x in (ours_audio, ours_zip, nginx_file))
                mb = SIZE / 2 ** 20
                print(f"web_audio_download_MBps: {mb / a:.0f}")
                print(f"web_zip_stream_MBps (audio stored, hashed, CRC): {mb / z:.0f}")
                print(f"anchor_nginx_sendfile_MBps: {mb / ng_t:.0f}")
                print(f"ratio_audio_vs_nginx (time): {a / ng_t:.2f}")
                print(f"ratio_zip_vs_nginx (time): {z / ng_t:.2f}")
                ours_rps = await asyncio.to_thread(requests_per_second, f"{url}/api/v1/sessions?per_page=20")
                ng_rps = await asyncio.to_thread(requests_per_second, f"{nginx_url(nport)}/small.json")
                print(f"web_session_list_api_req_per_s: {ours_rps:.0f}")
                print(f"anchor_nginx_small_static_req_per_s: {ng_rps:.0f}")
                print(f"ratio_nginx_vs_list_api_rate: {ng_rps / ours_rps:.1f}")
        finally:
            ng.send_signal(signal.SIGTERM)
            ng.wait(10)
            await core.stop()


def nginx_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


if __name__ == "__main__":
    asyncio.run(main())
