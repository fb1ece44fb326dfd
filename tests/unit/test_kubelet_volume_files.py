"""What the kubelet writes into configMap, secret, downwardAPI and projected volumes, and how.

The AtomicWriter's layout and its all-or-nothing switch, payloads from objects and from the pod, fsGroup
ownership and the hostPath type checks — all on a temporary directory, no cluster.
"""

from __future__ import annotations

import base64
import os
import socket
import stat
from pathlib import Path

import pytest

from pykubelet.volumes import atomicwriter, configmaps, downwardapi, hostpath, ownership
from pykubelet.volumes.atomicwriter import FileProjection


def files(**kw):
    return {k.replace("__", "/"): FileProjection(v.encode()) for k, v in kw.items()}


def test_the_writer_lays_out_versions_behind_a_data_link(tmp_path):
    assert atomicwriter.write(tmp_path, files(a="1", sub__b="2"))
    version = os.readlink(tmp_path / "..data")
    assert version.startswith("..") and (tmp_path / version).is_dir()
    assert os.readlink(tmp_path / "a") == "..data/a" and os.readlink(tmp_path / "sub") == "..data/sub"
    assert (tmp_path / "sub" / "b").read_text() == "2"
    assert stat.S_IMODE((tmp_path / version).stat().st_mode) == 0o755
    assert atomicwriter.read(tmp_path) == {"a": b"1", "sub/b": b"2"}


def test_an_unchanged_payload_writes_no_new_version(tmp_path):
    atomicwriter.write(tmp_path, files(a="1"))
    before = os.readlink(tmp_path / "..data")
    (tmp_path / "a").unlink()  # a visible link lost: it comes back without a new version
    assert not atomicwriter.write(tmp_path, files(a="1"))
    assert os.readlink(tmp_path / "..data") == before and (tmp_path / "a").read_text() == "1"


def test_an_update_switches_versions_and_drops_what_left_the_payload(tmp_path):
    atomicwriter.write(tmp_path, files(a="1", gone="x"))
    old = os.readlink(tmp_path / "..data")
    assert atomicwriter.write(tmp_path, files(a="2", new="y"))
    new = os.readlink(tmp_path / "..data")
    assert new != old and not (tmp_path / old).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["..data", new, "a", "new"])
    assert (tmp_path / "a").read_text() == "2" and (tmp_path / "new").read_text() == "y"


def test_a_version_left_half_written_by_a_crash_is_removed_by_the_next_write(tmp_path):
    atomicwriter.write(tmp_path, files(a="1"))
    crashed = tmp_path / "..2026_01_01_00_00_00.123"
    crashed.mkdir()
    (crashed / "a").write_text("half")
    assert (tmp_path / "a").read_text() == "1"  # readers never saw it
    atomicwriter.write(tmp_path, files(a="2"))
    assert not crashed.exists()


def test_modes_and_owner_are_applied_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomicwriter.write(tmp_path, {"k": FileProjection(b"v", 0o640, fs_user=1234)})
    finally:
        os.umask(old)
    target = tmp_path / "..data" / "k"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.stat().st_uid == 1234
    assert os.lstat(tmp_path / "k").st_uid == 1234


@pytest.mark.parametrize("path, message", [
    ("/abs", "must be relative path"),
    ("a/../b", "must not contain '..'"),
    ("..hidden", "must not start with '..'"),
    ("x" * 256, "filenames must be less than or equal to 255 characters"),
    ("", "must not be empty"),
])
def test_bad_paths_are_refused_with_upstreams_text(tmp_path, path, message):
    with pytest.raises(atomicwriter.PayloadError, match=message):
        atomicwriter.write(tmp_path, {path: FileProjection(b"")})
    assert not (tmp_path / "..data").exists()


CONFIGMAP = {"data": {"one": "1", "two": "2"}, "binaryData": {"bin": base64.b64encode(b"\x00\xff").decode()}}


def test_a_configmap_without_items_gives_every_key_with_the_default_mode():
    payload = configmaps.payload("configmap", {}, CONFIGMAP, 0o400)
    assert {k: (v.data, v.mode) for k, v in payload.items()} == {
        "one": (b"1", 0o400), "two": (b"2", 0o400), "bin": (b"\x00\xff", 0o400)}


def test_items_map_keys_to_paths_with_their_own_modes():
    source = {"items": [{"key": "one", "path": "path/to/one", "mode": 0o600}, {"key": "bin", "path": "b"}]}
    payload = configmaps.payload("configmap", source, CONFIGMAP, None)
    assert {k: (v.data, v.mode) for k, v in payload.items()} == {
        "path/to/one": (b"1", 0o600), "b": (b"\x00\xff", 0o644)}


def test_a_missing_key_is_refused_unless_optional():
    source = {"items": [{"key": "nope", "path": "n"}]}
    with pytest.raises(ValueError, match="configmap references non-existent config key: nope"):
        configmaps.payload("configmap", source, CONFIGMAP, None)
    with pytest.raises(ValueError, match="references non-existent secret key: nope"):
        configmaps.payload("secret", source, {"data": {}}, None)
    assert configmaps.payload("configmap", {**source, "optional": True}, CONFIGMAP, None) == {}
    assert configmaps.payload("secret", {"optional": True}, None, None) == {}


