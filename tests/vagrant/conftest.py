"""The VM tests' fixtures: with PYNODE_VAGRANT_ATTACH=1 the session does not take the cluster's lock, which
whoever brought the VMs up holds (`python -m localcluster vagrant up` does while it runs)."""

from __future__ import annotations

import os

import pytest

from localcluster import lock, settings


@pytest.fixture(scope="session")
def cluster_lock():
    if os.environ.get("PYNODE_VAGRANT_ATTACH") == "1":
        yield None
        return
    with lock.holding(settings.load(), "the VM tests (make vagrant-test)") as path:
        yield path
