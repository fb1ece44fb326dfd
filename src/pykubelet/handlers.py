"""Handler actions shared by probes and lifecycle hooks: exec, httpGet, tcpSocket and grpc, each run once.

As upstream's `pkg/probe/*` (what `pkg/kubelet/prober` and `pkg/kubelet/lifecycle` both call), with its
messages: `run_probe` runs one action and says SUCCESS or FAILURE (an answer from the container), or UNKNOWN
when it could not run at all (no handler, an unresolvable port, an exec error that is not a timeout).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit


from cri.h2rpc import Channel, RpcError, StatusCode
from nodeagent import logs

from .pods import envvars
from nodeagent.version import KUBERNETES_VERSION

log = logs.get(__name__)

USER_AGENT = "kube-probe/" + ".".join(KUBERNETES_VERSION.lstrip("v").split(".")[:2])
MAX_OUTPUT = 10 * 1024  # upstream keeps at most 10 KiB of exec output or HTTP response body
MAX_REDIRECTS = 10  # as Go's http.Client: the 10th redirect is an error
MAX_RETRIES = 3  # upstream retries a probe that errored (UNKNOWN) up to this many times in a row

ExecFn = Callable[[list[str], float], Awaitable[tuple[int, bytes]]]


class Result(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    UNKNOWN = "unknown"


@dataclass
class ProbeOutcome:
    result: Result
    message: str
    warning: bool = False  # a success upstream reports as a ProbeWarning event (a redirect to another host)


class _ProbeError(Exception):
    """The probe could not run at all: its outcome is UNKNOWN."""


async def run_probe(probe: dict, *, container: dict, pod_ip: str, exec_fn: ExecFn) -> ProbeOutcome:
    """Run `probe` (a v1.Probe as a dict) once against `container` of a pod at `pod_ip`."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if (action := probe.get("exec")) is not None:
            return await _exec_probe(action, container, exec_fn, timeout)
        if (action := probe.get("httpGet")) is not None:
            return await _http_probe(action, container, _host(action.get("host") or pod_ip), timeout)
        if (action := probe.get("tcpSocket")) is not None:
            host = _host(action.get("host") or pod_ip)
            return await _tcp_probe(host, _resolve_port(action.get("port"), container), timeout)
        if (action := probe.get("grpc")) is not None:
            port = _resolve_port(action.get("port"), {})  # a number only: gRPC probes take no port names
            return await _grpc_probe(_host(pod_ip), port, action.get("service") or "", timeout)
    except _ProbeError as err:
        return ProbeOutcome(Result.UNKNOWN, str(err))
    return ProbeOutcome(Result.UNKNOWN, f"missing probe handler for container {_quote(container.get('name', ''))}: "
                                        "the probe has none of exec, httpGet, tcpSocket, grpc")


# --- exec -------------------------------------------------------------------------------------

async def _exec_probe(action: dict, container: dict, exec_fn: ExecFn, timeout: float) -> ProbeOutcome:
    # Only static env values are expanded, as upstream: a valueFrom variable expands to "".
    static = {e.get("name", ""): e.get("value", "") for e in container.get("env") or []}
    cmd = [envvars.expand(arg, static) for arg in action.get("command") or []]
    try:
        code, output = await exec_fn(cmd, timeout)
    except TimeoutError:  # asyncio.TimeoutError is TimeoutError since 3.11
        return ProbeOutcome(Result.FAILURE, f"command timed out: {_quote(' '.join(cmd))} timed out after "
                                            f"{_duration(timeout)}")
    except Exception as err:  # the runtime could not run it: upstream discards such a result
        return ProbeOutcome(Result.UNKNOWN, f"exec failed: {err or type(err).__name__}")
    text = output[:MAX_OUTPUT].decode("utf-8", errors="replace")
    return ProbeOutcome(Result.SUCCESS if code == 0 else Result.FAILURE, text)


# --- ports, hosts, errors ---------------------------------------------------------------------

def _resolve_port(port: int | str | None, container: dict) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, str):
        named = [p.get("containerPort") for p in container.get("ports") or [] if p.get("name") == port]
        if named:
            port = named[0]
        elif port.isdigit():  # upstream's last resort: a number written as a string
            port = int(port)
        else:
            raise _ProbeError(f"port {_quote(port)} not found: container {_quote(container.get('name', ''))} "
                              "has no port of that name")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise _ProbeError(f"invalid port number: {port}")
    return port


def _host(host: str) -> str:
    if not host:
        raise _ProbeError("the pod has no IP address yet")
    return host


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _dial_error(address: str, host: str, err: OSError) -> str:
    """An error of connect() worded as Go's net.Dial words it."""
    if isinstance(err, socket.gaierror):
        return f"dial tcp: lookup {host}: {err.strerror or err}"
    if isinstance(err, ssl.SSLError):
        return f"tls: {err.reason or err}"
    reason = os.strerror(err.errno) if err.errno else str(err)
    return f"dial tcp {address}: connect: {reason[:1].lower()}{reason[1:]}"


