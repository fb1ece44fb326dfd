"""The event recorder: a repeat within the window becomes a count on the first event; a gone pod's keys go."""

from __future__ import annotations

import asyncio
import json

from pykubelet.pods.events import Recorder


class _Response:
    def __init__(self, status_code):
        self.status_code = status_code

    def raise_for_status(self):
        assert self.status_code < 300


class _Http:
    def __init__(self):
        self.calls = []

    async def post(self, path, content, headers):
        self.calls.append(("POST", path, json.loads(content)))
        return _Response(201)

    async def patch(self, path, content, headers):
        self.calls.append(("PATCH", path, json.loads(content)))
        return _Response(200)


class _Api:
    def __init__(self):
        self.http = _Http()


def pod(uid):
    return {"metadata": {"name": f"p-{uid}", "namespace": "ns", "uid": uid}}


def test_repeats_count_up_and_a_forgotten_pod_leaves_no_key():
    api = _Api()
    recorder = Recorder(api, "node-1")

    async def scenario():
        for uid in ("a", "a", "b"):
            recorder.record(pod(uid), "Warning", "BackOff", "Back-off restarting failed container")
        while not recorder.queue.empty():
            await recorder._send(*recorder.queue.get_nowait())

    asyncio.run(scenario())
    assert [(method, body.get("count")) for method, _, body in api.http.calls] == [("POST", 1), ("PATCH", 2),
                                                                                  ("POST", 1)]
    recorder.forget("a")
    assert {key[0] for key in recorder._seen} == {"b"}
