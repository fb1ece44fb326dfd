"""Probe actions (handlers) against real servers on 127.0.0.1, and the worker's schedule and thresholds."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import time

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pykubelet import handlers
from pykubelet.handlers import ProbeOutcome, Result, run_probe
from pykubelet.probes import prober as prober_module
from pykubelet.probes.prober import ProbeWorker

IP = "127.0.0.1"
CONTAINER = {"name": "app"}


def run(coro):
    return asyncio.run(coro)


async def no_exec(cmd, timeout):
    raise AssertionError("exec_fn must not be called")


def probe(action: dict, **fields) -> dict:
    return {**action, **fields}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind((IP, 0))
        return s.getsockname()[1]


def reply(status: int, body: bytes = b"", headers: dict | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def http_server(respond, tls: ssl.SSLContext | None = None):
    """A one-request-per-connection HTTP server; `respond(path, headers)` gives the bytes (None: never answer)."""
    seen: list[tuple[str, dict]] = []

    async def handle(reader, writer):
        try:
            lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
            path = lines[0].split(" ")[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            seen.append((path, headers))
            answer = respond(path, headers)
            if answer is None:
                await reader.read()  # never answer; wait for the client to give up
            else:
                writer.write(answer)
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, IP, 0, ssl=tls)
    return server, server.sockets[0].getsockname()[1], seen


def http_probe(port, **get) -> dict:
    return {"httpGet": {"port": port, **get}, "timeoutSeconds": 1}


# --- httpGet -------------------------------------------------------------------------------

def test_http_200_sends_upstream_defaults():
    async def scenario():
        server, port, seen = await http_server(lambda path, h: reply(200, b"ok"))
        async with server:
            outcome = await run_probe(http_probe(port, path="/healthz"), container=CONTAINER, pod_ip=IP,
                                      exec_fn=no_exec)
        return outcome, port, seen

    outcome, port, seen = run(scenario())
    assert outcome == ProbeOutcome(Result.SUCCESS, "ok")
    [(path, headers)] = seen
    assert path == "/healthz"
    assert headers["user-agent"] == "kube-probe/1.36"
    assert headers["accept"] == "*/*"
    assert headers["host"] == f"{IP}:{port}"
    assert headers["connection"] == "close"


def test_http_follows_a_redirect_on_the_same_host():
    def respond(path, headers):
        return reply(302, headers={"Location": "/ready"}) if path == "/" else reply(200, b"ready")

    async def scenario():
        server, port, seen = await http_server(respond)
        async with server:
            return await run_probe(http_probe(port), container=CONTAINER, pod_ip=IP, exec_fn=no_exec), seen

    outcome, seen = run(scenario())
    assert outcome == ProbeOutcome(Result.SUCCESS, "ready")
    assert [path for path, _ in seen] == ["/", "/ready"]
    assert seen[1][1]["user-agent"] == "kube-probe/1.36"


def test_http_redirect_to_another_host_is_a_success_with_a_warning():
    async def scenario():
        server, port, seen = await http_server(
            lambda path, h: reply(301, b"moved", {"Location": f"http://localhost:{closed_port()}/"}))
        async with server:
            return await run_probe(http_probe(port), container=CONTAINER, pod_ip=IP, exec_fn=no_exec), seen

    outcome, seen = run(scenario())
    assert outcome == ProbeOutcome(Result.SUCCESS, "Probe terminated redirects, Response body: moved", warning=True)
    assert len(seen) == 1


def test_http_redirect_loop_stops_after_ten_requests():
    async def scenario():
        server, port, seen = await http_server(lambda path, h: reply(302, headers={"Location": "/again"}))
        async with server:
            return await run_probe(http_probe(port), container=CONTAINER, pod_ip=IP, exec_fn=no_exec), seen

    outcome, seen = run(scenario())
    assert outcome == ProbeOutcome(Result.FAILURE, 'Get "/again": stopped after 10 redirects')
    assert len(seen) == 10


def test_http_500_fails_without_the_body():
    async def scenario():
        server, port, _ = await http_server(lambda path, h: reply(500, b"secret details"))
        async with server:
            return await run_probe(http_probe(port), container=CONTAINER, pod_ip=IP, exec_fn=no_exec)

    assert run(scenario()) == ProbeOutcome(Result.FAILURE, "HTTP probe failed with statuscode: 500")


def test_http_named_port_and_an_unknown_name():
    async def scenario():
        server, port, seen = await http_server(lambda path, h: reply(204))
        container = {"name": "app", "ports": [{"name": "metrics", "containerPort": 1},
                                              {"name": "http", "containerPort": port}]}
        async with server:
            found = await run_probe(http_probe("http"), container=container, pod_ip=IP, exec_fn=no_exec)
            missing = await run_probe(http_probe("admin"), container=container, pod_ip=IP, exec_fn=no_exec)
        return found, missing, seen

    found, missing, seen = run(scenario())
    assert found == ProbeOutcome(Result.SUCCESS, "")
    assert len(seen) == 1
    assert missing.result is Result.UNKNOWN
    assert missing.message == 'port "admin" not found: container "app" has no port of that name'


def test_http_custom_headers_reach_the_server():
    async def scenario():
        server, port, seen = await http_server(lambda path, h: reply(200))
        headers = [{"name": "x-custom-header", "value": "Awesome"}, {"name": "Host", "value": "example.test"},
                   {"name": "Accept", "value": "application/json"}]
        async with server:
            outcome = await run_probe(http_probe(port, path="/x?y=1", httpHeaders=headers),
                                      container=CONTAINER, pod_ip=IP, exec_fn=no_exec)
        return outcome, seen

    outcome, [(path, headers)] = run(scenario())
    assert outcome.result is Result.SUCCESS
    assert path == "/x?y=1"
    assert headers["x-custom-header"] == "Awesome"
    assert headers["host"] == "example.test"
    assert headers["accept"] == "application/json"
    assert headers["user-agent"] == "kube-probe/1.36"


def test_http_user_agent_can_be_replaced_or_removed():
    async def scenario():
        server, port, seen = await http_server(lambda path, h: reply(200))
        async with server:
            for value in ("mine/1", ""):
                await run_probe(http_probe(port, httpHeaders=[{"name": "user-agent", "value": value}]),
                                container=CONTAINER, pod_ip=IP, exec_fn=no_exec)
        return seen

    (_, replaced), (_, removed) = run(scenario())
    assert replaced["user-agent"] == "mine/1"
    assert "user-agent" not in removed


def _self_signed(tmp_path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "probe-test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp_path / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    return context


def test_https_does_not_verify_the_certificate(tmp_path):
    tls = _self_signed(tmp_path)

    async def scenario():
        server, port, seen = await http_server(lambda path, h: reply(200, b"secure"), tls=tls)
        async with server:
            return await run_probe(http_probe(port, scheme="HTTPS"), container=CONTAINER, pod_ip=IP, exec_fn=no_exec)

    assert run(scenario()) == ProbeOutcome(Result.SUCCESS, "secure")


def test_http_timeout_when_the_server_never_answers():
    async def scenario():
        server, port, _ = await http_server(lambda path, h: None)
        async with server:
            began = time.monotonic()
            outcome = await run_probe({**http_probe(port), "timeoutSeconds": 0.3}, container=CONTAINER, pod_ip=IP,
                                      exec_fn=no_exec)
            return outcome, time.monotonic() - began, port

    outcome, took, port = run(scenario())
    assert outcome == ProbeOutcome(Result.FAILURE, f'Get "http://{IP}:{port}/": context deadline exceeded '
                                                   "(Client.Timeout exceeded while awaiting headers)")
    assert 0.25 < took < 1.5


def test_http_connection_refused():
    port = closed_port()
    outcome = run(run_probe(http_probe(port), container=CONTAINER, pod_ip=IP, exec_fn=no_exec))
    assert outcome == ProbeOutcome(Result.FAILURE,
                                   f'Get "http://{IP}:{port}/": dial tcp {IP}:{port}: connect: connection refused')


def test_http_reads_a_chunked_body_up_to_10_kib():
    chunk = b"a" * 4000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5)) + b"0\r\n\r\n"

    async def scenario():
        server, port, _ = await http_server(
            lambda path, h: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        async with server:
            return await run_probe(http_probe(port), container=CONTAINER, pod_ip=IP, exec_fn=no_exec)

    outcome = run(scenario())
    assert outcome.result is Result.SUCCESS and outcome.message == "a" * 10240


# --- tcpSocket -----------------------------------------------------------------------------

def test_tcp_listening_port_and_closed_port():
    async def scenario():
        server = await asyncio.start_server(lambda r, w: w.close(), IP, 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            return await run_probe({"tcpSocket": {"port": port}}, container=CONTAINER, pod_ip=IP, exec_fn=no_exec)

    assert run(scenario()) == ProbeOutcome(Result.SUCCESS, "")
    port = closed_port()
    outcome = run(run_probe({"tcpSocket": {"port": port}}, container=CONTAINER, pod_ip=IP, exec_fn=no_exec))
    assert outcome == ProbeOutcome(Result.FAILURE, f"dial tcp {IP}:{port}: connect: connection refused")


# --- grpc ----------------------------------------------------------------------------------

async def grpc_server(health: bool = True):
    """A grpc.aio server with (or without) grpc.health.v1.Health/Check, speaking raw protobuf bytes."""
    agents: list[str] = []

    async def check(request: bytes, context):
        agents.append(dict(context.invocation_metadata()).get("user-agent", ""))
        service = request[2:].decode()
        if service == "":
            return b"\x12\x03abc\x08\x01"  # an unknown field, then status SERVING
        if service == "sick":
            return b"\x08\x02"
        await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")

    server = grpc.aio.server()
    if health:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)}),))
    port = server.add_insecure_port(f"{IP}:0")
    await server.start()
    return server, port, agents


def test_grpc_health_answers():
    async def scenario():
        server, port, agents = await grpc_server()
        try:
            outcomes = [await run_probe({"grpc": {"port": port, **extra}, "timeoutSeconds": 2}, container=CONTAINER,
                                        pod_ip=IP, exec_fn=no_exec)
                        for extra in ({}, {"service": "sick"}, {"service": "nope"})]
        finally:
            await server.stop(None)
        return outcomes, agents

    (serving, sick, unknown), agents = run(scenario())
    assert serving == ProbeOutcome(Result.SUCCESS, "service healthy")
    assert sick == ProbeOutcome(Result.FAILURE, 'service unhealthy (responded with "NOT_SERVING")')
    assert unknown == ProbeOutcome(Result.FAILURE,
                                   "error: health rpc probe failed: rpc error: code = NotFound desc = unknown service")
    assert all(agent.startswith("kube-probe/1.36") for agent in agents)


def test_grpc_server_without_the_health_service():
    async def scenario():
        server, port, _ = await grpc_server(health=False)
        try:
            return await run_probe({"grpc": {"port": port}, "timeoutSeconds": 2}, container=CONTAINER, pod_ip=IP,
                                   exec_fn=no_exec)
        finally:
            await server.stop(None)

    outcome = run(scenario())
    assert outcome.result is Result.FAILURE
    assert outcome.message.startswith("error: this server does not implement the grpc health protocol "
                                      "(grpc.health.v1.Health): ")


def test_grpc_closed_port_times_out():
    port = closed_port()
    outcome = run(run_probe({"grpc": {"port": port}, "timeoutSeconds": 0.3}, container=CONTAINER, pod_ip=IP,
                            exec_fn=no_exec))
    assert outcome == ProbeOutcome(Result.FAILURE, f'timeout: failed to connect service "{IP}:{port}" within 300ms: '
                                                   "context deadline exceeded")


def test_health_messages_encode_and_decode():
    assert handlers.encode_health_request("") == b""
    assert handlers.encode_health_request("a" * 200) == b"\x0a\xc8\x01" + b"a" * 200
    assert handlers.decode_health_status(b"") == 0
    assert handlers.decode_health_status(b"\x12\x03abc\x08\x02") == 2


# --- exec and the rest ---------------------------------------------------------------------

def fixed_exec(code: int, output: bytes = b"", calls: list | None = None):
    async def exec_fn(cmd, timeout):
        if calls is not None:
            calls.append((cmd, timeout))
        return code, output
    return exec_fn


def test_exec_exit_codes_and_output():
    calls = []
    ok = run(run_probe({"exec": {"command": ["cat", "/tmp/healthy"]}, "timeoutSeconds": 5}, container=CONTAINER,
                       pod_ip=IP, exec_fn=fixed_exec(0, b"fine", calls)))
    assert ok == ProbeOutcome(Result.SUCCESS, "fine")
    assert calls == [(["cat", "/tmp/healthy"], 5.0)]
    bad = run(run_probe({"exec": {"command": ["false"]}}, container=CONTAINER, pod_ip=IP,
                        exec_fn=fixed_exec(1, b"x" * 20000)))
    assert bad == ProbeOutcome(Result.FAILURE, "x" * 10240)


def test_exec_timeout_and_error():
    async def slow(cmd, timeout):
        raise asyncio.TimeoutError

    async def broken(cmd, timeout):
        raise RuntimeError("container not found")

    outcome = run(run_probe({"exec": {"command": ["sleep", "9"]}}, container=CONTAINER, pod_ip=IP, exec_fn=slow))
    assert outcome == ProbeOutcome(Result.FAILURE, 'command timed out: "sleep 9" timed out after 1s')
    outcome = run(run_probe({"exec": {"command": ["true"]}}, container=CONTAINER, pod_ip=IP, exec_fn=broken))
    assert outcome == ProbeOutcome(Result.UNKNOWN, "exec failed: container not found")


def test_exec_expands_static_env():
    calls = []
    container = {"name": "app", "env": [{"name": "FILE", "value": "/tmp/x"},
                                        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    run(run_probe({"exec": {"command": ["cat", "$(FILE)", "$$(FILE)", "$(SECRET)", "$(NONE)", "$("]}},
                  container=container, pod_ip=IP, exec_fn=fixed_exec(0, calls=calls)))
    assert calls[0][0] == ["cat", "/tmp/x", "$(FILE)", "", "$(NONE)", "$("]


def test_probe_without_a_handler_is_unknown():
    outcome = run(run_probe({"periodSeconds": 3}, container=CONTAINER, pod_ip=IP, exec_fn=no_exec))
    assert outcome.result is Result.UNKNOWN and "missing probe handler" in outcome.message


def test_go_durations():
    assert [handlers._duration(s) for s in (1, 0.05, 1.5, 60, 90, 3600)] == ["1s", "50ms", "1.5s", "1m0s", "1m30s",
                                                                           "1h0m0s"]


# --- ProbeWorker ---------------------------------------------------------------------------

PERIOD = 0.02


class Script:
    """An exec_fn that answers with the given exit codes in turn, then `then`; it counts calls."""

    def __init__(self, codes=(), then=0):
        self.codes, self.then, self.calls = list(codes), then, []

    async def __call__(self, cmd, timeout):
        self.calls.append(time.monotonic())
        return (self.codes.pop(0) if self.codes else self.then), b"out"


class Changes:
    """An on_result that records (kind, result, probes run so far) and lets a test wait for them."""

    def __init__(self, script: Script):
        self.script, self.seen, self.event = script, [], asyncio.Event()

    async def __call__(self, kind, result, outcome):
        self.seen.append((kind, result, len(self.script.calls)))
        self.event.set()

    async def wait(self, count: int = 1):
        async with asyncio.timeout(3):
            while len(self.seen) < count:
                self.event.clear()
                await self.event.wait()


def worker(kind: str, script: Script, changes, **fields) -> ProbeWorker:
    spec = {"exec": {"command": ["check"]}, "periodSeconds": PERIOD, **fields}
    return ProbeWorker(kind, spec, container=CONTAINER, pod_ip=lambda: IP, exec_fn=script, on_result=changes)


async def until(condition, timeout: float = 3) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def running(w: ProbeWorker, started_at: float | None = None) -> asyncio.Task:
    return asyncio.create_task(w.run(time.monotonic() if started_at is None else started_at))


def test_just_after_a_kubelet_start_the_first_probe_waits_a_random_part_of_a_period(monkeypatch):
    """As upstream's worker: a restarted kubelet spreads its probes over a period instead of one burst."""
    monkeypatch.setattr(prober_module.random, "random", lambda: 0.75)

    async def first_probe_after(kubelet_started) -> float:
        script = Script()
        spec = {"exec": {"command": ["check"]}, "periodSeconds": 0.4}
        w = ProbeWorker("readiness", spec, container=CONTAINER, pod_ip=lambda: IP, exec_fn=script,
                        on_result=lambda *a: None, kubelet_started=kubelet_started)
        began = time.monotonic()
        task = await running(w)
        await until(lambda: script.calls)
        task.cancel()
        return script.calls[0] - began

    assert run(first_probe_after(time.monotonic())) >= 0.29  # 0.75 of a period
    assert run(first_probe_after(time.monotonic() - 1)) < 0.2  # the kubelet started over a period ago
    assert run(first_probe_after(None)) < 0.2


