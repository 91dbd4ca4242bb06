"""Secrets at rest: sealed with Fernet under a key from PROXY_SECRET_KEY or the data dir's key file."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from proxy.config.settings import (
    PASSPHRASE_SALT_BYTES,
    PASSPHRASE_SCRYPT_N,
    PASSPHRASE_SCRYPT_P,
    PASSPHRASE_SCRYPT_R,
)
from proxy.errors import ConfigError
from proxy.security.data_dir import create_once, make_private_dir

SECRET_KEY_ENV = "PROXY_SECRET_KEY"
KEY_FILE_NAME = "secret.key"
SALT_FILE_NAME = "secret.salt"  # beside the database: PROXY_SECRET_KEY as a passphrase is derived with it


def configured_secret_key() -> str | None:
    """PROXY_SECRET_KEY (a Fernet key or a passphrase), the one place the server reads it; None when unset."""
    return os.environ.get(SECRET_KEY_ENV) or None


def has_key(data_dir: Path) -> bool:
    """Whether `data_dir`'s secrets can be opened: a key in the environment or the data dir's key file."""
    return configured_secret_key() is not None or (data_dir / KEY_FILE_NAME).exists()


def load_vault(data_dir: Path) -> Vault:
    """The vault for `data_dir`'s secrets. With a passphrase, it also opens secrets sealed by earlier versions,
    whose key was the passphrase's bare SHA-256, so that they can be sealed again (see `Vault.reseal`)."""
    current = load_fernet(data_dir)
    passphrase = configured_secret_key()
    if passphrase and not is_fernet_key(passphrase):
        return Vault(current, retired=[Fernet(unsalted_sha256_key(passphrase))])
    return Vault(current)


def load_fernet(data_dir: Path) -> Fernet:
    """The current key: PROXY_SECRET_KEY as a Fernet key, or derived from it as a passphrase with scrypt and
    `<data_dir>/secret.salt`; else `<data_dir>/secret.key`. Either file is created once, 0600."""
    env_key = configured_secret_key()
    if env_key and is_fernet_key(env_key):
        return Fernet(env_key.encode())
    make_private_dir(data_dir)
    if env_key:
        return Fernet(passphrase_key(env_key, read_salt(data_dir)))
    return Fernet(create_once(data_dir / KEY_FILE_NAME, Fernet.generate_key()).strip())


def is_fernet_key(value: str) -> bool:
    try:
        Fernet(value.encode())
    except ValueError:
        return False
    return True


def read_salt(data_dir: Path) -> bytes:
    path = data_dir / SALT_FILE_NAME
    salt = create_once(path, os.urandom(PASSPHRASE_SALT_BYTES))
    if len(salt) != PASSPHRASE_SALT_BYTES:
        raise ConfigError(
            f"{path} holds {len(salt)} bytes, not the {PASSPHRASE_SALT_BYTES} of a salt: restore it (the stored"
            " secrets were sealed with it), or remove it and the database to start afresh"
        )
    return salt


def passphrase_key(passphrase: str, salt: bytes) -> bytes:
    """A Fernet key from a passphrase: scrypt, so that every guess at a stolen database costs what start-up does
    (see PASSPHRASE_SCRYPT_N), with the data dir's own salt, so that one guess never tries two data dirs."""
    kdf = Scrypt(salt=salt, length=32, n=PASSPHRASE_SCRYPT_N, r=PASSPHRASE_SCRYPT_R, p=PASSPHRASE_SCRYPT_P)
    return base64.urlsafe_b64encode(kdf.derive(passphrase.encode()))


def unsalted_sha256_key(passphrase: str) -> bytes:
    """How versions before scrypt made a passphrase's key: read only, to seal their secrets again."""
    return base64.urlsafe_b64encode(hashlib.sha256(passphrase.encode()).digest())


class Vault:
    """Encrypts secret strings for the store with the current key; decrypts with it or a retired one."""

    def __init__(self, fernet: Fernet, retired: Sequence[Fernet] = ()) -> None:
        self._fernet = fernet
        self._any = MultiFernet([fernet, *retired])  # the current key is tried first
        self.has_retired = bool(retired)

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._any.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise RuntimeError(UNREADABLE) from exc

    def reseal(self, token: str) -> str | None:
        """`token` sealed again with the current key, or None when it already is."""
        try:
            self._fernet.decrypt(token.encode())
            return None
        except InvalidToken:
            pass
        try:
            return self._any.rotate(token.encode()).decode()
        except InvalidToken as exc:
            raise RuntimeError(UNREADABLE) from exc


UNREADABLE = (
    f"stored secret cannot be decrypted: wrong {SECRET_KEY_ENV}, or the data dir's {KEY_FILE_NAME} or"
    f" {SALT_FILE_NAME} is not the one it was sealed with"
)
