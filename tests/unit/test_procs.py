"""Daemon supervision: clear failures for a busy port, a crash, and a daemon that never gets healthy."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from localcluster import procs, settings


@pytest.fixture
def cluster(tmp_path):
    return dataclasses.replace(settings.load(), state=tmp_path)


def test_a_port_in_use_stops_the_start_naming_the_component(cluster):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(procs.UpError, match=rf"^etcd: port 127\.0\.0\.1:{port} is already in use"):
            procs.start(cluster, "etcd", ["sleep", "30"], ports=(("127.0.0.1", port),))
    assert procs.running(cluster, "etcd") is None


def test_a_daemon_that_exits_points_at_its_log(cluster):
    procs.start(cluster, "crasher", ["sh", "-c", "echo boom >&2; exit 3"])
    with pytest.raises(procs.UpError, match="crasher exited during start; see .*/logs/crasher.log"):
        procs.wait_healthy(cluster, "crasher", lambda: False, timeout=10)
    assert "boom" in procs.log_path(cluster, "crasher").read_text()


def test_a_daemon_that_never_gets_healthy_times_out_and_stops(cluster):
    pid = procs.start(cluster, "sleeper", ["sleep", "30"])
    with pytest.raises(procs.UpError, match=r"sleeper did not become healthy within 1s; see .*sleeper.log"):
        procs.wait_healthy(cluster, "sleeper", lambda: False, timeout=1)
    assert procs.running(cluster, "sleeper") == pid
    procs.stop(cluster, "sleeper", grace=2)
    assert procs.running(cluster, "sleeper") is None and not procs.alive(pid)


def test_start_is_idempotent_and_a_recycled_pidfile_is_not_ours(cluster):
    pid = procs.start(cluster, "sleeper", ["sleep", "30"])
    assert procs.start(cluster, "sleeper", ["sleep", "30"]) == pid
    pidfile = cluster.run / "sleeper.pid"
    real = pidfile.read_text()
    pidfile.write_text(f"{pid} 1\n")  # same pid, another start time
    assert procs.running(cluster, "sleeper") is None
    pidfile.write_text(real)
    procs.stop(cluster, "sleeper", grace=2)


def test_an_excerpt_keeps_the_last_warnings_and_errors_of_a_log(cluster):
    path = procs.log_path(cluster, "pyproxy-n1")
    path.parent.mkdir(parents=True)
    path.write_text("I0101 started\n" + "".join(f"W0101 warning {i}\n" for i in range(20)) + "E0101 broken\n")
    text = procs.excerpt(cluster, "pyproxy-n1", limit=3)
    assert text.splitlines()[1:] == ["W0101 warning 18", "W0101 warning 19", "E0101 broken"]
    assert "started" not in text
    assert "No such file" in procs.excerpt(cluster, "missing")
