"""sd_notify: READY=1 once the node is registered, and watchdog pings when the unit asks for them."""

from __future__ import annotations

import asyncio
import os
import socket

from . import logs

log = logs.get(__name__)


def notify(message: str) -> bool:
    """Send one sd_notify datagram; False when not run by systemd (no NOTIFY_SOCKET)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError as err:
        log.warning("sd_notify failed", message=message, err=err)
        return False
    return True


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC in seconds, if the watchdog is enabled for this very process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2 / 1e6
    except ValueError:
        return None


async def watchdog(healthy) -> None:
    """Ping the watchdog while `healthy()` says so; systemd restarts us when the pings stop."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        if healthy():
            notify("WATCHDOG=1")
        await asyncio.sleep(interval)
