"""bench/run mail: a session with a 50 MB recording mailed to a local aiosmtpd (STARTTLS + AUTH).

Ours (the outbox: compose to a spool file, DATA streamed in blocks) beside the anchor, the plain
way: the stdlib EmailMessage with the recording attached, sent with aiosmtplib.send(). Each runs in
its own process; the peak RSS it adds while mailing (VmHWM reset after a warm-up mail) is compared
with the recording's size (target: at most 2x).
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench import cleanup  # noqa: E402
MB = 1024 * 1024
SIZE = 50 * MB


def status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")      # VmHWM := VmRSS (Linux >= 4.0)


async def ours(port: int, cert: str, password_file: str, audio: Path, state: Path) -> dict:
    from steno_exportd import config, events as ev
    from steno_exportd.core import Core
    from steno_exportd.mail import sender
    from tests.fakes import FakeLibrary, make_session
    small = audio.with_name("small.wav")
    small.write_bytes(b"RIFF" + bytes(1000))
    lib = FakeLibrary([make_session(1, audio, "Big meeting"), make_session(2, small, "Warm-up")])
    cfg = config.from_dict({"state": {"dir": str(state)}, "email": {
        "enabled": True, "smtp_host": "127.0.0.1", "smtp_port": port, "security": "starttls", "ca_file": cert,
        "username": "steno", "password_file": password_file, "sender": "steno@recorder.example",
        "max_message_mb": 100.0}})
    core = Core(cfg, library=lib)
    await core.start()
    task = asyncio.create_task(sender.run(core))

    async def mail(session: int) -> ev.OutboxEntry:
        entry = await core.email_sessions([session], ["txt", "audio"], ["alice@example.org"])
        while not core.outbox.get(entry.id).state.finished:
            await asyncio.sleep(0.01)
        done = core.outbox.get(entry.id)
        assert done.state == ev.OutboxState.SENT, done.error
        return done

    await mail(2)                                      # imports, TLS, templates: not part of the figure
    reset_peak()
    base = status("VmRSS")
    t = time.perf_counter()
    done = await mail(1)
    seconds = time.perf_counter() - t
    peak = status("VmHWM")
    task.cancel()
    await core.stop()
    return {"seconds": seconds, "extra_rss": peak - base, "message_bytes": done.size}


async def naive(port: int, cert: str, password_file: str, audio: Path, state: Path) -> dict:
    import ssl
    from email.message import EmailMessage
    import aiosmtplib
    ctx = ssl.create_default_context(cafile=cert)
    password = Path(password_file).read_text().splitlines()[0]

    async def mail(path: Path) -> None:
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "steno@recorder.example", "alice@example.org", "Meeting"
        msg.set_content("Hello")
        msg.add_attachment(path.read_bytes(), maintype="audio", subtype="wav", filename=path.name)
        await aiosmtplib.send(msg, hostname="127.0.0.1", port=port, start_tls=True, tls_context=ctx,
                              username="steno", password=password)

    small = audio.with_name("small.wav")
    small.write_bytes(b"RIFF" + bytes(1000))
    await mail(small)
    reset_peak()
    base = status("VmRSS")
    t = time.perf_counter()
    await mail(audio)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "extra_rss": status("VmHWM") - base}


def child(argv: list[str]) -> None:
    kind, port, cert, pw, audio, state = argv
    fn = ours if kind == "ours" else naive
    print(json.dumps(asyncio.run(fn(int(port), cert, pw, Path(audio), Path(state)))))


def main() -> None:
    import logging
    from tests.parts.smtp import PASSWORD, SmtpServer
    logging.getLogger("mail.log").setLevel(logging.ERROR)     # aiosmtpd's own deprecation notes
    with tempfile.TemporaryDirectory(prefix="bench-mail-") as tmp:
        t = Path(tmp)
        audio = t / "rec" / "recording.wav"
        audio.parent.mkdir()
        with open(audio, "wb") as f:
            for _ in range(SIZE // MB):
                f.write(os.urandom(MB))
        pw = t / "password"
        pw.write_text(PASSWORD + "\n")
        server = SmtpServer(t, "starttls", auth=True)
        try:
            results = {}
            for kind in ("ours", "naive"):
                out = subprocess.run([sys.executable, __file__, "child", kind, str(server.port), str(server.cert),
                                      str(pw), str(audio), str(t / f"state-{kind}")],
                                     capture_output=True, text=True, timeout=600)
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                    raise SystemExit(f"bench mail: the {kind} run failed")
                results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
            got = server.received
            assert len(got) == 4 and all(len(m.data) > SIZE for m in (got[1], got[3])), "a 50 MB mail was lost"
        finally:
            server.stop()
    o, n = results["ours"], results["naive"]
    print(f"recording_mb: {SIZE / MB:.0f}")
    print(f"message_mb: {o['message_bytes'] / MB:.1f}")
    print(f"mail_seconds: {o['seconds']:.2f}")
    print(f"naive_mail_seconds: {n['seconds']:.2f}")
    print(f"mail_time_ratio_vs_naive: {o['seconds'] / n['seconds']:.2f}")
    print(f"mail_extra_rss_mb: {o['extra_rss'] / MB:.1f}")
    print(f"naive_extra_rss_mb: {n['extra_rss'] / MB:.1f}")
    print(f"mail_rss_ratio_vs_naive: {o['extra_rss'] / max(1, n['extra_rss']):.3f}")
    print(f"mail_extra_rss_per_attachment_size: {o['extra_rss'] / SIZE:.3f} (target <= 2)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2:])
    else:
        sys.exit(cleanup.run(main))
