"""The local cluster's lock: a second user waits for the first and the file names who holds it."""

from __future__ import annotations

import threading
import time

from localcluster import lock
from localcluster.settings import Cluster


def test_a_second_holder_waits_for_the_first(tmp_path):
    cluster = Cluster(state=tmp_path / "pynode-local", cache=tmp_path / "cache", version="v1.36.3")
    order = []

    def second():
        with lock.holding(cluster, "the second"):
            order.append("second in")

    with lock.holding(cluster, "the first") as path:
        assert path == tmp_path / "pynode-local.lock"
        assert path.read_text().startswith("the first (pid ")
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.3)
        order.append("first out")
    waiter.join(5)
    assert order == ["first out", "second in"]
    assert path.read_text().startswith("the second (pid ")
