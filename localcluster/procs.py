"""Start, find and stop the daemons of the local cluster.

Each daemon is started detached (its own session), logs to its own file under
logs/, and is remembered by a pidfile under run/ that also records its command
line, so that a recycled pid is never mistaken for ours.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .settings import Cluster


class UpError(RuntimeError):
    """`up` cannot go on; the message is the one line the user sees."""


def run_checked(*argv: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run a command to its end, its output captured; with check, a failure is an UpError quoting its output."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise UpError(f"`{' '.join(argv)}` failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def _pidfile(cluster: Cluster, name: str) -> Path:
    return cluster.run / f"{name}.pid"


def log_path(cluster: Cluster, name: str) -> Path:
    return cluster.logs / f"{name}.log"


def excerpt(cluster: Cluster, name: str, limit: int = 15) -> str:
    """The last `limit` warning and error lines (klog's W/E/F) of a daemon's log, for an error message."""
    path = log_path(cluster, name)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as err:
        return f"{path}: {err}"
    picked = [line[:300] for line in lines if line[:1] in ("W", "E", "F")][-limit:]
    return f"last warnings and errors of {path}:\n" + ("\n".join(picked) if picked else "(none)")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[19])


def describe(pid: int) -> str:
    """A process's name and state letter (for a message about one that would not go), or "gone"."""
    stat = _stat(pid)
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        stat = None
    return f"{name} state {stat[0]}" if stat is not None else "gone"


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def running(cluster: Cluster, name: str) -> int | None:
    """The pid of daemon `name` if it is alive and still the process we started.

    The pidfile holds the pid and the process's start time, so a recycled pid
    never passes for ours.
    """
    try:
        pid_text, started_text = _pidfile(cluster, name).read_text().split()[:2]
        pid, started = int(pid_text), int(started_text)
    except (OSError, ValueError):
        return None
    stat = _stat(pid)
    if stat is None or stat[0] == "Z" or stat[1] != started:
        return None
    return pid


def command_line(pid: int) -> list[str] | None:
    """The argv a process runs with, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1]


def daemons(cluster: Cluster) -> list[str]:
    """Names of the daemons that have a pidfile."""
    return sorted(p.stem for p in cluster.run.glob("*.pid")) if cluster.run.is_dir() else []


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def start(
    cluster: Cluster,
    name: str,
    argv: list[str],
    *,
    ports: tuple[tuple[str, int], ...] = (),
    netns: str | None = None,
    cgroup_procs: tuple[Path, ...] = (),
) -> int:
    """Start daemon `name` unless it already runs; returns its pid.

    `netns` runs it inside that network namespace (and only that namespace: the
    mount namespace stays the host's, so mounts it makes are seen by the other
    processes of the node). `cgroup_procs` are cgroup.procs files it joins first.
    """
    pid = running(cluster, name)
    if pid:
        return pid
    for host, port in ports:
        if port_in_use(host, port):
            raise UpError(f"{name}: port {host}:{port} is already in use by another program")
    cluster.logs.mkdir(parents=True, exist_ok=True)
    cluster.run.mkdir(parents=True, exist_ok=True)
    if netns:
        argv = ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]
    log = log_path(cluster, name)

    def join_cgroups() -> None:
        for procs in cgroup_procs:
            procs.write_text("0")

    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True, preexec_fn=join_cgroups if cgroup_procs else None,
        )
    # nsenter execs the daemon, so pid and start time stay those of the daemon.
    stat = _stat(proc.pid)
    _pidfile(cluster, name).write_text(f"{proc.pid} {stat[1] if stat else 0}\n")
    return proc.pid


def wait_healthy(cluster: Cluster, name: str, check: Callable[[], bool], timeout: float = 60) -> None:
    """Wait until `check()` is true; fail with the log's path if the daemon dies or never gets there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running(cluster, name):
            raise UpError(f"{name} exited during start; see {log_path(cluster, name)}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - any failure of a probe just means "not yet"
            pass
        time.sleep(0.2)
    raise UpError(f"{name} did not become healthy within {timeout:.0f}s; see {log_path(cluster, name)}")


def stop(cluster: Cluster, name: str, grace: float = 10) -> None:
    pid = running(cluster, name)
    if pid:
        kill_and_wait([pid], grace)
    _pidfile(cluster, name).unlink(missing_ok=True)


def mentioning(text: str) -> set[int]:
    """Processes whose command line contains `text` (a safety net for `down`)."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.add(int(cmdline.parent.name))
        except OSError:
            continue
    found.discard(os.getpid())
    return found


def with_descendants(pids: set[int]) -> set[int]:
    """`pids` and every process below them (a shim's containers, say)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def kill_and_wait(pids: list[int], grace: float) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            pids = [p for p in pids if alive(p)]
            if not pids:
                return
            time.sleep(0.05)


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None, timeout: float = 120):
    """The pinned kubectl as the cluster admin; its CompletedProcess (text), never raising on a non-zero exit."""
    return subprocess.run([str(cluster.bin / "kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}", *args],
                          input=stdin, capture_output=True, text=True, timeout=timeout)