def test_initial_results():
    for kind, initial in (("readiness", Result.FAILURE), ("liveness", Result.SUCCESS), ("startup", Result.UNKNOWN)):
        assert worker(kind, Script(), lambda *a: None).result is initial


def test_liveness_flips_on_the_third_failure_then_holds_until_reset():
    async def scenario():
        script = Script([1, 1, 0, 1, 1, 1], then=1)
        changes = Changes(script)
        w = worker("liveness", script, changes)
        task = await running(w)
        await changes.wait()
        assert changes.seen == [("liveness", Result.FAILURE, 6)]
        assert w.result is Result.FAILURE and w.last_outcome.message == "out"
        await asyncio.sleep(5 * PERIOD)
        assert len(script.calls) == 6  # on hold: the container is being restarted
        script.then = 0
        w.reset()
        assert w.result is Result.SUCCESS
        await until(lambda: len(script.calls) > 7)
        assert changes.seen == [("liveness", Result.FAILURE, 6)]
        task.cancel()

    run(scenario())


def test_readiness_needs_two_successes_in_a_row():
    async def scenario():
        script = Script([0, 1, 0, 0, 1], then=0)
        changes = []
        w = worker("readiness", script, lambda *a: changes.append((a[0], a[1], len(script.calls))),
                   successThreshold=2, failureThreshold=1)
        task = await running(w)
        await until(lambda: len(changes) >= 3)
        task.cancel()
        return changes

    assert run(scenario())[:3] == [("readiness", Result.SUCCESS, 4), ("readiness", Result.FAILURE, 5),
                                   ("readiness", Result.SUCCESS, 7)]


