"""GET /containerLogs/{namespace}/{pod}/{container}: a container's log file, as `kubectl logs` reads it.

Query parameters are upstream's PodLogOptions: follow, previous, timestamps, tailLines,
limitBytes, sinceSeconds, sinceTime, stream (Stdout, Stderr or All). The answer is streamed
(chunked); a followed log ends when the container stops running or the client goes away.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp import web

from cri import api
from cri.logs import follow_log_batches, parse_timestamp

from ..pods.runtime_config import pod_log_directory

FOLLOW_CHECK = 0.5  # seconds between checks that a followed container still runs
_TRUE = {"1", "t", "T", "true", "TRUE", "True"}


def _bool(query, name: str) -> bool:
    return query.get(name, "false") in _TRUE


def _int(query, name: str) -> int | None:
    text = query.get(name)
    if text in (None, ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise web.HTTPBadRequest(text=f"invalid {name} {text!r}: not an integer") from None


def log_options(query) -> dict:
    """The reader's options from PodLogOptions query parameters; 400 on a bad value."""
    since_ns = None
    since_seconds = _int(query, "sinceSeconds")
    if since_seconds is not None:
        since_ns = time.time_ns() - since_seconds * 1_000_000_000
    elif query.get("sinceTime"):
        try:
            since_ns = parse_timestamp(query["sinceTime"])
        except ValueError as err:
            raise web.HTTPBadRequest(text=str(err)) from None
    stream = {"Stdout": "stdout", "Stderr": "stderr", "All": None, None: None, "": None}.get(query.get("stream"), "?")
    if stream == "?":
        raise web.HTTPBadRequest(text=f"invalid stream {query.get('stream')!r}: must be Stdout, Stderr or All")
    return {"follow": _bool(query, "follow"), "previous": _bool(query, "previous"),
            "timestamps": _bool(query, "timestamps"), "tail": _int(query, "tailLines"),
            "limit": _int(query, "limitBytes"), "since_ns": since_ns, "stream": stream}


def _waiting_reason(view: dict | None, container: str) -> str:
    status = (view or {}).get("status") or {}
    for entry in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
        if entry.get("name") == container:
            return ((entry.get("state") or {}).get("waiting") or {}).get("reason") or "ContainerCreating"
    return "ContainerCreating"


async def container_logs(request: web.Request, host) -> web.StreamResponse:
    info = request.match_info
    namespace, pod_name, container = info["namespace"], info["pod"], info["container"]
    found = host.find_pod(namespace, pod_name)
    if found is None:
        raise web.HTTPNotFound(text=f'pod "{namespace}"/"{pod_name}" does not exist\n')
    pod, view = found
    spec = pod.get("spec") or {}
    names = {c["name"] for key in ("containers", "initContainers", "ephemeralContainers")
             for c in spec.get(key) or []}
    if container not in names:
        raise web.HTTPNotFound(text=f'container "{container}" not found in pod "{pod_name}"\n')
    options = log_options(request.query)
    rt = host.runtime(pod["metadata"]["uid"])
    record = rt.previous(container) if options["previous"] else rt.latest(container)
    if record is None:
        if options["previous"]:
            raise web.HTTPBadRequest(text=f'previous terminated container "{container}" in pod "{pod_name}" not found')
        raise web.HTTPBadRequest(text=f'container "{container}" in pod "{pod_name}" is waiting to start: '
                                      f'{_waiting_reason(view, container)}')
    path = Path(pod_log_directory(pod)) / container / f"{record.attempt}.log"
    if not path.exists():
        raise web.HTTPBadRequest(text=f'failed to try resolving symlinks in path "{path}": '
                                      "lstat: no such file or directory")

    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    stop = asyncio.Event()
    follow = options["follow"] and record.state == api.CONTAINER_RUNNING
    if not follow:
        stop.set()
    watcher = asyncio.create_task(_until_stopped(host, pod["metadata"]["uid"], record.id, stop)) if follow else None
    left = options["limit"]
    try:
        async for batch in follow_log_batches(path, stream=options["stream"], since=options["since_ns"],
                                              tail=options["tail"], stop=stop):
            # One write per read of the file (up to 256 KiB of lines), not one per line.
            if options["timestamps"]:
                lines = [e.timestamp.encode() + b" " + e.content + (b"" if e.partial else b"\n") for e in batch]
            else:
                lines = [e.content if e.partial else e.content + b"\n" for e in batch]
            chunk = b"".join(lines)
            if left is not None:
                chunk = chunk[:left]
                left -= len(chunk)
            await response.write(chunk)
            if left is not None and left <= 0:
                break
    finally:
        if watcher is not None:
            watcher.cancel()
    await response.write_eof()
    return response


async def _until_stopped(host, uid: str, container_id: str, stop: asyncio.Event) -> None:
    """Set `stop` once the followed container no longer runs (or was replaced)."""
    while not stop.is_set():
        await asyncio.sleep(FOLLOW_CHECK)
        if not any(c.id == container_id for c in host.runtime(uid).running):
            stop.set()