def _quote(text: str) -> str:
    """A string quoted as Go's %q does."""
    return json.dumps(text, ensure_ascii=False)


def _duration(seconds: float) -> str:
    """Seconds as Go prints a time.Duration: 1s, 500ms, 1m30s."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{secs:g}s"
    if minutes or hours:
        text = f"{minutes}m{text}"
    return f"{hours}h{text}" if hours else text


# --- tcpSocket --------------------------------------------------------------------------------

async def _tcp_probe(host: str, port: int, timeout: float) -> ProbeOutcome:
    address = _join(host, port)
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return ProbeOutcome(Result.FAILURE, f"dial tcp {address}: i/o timeout")
    except OSError as err:
        return ProbeOutcome(Result.FAILURE, _dial_error(address, host, err))
    writer.close()
    return ProbeOutcome(Result.SUCCESS, "")


# --- httpGet ----------------------------------------------------------------------------------

_FOLLOWED = {301, 302, 303, 307, 308}
_NO_BODY = {204, 304}


@functools.cache
def _insecure_tls() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # upstream probes skip certificate verification
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _target(path: str) -> str:
    """The request-target for a path (with its query, if any)."""
    path = path.split("#", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    return quote(path, safe="/?&=%:;@!$'()*+,~[]")


def _split(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname or "", port, _target(parts.path + (f"?{parts.query}" if parts.query else ""))


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status code and headers (lower-case names, first value) of a response."""
    while True:
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError(f"malformed HTTP response {lines[0]!r}")
        status = int(rest[:3])
        if not 100 <= status < 200 or status == 101:  # skip informational responses, as Go does
            break
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), value.strip())
    return status, headers


async def _read_body(reader: asyncio.StreamReader, status: int, headers: dict[str, str]) -> bytes:
    """At most MAX_OUTPUT bytes of the body; the rest is left unread."""
    if status in _NO_BODY:
        return b""
    body = b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while len(body) < MAX_OUTPUT:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                break
            take = min(size, MAX_OUTPUT - len(body))
            body += await reader.readexactly(take)
            if take < size:
                break
            await reader.readexactly(2)
        return body
    if "content-length" in headers:
        return await reader.readexactly(min(int(headers["content-length"]), MAX_OUTPUT))
    while len(body) < MAX_OUTPUT and (chunk := await reader.read(MAX_OUTPUT - len(body))):
        body += chunk
    return body