def test_initial_delay_counts_from_the_container_start():
    async def scenario():
        script = Script()
        w = worker("readiness", script, Changes(script), initialDelaySeconds=0.3)
        started = time.monotonic()
        task = await running(w, started)
        await until(lambda: script.calls)
        task.cancel()
        late = script.calls[0] - started

        script = Script()
        w = worker("readiness", script, Changes(script), initialDelaySeconds=0.3)
        task = await running(w, time.monotonic() - 10)  # a container that started long ago
        await asyncio.sleep(0.1)
        task.cancel()
        return late, len(script.calls)

    late, calls = run(scenario())
    assert 0.29 < late < 1
    assert calls >= 1


def test_startup_gates_liveness_and_readiness():
    async def scenario():
        startup_script, live_script = Script([1, 0]), Script()
        started = asyncio.Event()

        def on_startup(kind, result, outcome):
            if result is Result.SUCCESS:
                started.set()

        startup = worker("startup", startup_script, on_startup, failureThreshold=5)
        live_changes = Changes(live_script)
        live = ProbeWorker("liveness", {"exec": {"command": ["live"]}, "periodSeconds": PERIOD}, container=CONTAINER,
                           pod_ip=lambda: IP, exec_fn=live_script, on_result=live_changes, started=started)
        live_task = await running(live)
        await asyncio.sleep(5 * PERIOD)
        assert live_script.calls == [] and live.result is Result.SUCCESS
        startup_task = await running(startup)
        async with asyncio.timeout(3):
            await started.wait()
        assert startup.result is Result.SUCCESS
        await until(lambda: len(live_script.calls) >= 3)
        assert len(startup_script.calls) == 2  # a started container's startup probe stops
        live_task.cancel()
        startup_task.cancel()

    run(scenario())


def test_probe_errors_are_not_counted():
    async def scenario():
        changes = []
        w = ProbeWorker("liveness", {"tcpSocket": {"port": "nope"}, "periodSeconds": PERIOD, "failureThreshold": 1},
                        container=CONTAINER, pod_ip=lambda: IP, exec_fn=no_exec, on_result=lambda *a: changes.append(a))
        task = await running(w)
        await until(lambda: w.last_outcome is not None)
        await asyncio.sleep(5 * PERIOD)
        task.cancel()
        return w, changes

    w, changes = run(scenario())
    assert changes == [] and w.result is Result.SUCCESS
    assert w.last_outcome.result is Result.UNKNOWN and "not found" in w.last_outcome.message


def test_success_threshold_must_be_one_for_liveness_and_startup():
    for kind in ("liveness", "startup"):
        with pytest.raises(ValueError):
            worker(kind, Script(), None, successThreshold=2)
    worker("readiness", Script(), None, successThreshold=2)
