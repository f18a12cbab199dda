"""Optional HTTPS for the page: a self-signed certificate made on first start (kept in the state dir), or the
admin's own certificate and key. With TLS on, cookies are Secure."""
from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import os
import ssl
from pathlib import Path
from typing import Any

from steno_exportd.atomic import write_file
from steno_exportd.engine.identity import dns_name
from steno_exportd.errors import ConfigError

log = logging.getLogger(__name__)


def context(cfg: Any) -> ssl.SSLContext | None:
    """The server's TLS context for http.tls (None when off); makes the self-signed pair when missing."""
    tls = cfg.http.tls
    if tls.mode == "off":
        return None
    if tls.mode == "self-signed":
        cert, key = self_signed(Path(cfg.state.dir) / "tls")
    else:
        cert, key = Path(tls.cert_file), Path(tls.key_file)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError([f"http.tls: cannot use {cert} / {key}: {e}"]) from None
    log.info("web page TLS certificate %s, SHA-256 fingerprint %s", cert, fingerprint(cert))
    return ctx


def fingerprint(cert: Path) -> str:
    """SHA-256 of the certificate (DER), as browsers show it: AB:CD:..."""
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def self_signed(folder: Path) -> tuple[Path, Path]:
    """cert.pem and key.pem in folder, made once (EC P-256, 10 years, the host's names); reused afterwards."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    if cert.exists() and key.exists():
        return cert, key
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    host = dns_name()                                  # "" for a host name no browser could ask for
    names = [x509.DNSName(n) for n in dict.fromkeys((*((host, f"{host}.local") if host else ()), "localhost"))]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    pk = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{host}.local" if host else "localhost"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Silent Steno recorder")])
    now = dt.datetime.now(dt.timezone.utc)
    crt = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(pk.public_key())
           .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
           .not_valid_after(now + dt.timedelta(days=3650))
           .add_extension(x509.SubjectAlternativeName(names), critical=False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .sign(pk, hashes.SHA256()))
    write_file(key, pk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()), 0o600)
    write_file(cert, crt.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("made a self-signed certificate for the web page: %s", cert)
    return cert, key
