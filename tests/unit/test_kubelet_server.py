"""The kubelet API server's own lifecycle: a failure to serve is logged and retried, not silent."""

from __future__ import annotations

import asyncio
import socket
import ssl

from pykubelet.config.kubeletconfig import parse
from pykubelet.server import KubeletServer


class _Host:
    def __init__(self, config):
        self.config = config

    def healthy(self):
        return True, ""


def _free_port() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def test_a_port_in_use_is_retried_until_it_frees(tmp_path, caplog):
    busy, port = _free_port()
    (tmp_path / "config.yaml").write_text(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
        f"address: 127.0.0.1\nport: {port}\nreadOnlyPort: 0\n"
        "authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}\n"
        "authorization: {mode: AlwaysAllow}\n")
    config = parse([f"--config={tmp_path / 'config.yaml'}", f"--cert-dir={tmp_path / 'pki'}",
                    f"--root-dir={tmp_path / 'root'}"])

    async def scenario() -> bytes:
        server = KubeletServer(_Host(config), api=None, node_name="n1", ips=["127.0.0.1"])
        task = asyncio.create_task(server.run())
        await asyncio.sleep(0.3)
        assert not task.done()  # still trying, not dead
        busy.close()
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        try:
            for _ in range(50):
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await reader.read()
            writer.close()
            return answer
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    answer = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
    failures = [r for r in caplog.records if r.getMessage() == "The kubelet API server failed; starting it again"]
    assert failures and "address already in use" in str(failures[0].kv["err"]).lower()
