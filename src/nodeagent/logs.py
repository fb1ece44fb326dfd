"""Structured log lines on stderr, in klog's text format, which operators already grep.

    I1121 03:10:00.123456    4242 node.go] "Registered node" node="pynode-n1"

Here the "file" is the module name. Call sites pass a constant message and
key=value pairs: ``log.info("Registered node", node=name)``.
"""

from __future__ import annotations

import logging
import os
import sys
import time

_LEVELS = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E", logging.CRITICAL: "F"}


def _quote(value: object) -> str:
    text = str(value)
    if isinstance(value, BaseException) and not text:
        text = type(value).__name__  # some errors (timeouts, say) have no message of their own
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class _KlogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        seconds = record.created
        stamp = time.strftime("%m%d %H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1e6):06d}"
        pairs = getattr(record, "kv", {})
        text = " ".join([_quote(record.getMessage())] + [f"{k}={_quote(v)}" for k, v in pairs.items()])
        if record.exc_info:
            text += " err=" + _quote(self.formatException(record.exc_info))
        return f"{_LEVELS.get(record.levelno, 'I')}{stamp} {os.getpid():7d} {record.name}] {text}"


class Logger:
    """A logger whose calls take a message and structured key=value pairs."""

    def __init__(self, name: str):
        self._log = logging.getLogger(name.rsplit(".", 1)[-1])

    def _emit(self, level: int, msg: str, kv: dict, exc_info=None) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, msg, extra={"kv": kv}, exc_info=exc_info)

    def debug(self, msg: str, **kv) -> None:
        self._emit(logging.DEBUG, msg, kv)

    def info(self, msg: str, **kv) -> None:
        self._emit(logging.INFO, msg, kv)

    def warning(self, msg: str, **kv) -> None:
        self._emit(logging.WARNING, msg, kv)

    def error(self, msg: str, **kv) -> None:
        self._emit(logging.ERROR, msg, kv)


def get(name: str) -> Logger:
    return Logger(name)


def setup(verbosity: int = 0) -> None:
    """Send every log line to stderr; --v=4 and above also shows debug lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KlogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 4 else logging.INFO)
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "asyncio", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
