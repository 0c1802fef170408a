"""The organisation's receipt-signing keys: Ed25519, one active, old public keys kept.

A keys directory (default ``<data home>/keys``, see :mod:`agi.ops.datahome`) holds, per key::

    <kid>.key   the private key, PKCS#8 PEM, mode 0600 (only the active key has one)
    <kid>.pub   the public key, SubjectPublicKeyInfo PEM
    <kid>.crt   a self-signed X.509 certificate of the public key (the receipt's ``x5c``)
    active      the kid of the key that signs new receipts

The kid is the key's RFC 7638 JWK thumbprint (base64url SHA-256 of
``{"crv":"Ed25519","kty":"OKP","x":…}``): anyone holding the public key can recompute it, so a
key file cannot be swapped for another under the same name unnoticed.

Rotation makes a new active key and deletes the old private key; the old public key and
certificate stay, so receipts signed before the rotation still verify.

Reading never creates anything: :func:`public_keys` on a missing directory is empty.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

__all__ = [
    "ACTIVE_FILE",
    "KeyInfo",
    "KeyStoreError",
    "SigningKey",
    "active_key",
    "certificate_der_b64",
    "create_key",
    "default_keys_dir",
    "kid_of",
    "list_keys",
    "load_public_key_file",
    "public_keys",
    "public_pem",
    "rotate_key",
]

ACTIVE_FILE: Final = "active"
#: the certificate only carries the key (trust comes from the kid being known): ten years
_CERT_LIFETIME: Final = timedelta(days=3653)


class KeyStoreError(Exception):
    """A keys directory that cannot give what was asked (no key, a damaged file)."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The active key: what :mod:`agi.reports.receipt` signs with."""

    kid: str
    private_key: Ed25519PrivateKey
    certificate: x509.Certificate

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One key of a keys directory, for ``keys show``."""

    kid: str
    active: bool
    has_private: bool
    created_at: str | None
    public_pem: str


def default_keys_dir(data_dir: Path) -> Path:
    """``<data home>/keys``."""
    return data_dir / "keys"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def kid_of(public_key: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint of an Ed25519 public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)},
                     separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(jwk.encode("ascii")).digest())


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def certificate_der_b64(cert: x509.Certificate) -> str:
    """The certificate as an ``x5c`` entry: standard base64 of the DER (RFC 7515 §4.1.6)."""
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def _certificate(key: Ed25519PrivateKey, organisation: str, now: datetime) -> x509.Certificate:
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, f"{organisation} consent receipts"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
    ])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + _CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False,
                          crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .sign(key, algorithm=None)
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write a file that must not exist yet, with ``mode`` from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _new_key(directory: Path, organisation: str, now: datetime) -> SigningKey:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    kid = kid_of(key.public_key())
    cert = _certificate(key, organisation, now)
    _write_new(directory / f"{kid}.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), 0o600)
    _write_new(directory / f"{kid}.pub", public_pem(key.public_key()).encode("ascii"), 0o644)
    _write_new(directory / f"{kid}.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    tmp = directory / f".{ACTIVE_FILE}.{os.getpid()}"
    tmp.write_text(kid + "\n", encoding="ascii")
    os.replace(tmp, directory / ACTIVE_FILE)  # the switch to the new key is atomic
    return SigningKey(kid, key, cert)


def create_key(directory: Path, organisation: str, *, now: datetime | None = None) -> SigningKey:
    """The first key of ``directory``; refuses when it already holds one (use rotation)."""
    if (directory / ACTIVE_FILE).exists() or any(directory.glob("*.pub")):
        raise KeyStoreError(
            f"{directory} already holds signing keys; `consent-ivr keys rotate` makes a new one"
        )
    return _new_key(directory, organisation, now or datetime.now(UTC))


def rotate_key(directory: Path, organisation: str, *,
               now: datetime | None = None) -> tuple[SigningKey, str]:
    """A new active key; the old private key is deleted, its public key kept.

    Returns the new key and the old kid.
    """
    old = _active_kid(directory)
    new = _new_key(directory, organisation, now or datetime.now(UTC))
    with contextlib.suppress(FileNotFoundError):
        (directory / f"{old}.key").unlink()
    return new, old


def _active_kid(directory: Path) -> str:
    try:
        kid = (directory / ACTIVE_FILE).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise KeyStoreError(
            f"no signing key in {directory}; create one with `consent-ivr keys create`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyStoreError(f"cannot read {directory / ACTIVE_FILE}: {exc}") from exc
    if not kid:
        raise KeyStoreError(f"{directory / ACTIVE_FILE} is empty")
    return kid


def active_key(directory: Path) -> SigningKey:
    """The key new receipts are signed with, checked against its kid and certificate."""
    kid = _active_kid(directory)
    try:
        key = serialization.load_pem_private_key((directory / f"{kid}.key").read_bytes(), None)
        cert = x509.load_pem_x509_certificate((directory / f"{kid}.crt").read_bytes())
    except FileNotFoundError as exc:
        raise KeyStoreError(f"the active key {kid} is incomplete in {directory}: "
                            f"{Path(exc.filename).name} is missing") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyStoreError(f"the active key {kid} in {directory} is damaged: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyStoreError(f"{directory / (kid + '.key')} is not an Ed25519 key")
    if kid_of(key.public_key()) != kid:
        raise KeyStoreError(f"{directory / (kid + '.key')} holds another key than {kid}")
    if cert.public_key() != key.public_key():
        raise KeyStoreError(f"{directory / (kid + '.crt')} certifies another key than {kid}")
    return SigningKey(kid, key, cert)


def _load_public(data: bytes, where: str) -> Ed25519PublicKey:
    text = data.strip()
    try:
        if text.startswith(b"{"):
            jwk = json.loads(text)
            if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
                raise KeyStoreError(f"{where}: not an Ed25519 JWK")
            raw = base64.urlsafe_b64decode(str(jwk["x"]) + "=" * (-len(str(jwk["x"])) % 4))
            return Ed25519PublicKey.from_public_bytes(raw)
        public: object
        if b"BEGIN CERTIFICATE" in text:
            public = x509.load_pem_x509_certificate(text).public_key()
        else:
            public = serialization.load_pem_public_key(text)
    except KeyStoreError:
        raise
    except (ValueError, KeyError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyStoreError(f"{where}: not a public key (PEM, certificate or JWK): {exc}") from exc
    if not isinstance(public, Ed25519PublicKey):
        raise KeyStoreError(f"{where}: not an Ed25519 public key")
    return public


def load_public_key_file(path: Path) -> Ed25519PublicKey:
    """A public key from a PEM (SubjectPublicKeyInfo), a PEM certificate or a JWK file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from exc
    return _load_public(data, str(path))


def public_keys(directory: Path) -> dict[str, Ed25519PublicKey]:
    """Every public key of ``directory`` by the name it is filed under (missing dir: none).

    The name is not trusted: a verifier compares it with :func:`kid_of` of the key.
    """
    out: dict[str, Ed25519PublicKey] = {}
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.pub")):
        out[path.stem] = _load_public(path.read_bytes(), str(path))
    return out


def list_keys(directory: Path) -> list[KeyInfo]:
    """Every key of ``directory``, active first, then by creation time (newest first)."""
    try:
        active = _active_kid(directory)
    except KeyStoreError:
        active = None
    infos = []
    for kid, public in public_keys(directory).items():
        created = None
        with contextlib.suppress(OSError, ValueError):
            cert = x509.load_pem_x509_certificate((directory / f"{kid}.crt").read_bytes())
            created = (cert.not_valid_before_utc + timedelta(minutes=5)).isoformat()
        infos.append(KeyInfo(kid, kid == active, (directory / f"{kid}.key").exists(), created,
                             public_pem(public)))
    active_first = [k for k in infos if k.active]
    rest = sorted((k for k in infos if not k.active), key=lambda k: k.created_at or "",
                  reverse=True)
    return active_first + rest
