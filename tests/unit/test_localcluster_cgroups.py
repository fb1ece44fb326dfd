"""`down`'s last resort for a node's processes: a frozen one is thawed and killed, a cgroup emptied for good."""

from __future__ import annotations

import os
import sys
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from localcluster import cgroups, procs


def _freezable_cgroup() -> tuple[Path, str, str]:
    """Where a new cgroup of ours can be frozen: (directory, freeze knob, frozen value); v1's freezer or v2."""
    own = {line.split(":", 2)[1]: line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()}
    name = f"pynode-test-{uuid.uuid4().hex[:8]}"
    if "freezer" in own and Path("/sys/fs/cgroup/freezer").is_dir():
        return Path("/sys/fs/cgroup/freezer") / own["freezer"].lstrip("/") / name, "freezer.state", "FROZEN"
    return Path("/sys/fs/cgroup") / own.get("", "/").lstrip("/") / name, "cgroup.freeze", "1"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a cgroup")
def test_a_frozen_process_is_thawed_and_killed_and_its_cgroup_removed():
    directory, knob, frozen = _freezable_cgroup()
    try:
        directory.mkdir()
    except OSError as err:
        pytest.skip(f"cannot make a cgroup here: {err}")
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        (directory / "cgroup.procs").write_text(str(sleeper.pid))
        (directory / knob).write_text(frozen)
        time.sleep(0.2)
        os.kill(sleeper.pid, 9)
        time.sleep(0.3)
        assert cgroups.pids([directory]) == {sleeper.pid}  # SIGKILL alone does not end a frozen process
        assert cgroups.kill_all([directory], timeout=5) == {}
        sleeper.wait(5)
        assert cgroups.pids([directory]) == set()
    finally:
        if sleeper.poll() is None:
            (directory / knob).write_text("THAWED" if knob == "freezer.state" else "0")
            sleeper.kill()
            sleeper.wait()
        for _ in range(20):
            try:
                directory.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)
    assert not directory.exists()


_LEADER_EXITS = """
import ctypes, os, sys, threading, time
threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
sys.stdout.write("ready\\n"); sys.stdout.flush()
ctypes.CDLL(None).syscall({exit_nr}, 0)  # SYS_exit ends the calling thread only: the leader, here
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a cgroup")
def test_a_process_whose_leader_exited_is_killed_and_its_cgroup_removed(tmp_path):
    """Its leader is a zombie, so cgroup.procs names a dead process while another thread still holds the cgroup."""
    exit_nr = {"x86_64": 60, "aarch64": 93}.get(os.uname().machine)
    if exit_nr is None:
        pytest.skip("SYS_exit's number is not known here")
    directory, _, _ = _freezable_cgroup()
    try:
        directory.mkdir()
    except OSError as err:
        pytest.skip(f"cannot make a cgroup here: {err}")
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    (node_dir / cgroups.DIRS_FILE).write_text(f"{directory}\n")
    survivor = subprocess.Popen([sys.executable, "-c", _LEADER_EXITS.format(exit_nr=exit_nr)], stdout=subprocess.PIPE)
    try:
        (directory / "cgroup.procs").write_text(str(survivor.pid))
        assert survivor.stdout.readline() == b"ready\n"
        for _ in range(50):
            if procs.describe(survivor.pid).endswith("state Z"):
                break
            time.sleep(0.05)
        assert procs.describe(survivor.pid).endswith("state Z")
        with pytest.raises(OSError):
            directory.rmdir()  # the thread left behind keeps it busy
        assert cgroups.remove([node_dir], timeout=10) == []
        assert not directory.exists()
        survivor.wait(5)
    finally:
        survivor.kill()
        survivor.wait()
        if directory.exists():
            directory.rmdir()
