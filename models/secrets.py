"""Secret fields: encrypted at rest with the deployment's key, never shown by the API.

An :class:`EncryptedField` stores Fernet tokens (AES-128-CBC with an
HMAC-SHA256, from ``cryptography``) and hands the plaintext to Python code.
The key comes from ``THREEPORT_ENCRYPTION_KEY``, read at the process's edge
(the API's and the workers' entry points call :func:`configure`): one or more
Fernet keys, comma-separated. The first encrypts; every one decrypts, so a
key is rotated by putting the new key first and keeping the old one until
every row has been rewritten.

Without a key, reading or writing a secret field raises ConfigurationError
(the rest of the control plane works): a secret is never stored in clear.
"""

from __future__ import annotations

from typing import Optional

import peewee
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import ConfigurationError

__all__ = ["EncryptedField", "configure", "generate_key", "is_configured", "ENV_VAR"]

ENV_VAR = "THREEPORT_ENCRYPTION_KEY"

_cipher: Optional[MultiFernet] = None


def generate_key() -> str:
    """A new random key, in the form ``THREEPORT_ENCRYPTION_KEY`` takes."""
    return Fernet.generate_key().decode()


def configure(keys: Optional[str]) -> None:
    """Use ``keys`` (comma-separated Fernet keys, newest first) for secret fields; None or empty forgets them.

    Raises ConfigurationError when a key is not a valid Fernet key.
    """
    global _cipher
    parts = [part.strip() for part in (keys or "").split(",") if part.strip()]
    if not parts:
        _cipher = None
        return
    try:
        _cipher = MultiFernet([Fernet(part.encode()) for part in parts])
    except (ValueError, TypeError):
        raise ConfigurationError(
            f"{ENV_VAR} must be Fernet keys (32 url-safe base64-encoded bytes each), comma-separated"
        ) from None


def is_configured() -> bool:
    """Whether secret fields can be read and written."""
    return _cipher is not None


def _require_cipher() -> MultiFernet:
    if _cipher is None:
        raise ConfigurationError(f"{ENV_VAR} is not set: secret fields can be neither stored nor read")
    return _cipher


class EncryptedField(peewee.TextField):
    """A text field stored encrypted; the API never returns it (see :mod:`models.schema`)."""

    secret = True

    def db_value(self, value):
        if value is None:
            return None
        return _require_cipher().encrypt(str(value).encode()).decode()

    def python_value(self, value):
        if value is None:
            return None
        try:
            return _require_cipher().decrypt(value.encode()).decode()
        except InvalidToken:
            raise ConfigurationError(
                f"field {self.name!r} of {self.model.__name__} was encrypted with a key {ENV_VAR} does not hold"
            ) from None
