"""nodeagent.logs under systemd: the journal with POD/NAMESPACE/CONTAINER fields, stderr otherwise."""

from __future__ import annotations

import logging
import os
import sys
import types

import pytest

from nodeagent import logs


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def fake_journal(monkeypatch):
    sent = []
    journal = types.ModuleType("systemd.journal")
    journal.send = lambda message, **fields: sent.append((message, fields))
    package = types.ModuleType("systemd")
    package.journal = journal
    monkeypatch.setitem(sys.modules, "systemd", package)
    monkeypatch.setitem(sys.modules, "systemd.journal", journal)
    return sent


def journal_stream_is_stderr(monkeypatch, tmp_path):
    stream = open(tmp_path / "stream", "w")
    monkeypatch.setattr(sys, "stderr", stream)
    st = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    return stream


def test_under_systemd_lines_go_to_the_journal_with_fields(monkeypatch, tmp_path, fake_journal, restore_logging):
    stream = journal_stream_is_stderr(monkeypatch, tmp_path)
    monkeypatch.setattr(sys, "argv", ["/usr/bin/kubelet"])
    logs.setup()
    logs.get("pykubelet.pods.podworkers").warning("Pod sync failed", pod="default/web-0", container="app", err="boom")
    stream.flush()
    assert (tmp_path / "stream").read_text() == ""  # nothing on stderr
    [(message, fields)] = fake_journal
    assert message.startswith("W") and message.endswith(
        'podworkers] "Pod sync failed" pod="default/web-0" container="app" err="boom"')
    assert fields == {"SYSLOG_IDENTIFIER": "kubelet", "PRIORITY": "4", "POD": "web-0", "NAMESPACE": "default",
                      "CONTAINER": "app"}


def test_lines_without_a_pod_carry_only_the_priority():
    record = logging.LogRecord("node", logging.INFO, "", 0, "Node is ready", None, None)
    record.kv = {"node": "n1"}
    assert logs.journal_fields(record) == {"PRIORITY": "6"}


def test_without_systemd_python_the_journal_stream_still_gets_klog_lines(monkeypatch, tmp_path, restore_logging):
    stream = journal_stream_is_stderr(monkeypatch, tmp_path)
    monkeypatch.setitem(sys.modules, "systemd", None)  # import fails, as when the extra is not installed
    logs.setup()
    logs.get("node").info("Node is ready", node="n1")
    stream.flush()
    assert (tmp_path / "stream").read_text().rstrip().endswith('node] "Node is ready" node="n1"')


def test_outside_systemd_stderr_is_unchanged(monkeypatch, tmp_path, fake_journal, restore_logging):
    stream = open(tmp_path / "stderr", "w")
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logs.setup()
    logs.get("node").info("Node is ready", node="n1")
    stream.flush()
    assert fake_journal == []
    line = (tmp_path / "stderr").read_text()
    assert line.startswith("I") and line.rstrip().endswith('node] "Node is ready" node="n1"')


def test_a_journal_stream_that_is_not_our_stderr_is_ignored(monkeypatch, tmp_path, fake_journal, restore_logging):
    stream = open(tmp_path / "stderr", "w")
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # inherited from a parent whose stderr was the journal
    logs.setup()
    logs.get("node").info("Node is ready")
    assert fake_journal == []
