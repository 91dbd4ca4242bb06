"""Secrets at rest (Fernet), and log records scrubbed of a server's secrets (see `proxy.redaction`)."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from proxy.data_dir import create_once, make_private_dir
from proxy.redaction import Redactor

KEY_FILE_NAME = "secret.key"


def load_fernet(data_dir: Path) -> Fernet:
    """The key comes from PROXY_SECRET_KEY, else from `<data_dir>/secret.key` (created once, 0600)."""
    env_key = os.environ.get("PROXY_SECRET_KEY")
    if env_key:
        return Fernet(_as_fernet_key(env_key))
    make_private_dir(data_dir)
    return Fernet(create_once(data_dir / KEY_FILE_NAME, Fernet.generate_key()).strip())


def _as_fernet_key(value: str) -> bytes:
    """Accept a real Fernet key, or derive one from any passphrase."""
    raw = value.encode()
    try:
        Fernet(raw)
        return raw
    except ValueError:
        return base64.urlsafe_b64encode(hashlib.sha256(raw).digest())


class Vault:
    """Encrypts and decrypts secret strings for the store."""

    def __init__(self, fernet: Fernet) -> None:
        self._fernet = fernet

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise RuntimeError("stored secret cannot be decrypted: wrong PROXY_SECRET_KEY or key file") from exc


def _scrub(record: logging.LogRecord, redactor: Redactor) -> None:
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        return
    cleaned = redactor.redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None


def install_log_redaction(redactor: Redactor) -> Callable[[], None]:
    """Scrub every log record of `redactor`'s secrets when it is created, whichever library logs it
    (httpcore's DEBUG lines carry raw headers) and whichever handler prints it. Process-wide, so the
    command that owns the process (`proxy serve`) installs it, never the library. Returns the undo."""
    make_record = logging.getLogRecordFactory()

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        _scrub(record, redactor)
        return record

    def uninstall() -> None:
        if logging.getLogRecordFactory() is redacting_factory:
            logging.setLogRecordFactory(make_record)

    logging.setLogRecordFactory(redacting_factory)
    return uninstall
