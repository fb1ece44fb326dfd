"""The node Lease's retry: back-off from 200 ms, capped so the heartbeat returns within ~2 s of the apiserver."""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest

from pykubelet.node import nodelease


class _Api:
    def __init__(self, failures):
        self.failures = failures
        self.calls = []

    async def json(self, method, path, body=None):
        self.calls.append(method)
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError("the apiserver is away")
        return body or {"metadata": {"name": "n1", "namespace": "kube-node-lease"}, "spec": {}}


def test_retries_double_from_200_ms_and_stop_doubling_at_1_6_s():
    api = _Api(failures=8)
    lease = nodelease.NodeLease(api, "n1", "uid", 40)
    sleeps = []

    async def sleep(seconds):
        sleeps.append(seconds)
        if seconds == lease.interval:  # renewed: the test is over
            raise asyncio.CancelledError

    with mock.patch("asyncio.sleep", sleep), pytest.raises(asyncio.CancelledError):
        asyncio.run(lease.run())
    assert sleeps == [0.2, 0.4, 0.8, 1.6, 1.6, 1.6, 1.6, 1.6, 10.0]
    assert lease.renewals == 1
