"""Container log rotation on the local node (containerLogMaxSize 1Mi, checked every 3 s): a chatty container's
log is rotated and gzipped, at most containerLogMaxFiles files stay, `kubectl logs -f` reads on across every
rotation and plain `kubectl logs` reads the live file, as upstream's."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.pods import container, make_pod, wait_pod

pytestmark = pytest.mark.integration

BURSTS, PER_BURST = 5, 16_000  # 60-byte lines: about 0.9 MiB a burst, 4 s apart
PAD = "p" * 44
SCRIPT = (f"sleep 3; i=0; b=0; while [ $b -lt {BURSTS} ]; do j=0; while [ $j -lt {PER_BURST} ]; do "
          f"printf 'line %08d {PAD}\\n' $i; i=$((i+1)); j=$((j+1)); done; b=$((b+1)); sleep 4; done; "
          "echo done-writing; exec sleep 3600")


def test_a_chatty_log_rotates_and_logs_follow_reads_across(cluster, admin, node, namespace):
    admin.create(make_pod(node, namespace, "chatty", [container(name="talk", command=["sh", "-c", SCRIPT])]))
    pod = wait_pod(admin, namespace, "chatty", lambda p: p.status.phase == "Running", what="Running")
    follower = subprocess.Popen([str(cluster.bin / "kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}",
                                 "-n", namespace, "logs", "-f", "chatty"], stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(180, follower.kill)  # a stream that stalls ends the test, not the suite
    watchdog.start()
    try:
        lines = []
        for line in follower.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("done-writing"):
                break
    finally:
        watchdog.cancel()
        follower.kill()
        follower.wait()
    total = BURSTS * PER_BURST
    assert lines[-1] == "done-writing", lines[-3:]
    numbers = [int(line.split()[1]) for line in lines[:-1]]
    assert numbers == list(range(total)), "logs -f lost or repeated lines across a rotation"

    directory = Path("/var/log/pods") / f"{namespace}_chatty_{pod.metadata.uid}" / "talk"
    time.sleep(4)  # one more check: the last rotation's predecessor is compressed by then
    names = sorted(p.name for p in directory.iterdir())
    rotated = [n for n in names if n.startswith("0.log.")]
    assert "0.log" in names and rotated, names
    assert len(names) <= 5, names  # containerLogMaxFiles (default 5), the live file included
    assert any(n.endswith(".gz") for n in rotated), names
    assert not any(n.endswith(".tmp") for n in names), names

    plain = subprocess.run([str(cluster.bin / "kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}", "-n",
                            namespace, "logs", "chatty"], capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0, plain.stderr
    read = plain.stdout.splitlines()
    assert read[-1] == "done-writing"
    # Only the live file, begun at the last rotation: the first lines written are in rotated files.
    assert len(read) < total and f"line {0:08d} {PAD}" not in read, read[:2]
