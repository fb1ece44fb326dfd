"""The kubelet API: HTTPS on address:port (default 0.0.0.0:10250), and the read-only port when set.

aiohttp serves it: a well-kept asyncio HTTP server with TLS, keep-alive and chunked
streaming; exec/attach/port-forward take the connection over after the upgrade
(see streaming.py).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from nodeagent import logs, retry

from . import auth, routes, tls

log = logs.get(__name__)


class KubeletServer:
    def __init__(self, host, api, node_name: str, ips: list[str]):
        self.host = host
        self.config = host.config
        self.api = api
        metrics = getattr(host, "metrics", None)
        self.certificate = tls.ServingCertificate(self.config, node_name, ips,
                                                  metrics.serving_certificate if metrics is not None else None)
        self.authenticator = auth.Authenticator(self.config.authentication, lambda: api.http)
        self.authorizer = auth.Authorizer(self.config.authorization, node_name, lambda: api.http)
        self.runners: list[web.AppRunner] = []

    async def run(self) -> None:
        """Serve until cancelled. A failure (a port in use, a certificate that cannot be loaded) is logged
        at once and the server started again with back-off; pods are not affected."""
        await retry.until_done(self._serve, log, "The kubelet API server failed; starting it again", maximum=30)

    async def _serve(self) -> None:
        """Serve until cancelled; a renewed serving certificate is loaded without a restart."""
        config = self.config
        try:
            if config.read_only_port:
                await self._start(routes.build(self.host, None, None, read_only=True), config.read_only_port, None)
            files = self.certificate.current()
            if files is None:
                log.info("Waiting for a signed serving certificate", signer=tls.SERVING_SIGNER)
                files = await self.certificate.obtain(self.api.http)
            ctx = tls.context(config, *files)
            await self._start(routes.build(self.host, self.authenticator, self.authorizer), config.port, ctx)
            log.info("Serving the kubelet API", address=f"{config.address}:{config.port}", cert=files[0])
            if not self.certificate.bootstrap:
                await asyncio.Event().wait()
            rotation = asyncio.create_task(self.certificate.rotate(self.api), name="serving-certificate-rotation")
            try:
                while True:
                    await self.certificate.renewed.wait()
                    self.certificate.renewed.clear()
                    files = self.certificate.current()
                    if files:
                        ctx.load_cert_chain(str(files[0]), str(files[1]))  # new handshakes use it
                        log.info("Loaded renewed serving certificate", cert=files[0])
            finally:
                rotation.cancel()
        finally:
            for runner in self.runners:
                await runner.cleanup()
            self.runners.clear()

    async def _start(self, app: web.Application, port: int, ssl_context) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
        await runner.setup()
        self.runners.append(runner)
        await web.TCPSite(runner, self.config.address, port, ssl_context=ssl_context).start()
