"""Process plumbing: sd_notify datagrams and the /healthz endpoint, over real sockets."""

from __future__ import annotations

import asyncio
import socket

from nodeagent import systemd
from pykubelet.node import healthz


def test_sd_notify_sends_to_the_notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert systemd.notify("READY=1")
        assert listener.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not systemd.notify("READY=1")


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() == 10
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert systemd.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    monkeypatch.delenv("WATCHDOG_PID")
    assert systemd.watchdog_interval() is None


async def _get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data


def test_healthz_answers_ok_and_the_reason_when_unhealthy():
    state = {"ok": True}

    async def scenario():
        server = await healthz.serve("127.0.0.1", 0, lambda: (state["ok"], "node status loop is stuck"))
        port = server.sockets[0].getsockname()[1]
        try:
            good = await _get(port, "/healthz")
            state["ok"] = False
            bad = await _get(port, "/healthz")
            missing = await _get(port, "/other")
        finally:
            server.close()
        return good, bad, missing

    good, bad, missing = asyncio.run(scenario())
    assert good.startswith(b"HTTP/1.1 200 OK") and good.endswith(b"\r\n\r\nok")
    assert bad.startswith(b"HTTP/1.1 500") and b"node status loop is stuck" in bad
    assert missing.startswith(b"HTTP/1.1 404")
