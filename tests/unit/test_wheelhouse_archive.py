"""The wheelhouse as one tar, which the ansible pynode role sends to a host instead of the directory."""

from __future__ import annotations

import tarfile

from localcluster import wheels


def test_the_archive_holds_every_wheel_at_its_top_level_owned_by_root(tmp_path):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    (house / "b-1.0-py3-none-any.whl").write_bytes(b"bee")
    (house / "a-2.0-py3-none-any.whl").write_bytes(b"ay")
    (house / "README").write_text("not a wheel")
    (house / "a-2.0-py3-none-any.whl").chmod(0o600)

    path = wheels.archive(house)

    assert path == tmp_path / "wheelhouse.tar"
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["a-2.0-py3-none-any.whl", "b-1.0-py3-none-any.whl"]
        assert {(m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, "root", "root", 0o644)}
        assert tar.extractfile("b-1.0-py3-none-any.whl").read() == b"bee"


def test_a_second_archive_replaces_the_first(tmp_path):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    (house / "a-1.0-py3-none-any.whl").write_bytes(b"one")
    wheels.archive(house)
    (house / "a-1.0-py3-none-any.whl").unlink()
    (house / "a-1.1-py3-none-any.whl").write_bytes(b"two")
    with tarfile.open(wheels.archive(house)) as tar:
        assert tar.getnames() == ["a-1.1-py3-none-any.whl"]
    assert not list(tmp_path.glob("*.tmp"))
