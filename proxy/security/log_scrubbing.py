"""Log output scrubbed of a server's secrets (every encoded form `proxy.security.redaction` knows): the message, and the
traceback and stack a record carries, so that an error can be logged whole (`exc_info`) without leaking one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

from proxy.security.redaction import Redactor

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


class ScrubbingFormatter(logging.Formatter):
    """A `logging.Formatter` whose every piece of output is scrubbed: the line, the traceback, the stack."""

    def __init__(self, redactor: Redactor, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor.redact(super().format(record))

    def formatException(self, ei: ExcInfo) -> str:
        return self.redactor.redact(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return self.redactor.redact(super().formatStack(stack_info))


def scrub_record(record: logging.LogRecord, formatter: ScrubbingFormatter) -> None:
    """Scrub `record` in place. Its traceback is formatted (scrubbed) now, into `exc_text`, the text every
    `logging.Formatter` prints instead of formatting the exception again, so no handler sees it raw."""
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        message = None
    if message is not None:
        cleaned = formatter.redactor.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
    if record.exc_info and record.exc_info[0] is not None:
        record.exc_text = formatter.formatException(record.exc_info)
    elif record.exc_text:
        record.exc_text = formatter.redactor.redact(record.exc_text)
    if record.stack_info:
        record.stack_info = formatter.formatStack(record.stack_info)


def install_log_redaction(redactor: Redactor) -> Callable[[], None]:
    """Scrub every log record of `redactor`'s secrets when it is created, whichever library logs it
    (httpcore's DEBUG lines carry raw headers) and whichever handler prints it, traceback included. Process-wide,
    so the command that owns the process (`proxy serve`) installs it, never the library. Returns the undo."""
    make_record = logging.getLogRecordFactory()
    formatter = ScrubbingFormatter(redactor)

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        scrub_record(record, formatter)
        return record

    def uninstall() -> None:
        if logging.getLogRecordFactory() is redacting_factory:
            logging.setLogRecordFactory(make_record)

    logging.setLogRecordFactory(redacting_factory)
    return uninstall