def _canonical(name: str) -> str:
    """A header name as Go's http.Header keeps it: x-my-header -> X-My-Header."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _request_headers(http_headers: list[dict]) -> tuple[list[tuple[str, str]], str]:
    """The probe's headers with upstream's defaults, and the Host header it asks for (or "")."""
    headers = [(_canonical(h.get("name", "")), h.get("value", "")) for h in http_headers]
    names = {n for n, _ in headers}
    headers = ([("User-Agent", USER_AGENT)] if "User-Agent" not in names else []) + headers
    headers += [("Accept", "*/*")] if "Accept" not in names else []
    custom_host = next((v for n, v in headers if n == "Host"), "")
    # An empty User-Agent or Accept means "send none".
    return [(n, v) for n, v in headers if n != "Host" and (v or n not in ("Accept", "User-Agent"))], custom_host


async def _http_probe(action: dict, container: dict, host: str, timeout: float) -> ProbeOutcome:
    """GET the URL; follow redirects on the same host; 200-399 is success (3xx with a warning)."""
    scheme = (action.get("scheme") or "HTTP").lower()
    port = _resolve_port(action.get("port"), container)
    url = f"{scheme}://{_join(host, port)}{_target(action.get('path') or '/')}"
    headers, custom_host = _request_headers(action.get("httpHeaders") or [])
    first_host = urlsplit(url).hostname
    host_header, referer, requests, phase, address = custom_host, "", 0, "dial", ""
    try:
        async with asyncio.timeout(timeout):
            while True:
                scheme, host, port, target = _split(url)
                if scheme not in ("http", "https"):
                    return ProbeOutcome(Result.FAILURE, f'Get "{url}": unsupported protocol scheme "{scheme}"')
                address, phase = _join(host, port), "dial"
                tls = _insecure_tls() if scheme == "https" else None
                reader, writer = await asyncio.open_connection(host, port, ssl=tls,
                                                               server_hostname=host if tls else None)
                try:
                    phase = "headers"
                    lines = [f"GET {target} HTTP/1.1", f"Host: {host_header or address}"]
                    lines += [f"{n}: {v}" for n, v in headers]
                    lines += [f"Referer: {referer}"] if referer and "Referer" not in dict(headers) else []
                    writer.write(("\r\n".join(lines + ["Connection: close", "", ""])).encode())
                    status, response = await _read_head(reader)
                    requests += 1
                    location = response.get("location")
                    if status in _FOLLOWED and location is not None:
                        next_url = urljoin(url, location)
                        if urlsplit(next_url).hostname == first_host:
                            if requests >= MAX_REDIRECTS:
                                return ProbeOutcome(Result.FAILURE, f'Get "{location}": stopped after 10 redirects')
                            # Go keeps a custom Host header only through relative redirects.
                            host_header = custom_host if not urlsplit(location).scheme else ""
                            referer = url if not (url.startswith("https:") and next_url.startswith("http:")) else ""
                            url = next_url
                            continue
                        # A redirect to another host is not followed: upstream's success with a warning.
                    phase = "body"
                    body = (await _read_body(reader, status, response)).decode("utf-8", errors="replace")
                finally:
                    writer.close()
                break
    except TimeoutError:
        if phase == "body":
            return ProbeOutcome(Result.UNKNOWN, "context deadline exceeded "
                                                "(Client.Timeout or context cancellation while reading body)")
        what = f"dial tcp {address}: i/o timeout" if phase == "dial" else "context deadline exceeded"
        return ProbeOutcome(Result.FAILURE, f'Get "{url}": {what} (Client.Timeout exceeded while awaiting headers)')
    except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as err:
        if phase == "body":
            return ProbeOutcome(Result.UNKNOWN, f"reading the response body: {err or type(err).__name__}")
        if phase == "dial" and isinstance(err, OSError):
            reason = _dial_error(address, host, err)
        elif isinstance(err, asyncio.IncompleteReadError):
            reason = "EOF"
        else:
            reason = str(err) or type(err).__name__
        return ProbeOutcome(Result.FAILURE, f'Get "{url}": {reason}')

    if 200 <= status < 300:
        return ProbeOutcome(Result.SUCCESS, body)
    if 300 <= status < 400:
        log.debug("Probe terminated redirects", url=url, status=status)
        return ProbeOutcome(Result.SUCCESS, f"Probe terminated redirects, Response body: {body}", warning=True)
    # Upstream never puts the response body in a failure message (kubernetes#99425).
    return ProbeOutcome(Result.FAILURE, f"HTTP probe failed with statuscode: {status}")


# --- grpc -------------------------------------------------------------------------------------

_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def encode_health_request(service: str) -> bytes:
    """grpc.health.v1.HealthCheckRequest{string service = 1}."""
    data = service.encode()
    return b"\x0a" + _varint(len(data)) + data if data else b""


def decode_health_status(data: bytes) -> int:
    """The status (field 1) of a grpc.health.v1.HealthCheckResponse; unknown fields are skipped."""
    status, i = 0, 0
    while i < len(data):
        key, i = _read_varint(data, i)
        wire = key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
            if key >> 3 == 1:
                status = value
        elif wire == 2:
            length, i = _read_varint(data, i)
            i += length
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return status


def _go_code(code: StatusCode) -> str:
    """A gRPC status code as grpc-go prints it (NotFound, DeadlineExceeded, Canceled)."""
    special = {StatusCode.OK: "OK", StatusCode.CANCELLED: "Canceled"}
    return special.get(code) or "".join(w.capitalize() for w in code.name.split("_"))


async def _grpc_probe(host: str, port: int, service: str, timeout: float) -> ProbeOutcome:
    """Call grpc.health.v1.Health/Check over plaintext; SERVING is success."""
    address = _join(host, port)
    deadline = time.monotonic() + timeout
    channel = Channel(host=host, port=port, user_agent=USER_AGENT)
    try:
        try:
            await channel.connect(deadline)
        except RpcError:
            return ProbeOutcome(Result.FAILURE, f"timeout: failed to connect service {_quote(address)} within "
                                                f"{_duration(timeout)}: context deadline exceeded")
        try:
            answer = await channel.unary(_HEALTH_CHECK, encode_health_request(service),
                                         max(deadline - time.monotonic(), 0.001))
            status = decode_health_status(answer)
        except ValueError as err:
            return ProbeOutcome(Result.FAILURE, f"error: health rpc probe failed: rpc error: code = Internal desc = "
                                                f"cannot parse the response: {err}")
        except RpcError as err:
            if err.code == StatusCode.UNIMPLEMENTED:
                return ProbeOutcome(Result.FAILURE, "error: this server does not implement the grpc health "
                                                    f"protocol (grpc.health.v1.Health): {err.details}")
            if err.code == StatusCode.DEADLINE_EXCEEDED:
                return ProbeOutcome(Result.FAILURE, f"timeout: health rpc did not complete within {_duration(timeout)}")
            return ProbeOutcome(Result.FAILURE, "error: health rpc probe failed: "
                                                f"rpc error: code = {_go_code(err.code)} desc = {err.details}")
    finally:
        await channel.close()
    if status != 1:
        name = _SERVING_STATUS.get(status, str(status))
        return ProbeOutcome(Result.FAILURE, f'service unhealthy (responded with "{name}")')
    return ProbeOutcome(Result.SUCCESS, "service healthy")


