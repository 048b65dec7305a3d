"""Logging set-up: everything to stderr, as text or JSON lines, with secrets redacted."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from dstream.redact import NO_REDACTION, Redactor

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


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        role = getattr(record, "role", None)
        prefix = f"[{role}] " if role else ""
        return f"{stamp} {record.levelname:<7} {prefix}{record.getMessage()}"


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
        return json.dumps(out, ensure_ascii=False)


_filter = _RedactingFilter()


def setup(level: str = "info", fmt: str = "text") -> None:
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    handler.addFilter(_filter)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def set_redactor(redactor: Redactor) -> None:
    _filter.redactor = redactor


def get(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)
