"""Ed25519 keys and signatures: evidence that does not depend on the hub's database.

The hub signs the head of its audit chain; a lab site signs what it releases (results,
analog bundles). Anyone holding the signer's *public* key checks a signature offline.

Text forms, so keys and signatures travel in JSON, YAML and catalogs:

- a public key is ``ed25519:<base64 of the 32 raw bytes>``;
- a signature is the base64 of its 64 raw bytes;
- a key id is ``<first 16 hex digits of sha256(raw public key)>``, a short name for a key.

A private key lives in a PEM file (PKCS#8, unencrypted) of mode 0600, created on first use and
never stored in a database. Signatures are over bytes: sign :func:`analoglab.experiments.result`'s
canonical JSON (or a manifest's bytes), never over a re-serialised object.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from analoglab.errors import AnalogLabError
from analoglab.files import atomic_write, fsync_dir

__all__ = [
    "PREFIX",
    "SignatureError",
    "key_id",
    "load_or_create_private_key",
    "load_private_key",
    "parse_public_key",
    "public_key_text",
    "sign",
    "verify",
]

PREFIX = "ed25519:"


class SignatureError(AnalogLabError):
    """A key or a signature is malformed, or a signature does not verify."""


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The ``ed25519:<base64>`` text of a key's public half."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PREFIX + base64.b64encode(raw).decode("ascii")


def parse_public_key(text: str) -> Ed25519PublicKey:
    """The public key of an ``ed25519:<base64>`` text; :class:`SignatureError` if malformed."""
    if not isinstance(text, str) or not text.startswith(PREFIX):
        raise SignatureError(f"a public key must look like '{PREFIX}<base64>', not {text!r:.60}")
    try:
        raw = base64.b64decode(text[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"the public key is not valid base64: {exc}") from None
    if len(raw) != 32:
        raise SignatureError(f"an Ed25519 public key has 32 bytes, this one {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def key_id(public: str | Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """A short, stable name of a public key: 16 hex digits of its sha256."""
    text = public if isinstance(public, str) else public_key_text(public)
    raw = parse_public_key(text).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    """The base64 Ed25519 signature of ``data``."""
    return base64.b64encode(key.sign(data)).decode("ascii")


def verify(public: str | Ed25519PublicKey, data: bytes, signature: str) -> None:
    """Check ``signature`` over ``data``; :class:`SignatureError` says why it does not hold."""
    key = parse_public_key(public) if isinstance(public, str) else public
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise SignatureError("the signature is not valid base64") from None
    try:
        key.verify(raw, data)
    except InvalidSignature:
        raise SignatureError(f"the signature does not verify against key {key_id(key)}") from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file; :class:`SignatureError` if it is not one."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SignatureError(f"no signing key at {path}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_or_create_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Load the key at ``path``, or create one there (mode 0600, written atomically)."""
    path = Path(path)
    if path.exists():
        return load_private_key(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole under a private name, then linked into place: link() fails if another
    # process created the key first, and then theirs is the key.
    staged = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.new")
    atomic_write(staged, pem, perms=0o600)
    try:
        os.link(staged, path)
    except FileExistsError:
        return load_private_key(path)
    finally:
        staged.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return key
