"""A real SMTP server for tests: aiosmtpd in its own thread, with STARTTLS or implicit TLS (a self-signed
certificate made here), AUTH, and scripted answers (421 then 250, 550, ...)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import hashlib
import ipaddress
import socket
import ssl
import threading
import warnings
from pathlib import Path

import pytest

from tests.parts import require

USER, PASSWORD = "steno", "s3cret pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (cert.pem doubles as the CA to trust)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "steno test smtp")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclasses.dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: str

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)

    def attachments(self) -> dict[str, bytes]:
        return {p.get_filename(): p.get_payload(decode=True) for p in self.message.iter_attachments()}

    def attachment_hashes(self) -> dict[str, str]:
        return {n: hashlib.sha256(b).hexdigest() for n, b in self.attachments().items()}

    def text(self) -> str:
        """The plain-text body with line breaks as a reader sees them ("\n")."""
        return self.message.get_body(("plain",)).get_content().replace("\r\n", "\n")

    def html(self) -> str:
        return self.message.get_body(("html",)).get_content().replace("\r\n", "\n")


class Handler:
    """Accepts mail, or answers what a test scripted: data_answers are used up one per DATA."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.data_answers: list[str] = []
        self.rcpt_answers: dict[str, str] = {}
        self.data_attempts = 0
        self.connections = 0
        self.lock = threading.Lock()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        with self.lock:
            self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        answer = self.rcpt_answers.get(address)
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.data_attempts += 1
            answer = self.data_answers.pop(0) if self.data_answers else ""
        if answer:
            return answer
        login = session.auth_data.login.decode() if session.auth_data is not None else ""
        tls = session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content),
                                      tls, login))
        return "250 2.0.0 accepted"


class SmtpServer:
    def __init__(self, folder: Path, security: str = "starttls", auth: bool = True, port: int = 0,
                 cert: tuple[Path, Path] | None = None, host: str = "127.0.0.1") -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword
        self.cert, key = cert or make_certificate(folder)
        self.security = security
        self.handler = Handler()
        self.port = port or free_port()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, key)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == \
                (USER.encode(), PASSWORD.encode())
            return AuthResult(success=ok, handled=False, auth_data=auth_data)

        kw: dict = dict(hostname=host, port=self.port, data_size_limit=None, authenticator=authenticator,
                        auth_required=auth, auth_require_tls=security == "starttls")   # aiosmtpd: STARTTLS only
        if security == "tls":
            kw.update(ssl_context=ctx, server_hostname="localhost")
        elif security == "starttls":
            kw.update(tls_context=ctx, require_starttls=True)
        with warnings.catch_warnings():     # "AUTH without requiring TLS": with implicit TLS it is all TLS
            warnings.simplefilter("ignore", UserWarning)
            self.controller = Controller(self.handler, **kw)
        self.controller.start()

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def stop(self) -> None:
        """Stop listening (idempotent): the port refuses connections until a server starts on it again."""
        if self.controller.loop.is_running():
            self.controller.stop()

    def email_config(self, **extra) -> dict:
        """The [email] keys that reach this server (a dict for config.from_dict)."""
        pw = self.cert.parent / "smtp-password"
        pw.write_text(PASSWORD + "\n")
        pw.chmod(0o600)
        d = dict(enabled=True, smtp_host="127.0.0.1", smtp_port=self.port, security=self.security,
                 ca_file=str(self.cert), username=USER, password_file=str(pw), sender="steno@recorder.example",
                 retry_initial_seconds=0.2, retry_max_seconds=1.0, timeout=10.0)
        d.update(extra)
        return d


@pytest.fixture
def smtp_server(tmp_path):
    """Start aiosmtpd servers: smtp_server(security='starttls'|'tls'|'none', auth=True, port=0); stopped after."""
    try:
        import aiosmtpd  # noqa: F401
        import cryptography  # noqa: F401
    except ImportError:
        require(False, "aiosmtpd and cryptography (pip install -e '.[test]')")
    servers: list[SmtpServer] = []
    certs: list[tuple[Path, Path]] = []

    def start(security: str = "starttls", auth: bool = True, port: int = 0) -> SmtpServer:
        """A server; every server of one test has the same certificate (a restart on the same port)."""
        d = tmp_path / f"smtp{len(servers)}"
        d.mkdir()
        if not certs:
            certs.append(make_certificate(d))
        s = SmtpServer(d, security, auth, port, certs[0])
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.stop()
