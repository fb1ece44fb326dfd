"""The busybox the local images carry behaves as upstream's busybox image where the e2e suite looks."""

from __future__ import annotations

import subprocess

import pytest

from localcluster import images

pytestmark = pytest.mark.integration


def test_the_image_busybox_keeps_every_variable_and_has_the_applets_the_suite_calls(cluster):
    busybox = str(images.busybox_binary(cluster))
    env = subprocess.run(["env", "-i", "data-1=value-1", "PLAIN=x", busybox, "sh", "-c", "env"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert "data-1=value-1" in env and "PLAIN=x" in env  # Debian's sh drops the first
    applets = set(subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split())
    assert {"wget", "nc", "nslookup", "ping", "timeout", "sh", "httpd", "dd", "md5sum", "sysctl"} <= applets
    wget = subprocess.run([busybox, "wget", "-T", "1", "-qO-", "http://127.0.0.1:9/"], capture_output=True, text=True)
    assert wget.returncode == 1 and "can't connect" in wget.stderr  # not the crash of Debian 12's 1.35
    paths = {e.path for e in images.busybox_entries(cluster)}
    assert {"bin/sysctl", "sbin/sysctl", "bin/wget", "usr/bin/wget"} <= paths
