"""Container log rotation on files in a temporary directory, with a stand-in for the CRI reopen call."""

from __future__ import annotations

import asyncio
import gzip
import time

from cri import CRIError, api
from pykubelet.pods.logrotation import LogRotation, clean, log_path, prepare
from pykubelet.pods.podstate import Container

STAMP = time.mktime((2026, 12, 4, 13, 5, 9, 0, 0, -1))


class _Runtime:
    def __init__(self, fail=False):
        self.fail = fail
        self.reopened: list[str] = []

    async def reopen_container_log(self, request):
        self.reopened.append(request.container_id)
        if self.fail:
            raise CRIError("container is not running", socket="test", rpc="ReopenContainerLog")
        return api.ReopenContainerLogResponse()


def _rotation(runtime, tmp_path, **kw):
    return LogRotation(runtime, list, max_size=100, max_files=4, log_root=tmp_path, clock=lambda: STAMP, **kw)


def test_prepare_drops_leftovers_keeps_the_newest_and_gzips_them(tmp_path):
    log = tmp_path / "0.log"
    log.write_text("live\n")
    for name, text in [("0.log.20261201-000000.gz", None), ("0.log.20261202-000000", "two\n"),
                       ("0.log.20261202-000000.gz", None), ("0.log.20261203-000000", "three\n"),
                       ("0.log.20261203-000000.tmp", "half\n")]:
        path = tmp_path / name
        if text is None:
            with gzip.open(path, "wt") as f:
                f.write(name)
        else:
            path.write_text(text)
    prepare(log, max_files=4)  # room for two rotated files besides the live one and the next
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.log", "0.log.20261202-000000.gz",
                                                          "0.log.20261203-000000.gz"]
    with gzip.open(tmp_path / "0.log.20261203-000000.gz", "rt") as f:
        assert f.read() == "three\n"
    assert log.read_text() == "live\n"


def test_rotation_renames_then_reopens(tmp_path):
    log = tmp_path / "0.log"
    log.write_bytes(b"x" * 150)
    runtime = _Runtime()
    assert asyncio.run(_rotation(runtime, tmp_path).rotate_if_needed("c1", log))
    assert runtime.reopened == ["c1"]
    assert not log.exists() and (tmp_path / "0.log.20261204-130509").read_bytes() == b"x" * 150


def test_a_small_log_is_left_alone_and_a_failed_reopen_puts_the_file_back(tmp_path):
    log = tmp_path / "0.log"
    log.write_bytes(b"x" * 50)
    runtime = _Runtime(fail=True)
    rotation = _rotation(runtime, tmp_path)
    assert not asyncio.run(rotation.rotate_if_needed("c1", log)) and runtime.reopened == []
    log.write_bytes(b"x" * 150)
    assert not asyncio.run(rotation.rotate_if_needed("c1", log))
    assert runtime.reopened == ["c1"] and [p.name for p in tmp_path.iterdir()] == ["0.log"]


def test_a_missing_log_is_reopened(tmp_path):
    runtime = _Runtime()
    assert not asyncio.run(_rotation(runtime, tmp_path).rotate_if_needed("c1", tmp_path / "0.log"))
    assert runtime.reopened == ["c1"]


def test_a_round_covers_every_running_container_of_ours(tmp_path):
    labels = {"io.kubernetes.pod.uid": "u1", "io.kubernetes.pod.name": "web", "io.kubernetes.pod.namespace": "ns"}
    ours = Container(id="c1", name="app", attempt=2, state=api.CONTAINER_RUNNING, created_at=0, sandbox_id="s",
                     image="", labels=labels, annotations={})
    foreign = Container(id="c2", name="x", attempt=0, state=api.CONTAINER_RUNNING, created_at=0, sandbox_id="s",
                        image="", labels={}, annotations={})
    path = log_path(ours, tmp_path)
    assert path == tmp_path / "ns_web_u1" / "app" / "2.log" and log_path(foreign, tmp_path) is None
    path.parent.mkdir(parents=True)
    path.write_bytes(b"y" * 200)
    runtime = _Runtime()
    rotation = LogRotation(runtime, lambda: [ours, foreign], max_size=100, max_files=2, workers=2,
                           log_root=tmp_path, clock=lambda: STAMP)
    asyncio.run(rotation.rotate_all())
    assert runtime.reopened == ["c1"]
    assert [p.name for p in path.parent.iterdir()] == ["2.log.20261204-130509"]
    clean(path)
    assert list(path.parent.iterdir()) == []
