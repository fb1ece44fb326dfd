"""Debian packages unpacked into the cache: reused without apt, and apt kept off the host's own state."""

from __future__ import annotations

import dataclasses

from localcluster import debian, settings


def test_an_unpacked_package_is_reused_without_running_apt(tmp_path, monkeypatch):
    cluster = dataclasses.replace(settings.load(), cache=tmp_path)
    old = tmp_path / "debian" / "trixie" / "busybox-static_1:1.37.0-5"
    new = tmp_path / "debian" / "trixie" / "busybox-static_1:1.37.0-6"
    for path in (old, new):
        path.mkdir(parents=True)
        (path / ".unpacked").write_text("x.deb\n")
    (tmp_path / "debian" / "trixie" / "busybox-static_1:1.38.0-1").mkdir()  # unpacking never finished
    monkeypatch.setattr(debian, "_apt", lambda *a, **k: (_ for _ in ()).throw(AssertionError("apt ran")))
    assert debian.unpacked(cluster, "trixie", "busybox-static") == new


def test_apt_is_pointed_at_a_private_sources_list_and_state(tmp_path, monkeypatch):
    seen = []

    def run(argv, **kwargs):
        seen.append(argv)
        raise RuntimeError("stop here")

    monkeypatch.setattr(debian.subprocess, "run", run)
    try:
        debian._apt(tmp_path, "trixie", "update")
    except RuntimeError:
        pass
    argv = seen[0]
    assert argv[:2] == ["apt-get", "-q"] and argv[-1] == "update"
    assert f"-oDir::Etc::SourceList={tmp_path / 'sources.list'}" in argv
    assert "-oDir::Etc::SourceParts=/dev/null" in argv
    assert f"-oDir::State::Lists={tmp_path / 'lists'}" in argv


def test_a_downloaded_source_tarball_is_reused_without_running_apt(tmp_path, monkeypatch):
    cluster = dataclasses.replace(settings.load(), cache=tmp_path)
    sources = tmp_path / "debian" / "trixie" / "sources"
    sources.mkdir(parents=True)
    (sources / "busybox_1.37.0.orig.tar.bz2").write_bytes(b"")
    (sources / "busybox_1.37.0-6.debian.tar.xz").write_bytes(b"")
    monkeypatch.setattr(debian, "_apt", lambda *a, **k: (_ for _ in ()).throw(AssertionError("apt ran")))
    assert debian.source(cluster, "trixie", "busybox") == sources / "busybox_1.37.0.orig.tar.bz2"
