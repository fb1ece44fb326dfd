"""The OCI archive builder: reproducible, and laid out as containerd expects."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile

import pytest

from localcluster.images import Entry, Image, build, host_program_entries


def _image(data: bytes = b"#!/bin/sh\necho hi\n") -> Image:
    return Image(
        names=["example.test/tool:1.0", "example.test/tool:latest"],
        entries=[Entry("bin/tool", data), Entry("bin/alias", link="/bin/tool"), Entry("tmp", mode=0o1777)],
        entrypoint=["/bin/tool"], cmd=["--help"],
    )


def _read(archive) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_same_inputs_give_the_same_archive(tmp_path):
    first = build(_image(), tmp_path / "a")
    second = build(_image(), tmp_path / "b")
    assert first.name == second.name
    assert first.read_bytes() == second.read_bytes()
    assert build(_image(b"other"), tmp_path / "a").name != first.name


def test_archive_is_a_valid_oci_layout_naming_every_tag(tmp_path):
    files = _read(build(_image(), tmp_path))
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(files["index.json"])
    names = [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]]
    assert names == ["example.test/tool:1.0", "example.test/tool:latest"]

    manifest = json.loads(files["blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]])
    config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
    assert config["config"]["Entrypoint"] == ["/bin/tool"]
    assert config["config"]["Cmd"] == ["--help"]
    layer_digest = manifest["layers"][0]["digest"]
    assert config["rootfs"]["diff_ids"] == [layer_digest]

    with tarfile.open(fileobj=io.BytesIO(files["blobs/sha256/" + layer_digest.split(":")[1]])) as layer:
        members = {m.name: m for m in layer.getmembers()}
    assert members["bin"].isdir()
    assert members["bin/tool"].mode == 0o755 and members["bin/tool"].mtime == 0
    assert members["bin/alias"].issym() and members["bin/alias"].linkname == "/bin/tool"
    assert members["tmp"].mode == 0o1777


def _image_root(root, entries) -> None:
    """Write `entries` below `root`, as the image's layer would unpack (chroot into it needs root)."""
    for entry in entries:
        target = root / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(entry.data)
        target.chmod(entry.mode)
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")


def test_a_host_program_runs_on_its_own_in_an_image_root(tmp_path):
    entries = host_program_entries("curl")
    assert "usr/bin/curl" in {e.path for e in entries} or "bin/curl" in {e.path for e in entries}
    _image_root(tmp_path, entries)
    program = next(e.path for e in entries if e.path.endswith("bin/curl"))
    out = subprocess.run(["chroot", str(tmp_path), f"/{program}", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("curl "), out.stderr


def test_the_agnhost_image_nc_is_openbsds_and_takes_the_telnet_flag(tmp_path):
    """The Service specs run `nc -v -t -w 2 <service> 80` in agnhost; busybox's nc refuses -t."""
    _image_root(tmp_path, host_program_entries("nc"))
    out = subprocess.run(["chroot", str(tmp_path), "/usr/bin/nc", "-h"], capture_output=True, text=True)
    assert "OpenBSD netcat" in out.stderr + out.stdout
    # -t is accepted; nothing listens on port 1 of the chroot's (the host's) loopback, so it fails to connect.
    refused = subprocess.run(["chroot", str(tmp_path), "/usr/bin/nc", "-v", "-t", "-w", "1", "-z", "127.0.0.1", "1"],
                             capture_output=True, text=True)
    assert "invalid option" not in refused.stderr and "Connection refused" in refused.stderr, refused.stderr


def test_of_two_entries_at_one_path_the_later_is_in_the_layer(tmp_path):
    image = Image(names=["example.test/over:1.0"], entries=[
        Entry("usr/bin/nc", link="/bin/busybox"), Entry("bin/busybox", b"box"), Entry("usr/bin/nc", b"openbsd")])
    files = _read(build(image, tmp_path))
    manifest = json.loads(files["blobs/sha256/" + json.loads(files["index.json"])["manifests"][0]["digest"][7:]])
    layer = files["blobs/sha256/" + manifest["layers"][0]["digest"][7:]]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = [m for m in tar.getmembers() if m.name == "usr/bin/nc"]
        assert len(members) == 1 and members[0].isfile()
        assert tar.extractfile(members[0]).read() == b"openbsd"


def test_the_glibc_dns_querier_tools_run_on_their_own_in_an_image_root(tmp_path):
    """glibc-dns-testing's dig and getent (the DNS specs' probes) carry every library they load."""
    from localcluster.testimages import NSSWITCH

    _image_root(tmp_path, host_program_entries("dig", "getent") + [NSSWITCH])
    (tmp_path / "etc/hosts").write_text("10.1.2.3 querier.example\n")
    version = subprocess.run(["chroot", str(tmp_path), "/usr/bin/dig", "-v"], capture_output=True, text=True)
    assert version.returncode == 0 and "DiG 9." in version.stdout + version.stderr, version.stderr
    found = subprocess.run(["chroot", str(tmp_path), "/usr/bin/getent", "hosts", "querier.example"],
                           capture_output=True, text=True)
    assert found.stdout.split() == ["10.1.2.3", "querier.example"], found.stderr
