"""Structured log lines on stderr, in klog's text format, which operators already grep.

    I1121 03:10:00.123456    4242 node.go] "Registered node" node="pynode-n1"

Here the "file" is the module name. Call sites pass a constant message and
key=value pairs: ``log.info("Registered node", node=name)``.

Under systemd (stderr is the journal's stream) and with systemd-python installed (``pynode[systemd]``),
each line goes to the journal instead, with the same text as MESSAGE and the fields POD, NAMESPACE and
CONTAINER where the line names them, so ``journalctl -u kubelet POD=web-0`` finds a pod's lines.
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


# klog severities as syslog priorities, for the journal's PRIORITY field.
_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def journal_fields(record: logging.LogRecord) -> dict[str, str]:
    """The journal fields of one line beyond its text: POD and NAMESPACE from pod="<namespace>/<name>"
    (klog's object reference, as upstream logs pods), CONTAINER from container=, and the priority."""
    pairs = getattr(record, "kv", {})
    fields = {"PRIORITY": str(_PRIORITIES.get(record.levelno, 6))}
    pod = pairs.get("pod")
    if isinstance(pod, str) and pod:
        namespace, _, name = pod.rpartition("/")
        fields["POD"] = name
        if namespace:
            fields["NAMESPACE"] = namespace
    if pairs.get("namespace"):
        fields["NAMESPACE"] = str(pairs["namespace"])
    if pairs.get("container"):
        fields["CONTAINER"] = str(pairs["container"])
    return fields


class _JournalHandler(logging.Handler):
    """Each line to the journal as MESSAGE (the same klog text stderr would carry) plus journal_fields."""

    def __init__(self, send, identifier: str):
        super().__init__()
        self._send = send
        self._identifier = identifier

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send(self.format(record), SYSLOG_IDENTIFIER=self._identifier, **journal_fields(record))
        except Exception:  # noqa: BLE001 - logging must never take the agent down
            self.handleError(record)


def stderr_is_journal() -> bool:
    """True when systemd connected our stderr to the journal ($JOURNAL_STREAM names stderr's device:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        return False


def _journal_send():
    """systemd-python's journal.send (the optional extra pynode[systemd]), or None when it is not installed."""
    try:
        from systemd import journal
    except ImportError:
        return None
    return journal.send


def setup(verbosity: int = 0) -> None:
    """Send every log line to stderr, or under systemd to the journal with structured fields when
    systemd-python is installed; --v=4 and above also shows debug lines."""
    send = _journal_send() if stderr_is_journal() else None
    if send is not None:
        handler: logging.Handler = _JournalHandler(send, os.path.basename(sys.argv[0] or "") or "pynode")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KlogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 4 else logging.INFO)
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "asyncio", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
