"""Logging set-up: everything to stderr, as text or JSON lines, with secrets redacted.

Text lines carry the time of day on a terminal and the full date elsewhere (a log file of
a detached run, journald, CI), where a line may be read days later. Both formatters keep
exceptions (``exc_info``) and stacks, redacted like the message.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from dstream.redact import NO_REDACTION, Redactor

if TYPE_CHECKING:
    from rich.console import Console

LOGGER_NAME = "dstream"


class _RedactingFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.redactor: Redactor = NO_REDACTION

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = self.redactor(message)
        record.args = None
        return True


_filter = _RedactingFilter()


def _extra(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The record's traceback and stack, redacted: secrets show up in exception messages too."""
    parts = []
    if record.exc_info:
        parts.append(formatter.formatException(record.exc_info))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return _filter.redactor("\n".join(parts))


class _TextFormatter(logging.Formatter):
    def __init__(self, dated: bool = False) -> None:
        super().__init__()
        self.stamp = "%Y-%m-%d %H:%M:%S" if dated else "%H:%M:%S"

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime(self.stamp, time.localtime(record.created))
        role = getattr(record, "role", None)
        prefix = f"[{role}] " if role else ""
        line = f"{stamp} {record.levelname:<7} {prefix}{record.getMessage()}"
        extra = _extra(self, record)
        return f"{line}\n{extra}" if extra else line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("role", "task", "run_id"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        extra = _extra(self, record)
        if extra:
            out["exception"] = extra
        return json.dumps(out, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text", dated: bool | None = None) -> None:
    """Log to stderr. ``dated``: the date in text lines (default: when stderr is not a terminal)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    if dated is None:
        dated = not sys.stderr.isatty()
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter(dated))
    handler.addFilter(_filter)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def set_redactor(redactor: Redactor) -> None:
    _filter.redactor = redactor


def get(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


@functools.cache
def stderr_console() -> Console:
    """The one rich console on stderr that live displays share (the status line, pull
    progress), so that they nest instead of drawing over each other; stdout is data."""
    from rich.console import Console

    return Console(stderr=True)
