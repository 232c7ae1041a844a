"""What every ``pbxwarden`` command needs from the store without loading SQLAlchemy.

The CLI imports these when it starts (``pbxwarden --help`` must answer at once), so
this module uses the standard library only; :mod:`pbxwarden.store.db` re-exports them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

DEFAULT_TENANT = "default"


class StoreError(Exception):
    """A request the store refuses (duplicate, unknown tenant, weak password)."""


def generate_password() -> str:
    """24 URL-safe characters (144 bits): strong, and typeable into a phone's keypad menu."""
    return secrets.token_urlsafe(18)


def password_fingerprint_key(secret: bytes) -> bytes:
    """The key of SIP password fingerprints, derived from the install secret so that it
    is never the key that signs digest nonces."""
    return hmac.new(secret, b"password-fingerprint", hashlib.sha256).digest()