def test_secret_values_are_decoded():
    secret = {"data": {"pw": base64.b64encode(b"s3cr\x00t").decode()}}
    assert configmaps.payload("secret", {}, secret, None)["pw"].data == b"s3cr\x00t"
    assert configmaps.not_found("secret", "x") == 'secrets "x" not found'


POD = {"metadata": {"name": "web", "namespace": "ns", "uid": "u-1", "labels": {"b": "2", "a": 'q"uote'},
                    "annotations": {"note": "line\nbreak"}},
       "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"},
                                                           "limits": {"memory": "128Mi"}}}]}}
NODE = {"cpu": "2", "memory": "8Gi"}


def test_downward_api_files_hold_the_pods_fields():
    source = {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                        {"path": "one", "fieldRef": {"fieldPath": "metadata.labels['b']"}, "mode": 0o400},
                        {"path": "./cpu_limit", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu",
                                                                     "divisor": "1m"}},
                        {"path": "mem_request", "resourceFieldRef": {"containerName": "c",
                                                                     "resource": "requests.memory",
                                                                     "divisor": "1Mi"}}]}
    payload = downwardapi.payload(POD, source, None, NODE)
    assert {k: v.data.decode() for k, v in payload.items()} == {
        "name": "web", "labels": 'a="q\\"uote"\nb="2"', "annotations": 'note="line\\nbreak"', "one": "2",
        "cpu_limit": "2000", "mem_request": "64"}
    assert payload["one"].mode == 0o400 and payload["name"].mode == 0o644


def test_downward_api_refuses_fields_it_cannot_read():
    with pytest.raises(ValueError, match="metadata.nope"):
        downwardapi.payload(POD, {"items": [{"path": "x", "fieldRef": {"fieldPath": "metadata.nope"}}]}, None, NODE)


def test_fs_group_gives_the_volume_to_the_group_with_setgid_directories(tmp_path):
    (tmp_path / "d").mkdir(mode=0o700)
    (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "d" / "f").chmod(0o600)
    (tmp_path / "link").symlink_to("d/f")
    ownership.apply(tmp_path, 4321)
    f = (tmp_path / "d" / "f").stat()
    d = (tmp_path / "d").stat()
    assert f.st_gid == 4321 and stat.S_IMODE(f.st_mode) == 0o660
    assert d.st_gid == 4321 and stat.S_IMODE(d.st_mode) == 0o770 | stat.S_ISGID
    assert os.lstat(tmp_path / "link").st_gid == 4321
    (tmp_path / "d" / "f").chmod(0o600)
    ownership.apply(tmp_path, 4321, policy="OnRootMismatch")  # the root already matches: nothing walked
    assert stat.S_IMODE((tmp_path / "d" / "f").stat().st_mode) == 0o600
    ownership.apply(tmp_path, 4321, read_only=True)
    assert stat.S_IMODE((tmp_path / "d" / "f").stat().st_mode) == 0o640


def test_fs_user_is_the_one_user_all_containers_share():
    spec = {"securityContext": {"runAsUser": 1000}, "containers": [{"name": "a"}, {"name": "b"}]}
    assert ownership.fs_user({"spec": spec}) == 1000
    spec["containers"][1]["securityContext"] = {"runAsUser": 2000}
    assert ownership.fs_user({"spec": spec}) is None
    assert ownership.fs_user({"spec": {"containers": [{"name": "a"}]}}) is None


def test_host_path_types(tmp_path):
    made = tmp_path / "made" / "deep"
    hostpath.check(made, "DirectoryOrCreate")
    assert made.is_dir() and stat.S_IMODE(made.stat().st_mode) == 0o755
    created = tmp_path / "file"
    hostpath.check(created, "FileOrCreate")
    assert created.is_file()
    hostpath.check(created, "File")
    hostpath.check(tmp_path, "Directory")
    hostpath.check(tmp_path / "anything", "")
    with pytest.raises(ValueError, match=f"hostPath type check failed: {created} is not a directory"):
        hostpath.check(created, "Directory")
    with pytest.raises(ValueError, match=f"hostPath type check failed: {tmp_path} is not a file"):
        hostpath.check(tmp_path, "FileOrCreate")
    with pytest.raises(ValueError, match="is not a socket file"):
        hostpath.check(created, "Socket")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s"))
    hostpath.check(tmp_path / "s", "Socket")
    sock.close()
    hostpath.check(Path("/dev/null"), "CharDevice")
    with pytest.raises(ValueError, match="/dev/null is not a block device"):
        hostpath.check(Path("/dev/null"), "BlockDevice")
    with pytest.raises(ValueError, match="Weird is an invalid volume type"):
        hostpath.check(created, "Weird")
