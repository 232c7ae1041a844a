"""Trunk passwords, encrypted at rest.

A carrier's digest challenge can only be answered with the password itself, so unlike
extension passwords it cannot be kept as a hash. It is sealed with AES-256-GCM under a
key derived (HKDF-SHA256) from the per-install secret, so a copy of the database alone
reveals nothing. The trunk's tenant and name are bound in as associated data: a sealed
password copied into another trunk's row does not open.

``cryptography`` is imported when a password is sealed or opened: every command opens
the store, few of them touch a trunk's password.
"""

from __future__ import annotations

import base64
import binascii
import os

_VERSION = "v1"
_INFO = b"pbxwarden/trunk-credentials/v1"
_NONCE_LEN = 12


class CredentialError(Exception):
    """A sealed password cannot be opened (another install's secret, or tampering)."""


def trunk_credential_key(secret: bytes) -> bytes:
    """A key of its own, so the nonce and fingerprint keys never double as an encryption key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret)


def _aad(tenant: str, trunk: str) -> bytes:
    return f"trunk\x00{tenant}\x00{trunk}".encode()


def seal_password(key: bytes, password: str, tenant: str, trunk: str) -> str:
    """``v1.<base64url(nonce || ciphertext)>``; a fresh random nonce every time."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(_NONCE_LEN)
    sealed = AESGCM(key).encrypt(nonce, password.encode("utf-8"), _aad(tenant, trunk))
    return f"{_VERSION}.{base64.urlsafe_b64encode(nonce + sealed).decode('ascii')}"


def open_password(key: bytes, token: str, tenant: str, trunk: str) -> str:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    version, _, body = token.partition(".")
    if version != _VERSION:
        raise CredentialError("unknown credential format")
    try:
        raw = base64.urlsafe_b64decode(body.encode("ascii"))
        if len(raw) <= _NONCE_LEN:
            raise CredentialError("truncated credential")
        plain = AESGCM(key).decrypt(raw[:_NONCE_LEN], raw[_NONCE_LEN:], _aad(tenant, trunk))
        return plain.decode("utf-8")
    except (InvalidTag, binascii.Error, UnicodeError, ValueError):
        raise CredentialError(
            "the trunk password cannot be decrypted (was the install secret replaced?)"
        ) from None
