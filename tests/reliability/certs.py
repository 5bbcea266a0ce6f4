"""A throwaway certificate authority, made inside a test, for the TLS tests.

:func:`make_pki` writes a CA and two server certificates it signed: one valid for
``127.0.0.1`` and ``localhost``, and one valid only for a name the test never connects
to (the wrong-hostname case). It uses the ``cryptography`` package when it is
importable, else the ``openssl`` command; :func:`available` says whether either exists.
Keys are small EC keys: fast to make, never reused.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pki", "make_pki", "available", "WRONG_NAME"]

#: The only name on the wrong-host certificate (.invalid never resolves).
WRONG_NAME = "not-this-host.invalid"


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    wrong_cert: Path
    wrong_key: Path


def _has_cryptography() -> bool:
    try:
        import cryptography.x509  # noqa: F401
    except ImportError:
        return False
    return True


def available() -> str | None:
    """``"cryptography"``, ``"openssl"`` or None when neither can make certificates."""
    if _has_cryptography():
        return "cryptography"
    if shutil.which("openssl"):
        return "openssl"
    return None


def make_pki(directory: Path) -> Pki:
    tool = available()
    if tool == "cryptography":
        return _with_cryptography(directory)
    if tool == "openssl":
        return _with_openssl(directory)
    raise RuntimeError("neither the cryptography package nor the openssl command is available")


def _with_cryptography(directory: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("kaffi reliability test CA"))
        .issuer_name(name("kaffi reliability test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def issue(stem: str, alt_names: list[x509.GeneralName]) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(stem))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path

    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_cert, server_key = issue(
        "server",
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    wrong_cert, wrong_key = issue("wrong", [x509.DNSName(WRONG_NAME)])
    return Pki(ca_path, server_cert, server_key, wrong_cert, wrong_key)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _with_openssl(directory: Path) -> Pki:
    ca_key, ca_cert = directory / "ca-key.pem", directory / "ca.pem"
    _openssl(
        "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(ca_key), cwd=directory
    )
    _openssl(
        "req", "-x509", "-new", "-key", str(ca_key), "-sha256", "-days", "1",
        "-subj", "/CN=kaffi reliability test CA", "-out", str(ca_cert),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip

    def issue(stem: str, san: str) -> tuple[Path, Path]:
        key, csr, cert = (directory / f"{stem}{s}" for s in ("-key.pem", ".csr", ".pem"))
        ext = directory / f"{stem}.ext"
        ext.write_text(
            f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"
            "extendedKeyUsage=serverAuth\n"
        )
        _openssl(
            "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=directory
        )
        _openssl(
            "req", "-new", "-key", str(key), "-subj", f"/CN={stem}", "-out", str(csr), cwd=directory
        )
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "1", "-sha256", "-extfile", str(ext), "-out", str(cert),
            cwd=directory,
        )  # fmt: skip
        return cert, key

    server_cert, server_key = issue("server", "IP:127.0.0.1,DNS:localhost")
    wrong_cert, wrong_key = issue("wrong", f"DNS:{WRONG_NAME}")
    return Pki(ca_cert, server_cert, server_key, wrong_cert, wrong_key)
