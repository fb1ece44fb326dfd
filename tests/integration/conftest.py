"""Fixtures of the integration tests: `namespace`, a throw-away namespace per test module."""

from __future__ import annotations

import time
import uuid

import pytest
from lightkube.resources.core_v1 import Namespace, ServiceAccount


@pytest.fixture(scope="module")
def namespace(admin, node):
    name = f"pods-{uuid.uuid4().hex[:6]}"
    admin.create(Namespace.from_dict({"metadata": {"name": name}}))
    deadline = time.monotonic() + 30  # the controller-manager creates the default ServiceAccount
    while time.monotonic() < deadline:
        try:
            admin.get(ServiceAccount, "default", namespace=name)
            break
        except Exception:  # noqa: BLE001
            time.sleep(0.5)
    yield name
    admin.delete(Namespace, name)
