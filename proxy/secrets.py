"""Secrets at rest (Fernet) and in flight (a process-wide redactor for free text).

Every credential the process learns is registered with `REDACTOR`, so log lines, error
messages and recorded exchanges can be scrubbed by value, wherever the secret ends up
(e.g. an upstream that echoes the token back in its body).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import threading
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from proxy.settings import MASK, MIN_REDACTABLE_SECRET_LEN

KEY_FILE_NAME = "secret.key"


def load_fernet(data_dir: Path) -> Fernet:
    """The key comes from PROXY_SECRET_KEY, else from `<data_dir>/secret.key` (created 0600)."""
    env_key = os.environ.get("PROXY_SECRET_KEY")
    if env_key:
        return Fernet(_as_fernet_key(env_key))
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEY_FILE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return Fernet(path.read_bytes().strip())
    with os.fdopen(fd, "wb") as f:
        f.write(Fernet.generate_key())
    return Fernet(path.read_bytes().strip())


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


class Redactor:
    """Replaces every registered secret value in a text with the mask."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, *values: str | None) -> None:
        fresh = {v for v in values if v and len(v) >= MIN_REDACTABLE_SECRET_LEN and v not in self._secrets}
        if not fresh:
            return
        with self._lock:
            self._secrets |= fresh
            # Longest first, so a secret that contains another is masked whole.
            alternatives = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in alternatives))

    def redact(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)

    def contains_secret(self, text: str) -> bool:
        pattern = self._pattern
        return bool(pattern and text and pattern.search(text))


REDACTOR = Redactor()


def _scrub(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        return
    cleaned = REDACTOR.redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None


_installed = False


def install_log_redaction() -> None:
    """Scrub every log record when it is created, whichever library logs it (httpcore's DEBUG
    lines carry raw headers) and whichever handler prints it."""
    global _installed
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def redacting_factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        _scrub(record)
        return record

    logging.setLogRecordFactory(redacting_factory)
