"""Build container images locally as OCI image archives, and import them into containerd.

No registry is reachable, so every image a pod needs is made here from files on
this machine: an `Image` lists the files of its single layer and its runtime
config, `build()` writes a reproducible OCI archive (same inputs, same digest)
into the cache, and `import_archive()` loads it into a containerd's `k8s.io`
namespace under every name in `Image.names`. Add an image by adding a function
to CATALOG; `up` imports all of those into every node. Images only a test
fixture needs (metrics-server) are in ON_DEMAND, built and imported by that
fixture.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import busybox, debian
from .procs import UpError
from .settings import Cluster, coredns_version, metrics_server_version


@dataclass(frozen=True)
class Entry:
    """One path in the layer: a file (data), a directory (neither), or a symlink (link)."""

    path: str
    data: bytes | None = None
    mode: int = 0o755
    link: str | None = None


@dataclass
class Image:
    names: list[str]
    entries: list[Entry]
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    workdir: str = ""
    user: str = ""
    stop_signal: str = ""  # what containerd stops the container with; SIGTERM when empty


def _layer(entries: list[Entry]) -> bytes:
    """A tar layer with fixed owners and times, so the digest depends on content only. Of two entries at one
    path the later wins, as in a Dockerfile (a host program over busybox's applet of the same name)."""
    last = {entry.path.strip("/"): entry for entry in entries}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        seen = set()
        for entry in sorted(last.values(), key=lambda e: e.path.strip("/")):
            parts = entry.path.strip("/").split("/")
            for i in range(1, len(parts)):  # parent directories first
                parent = "/".join(parts[:i])
                if parent not in seen:
                    seen.add(parent)
                    tar.addfile(_info(parent, tarfile.DIRTYPE, 0o755))
            name = "/".join(parts)
            if name in seen:
                continue
            seen.add(name)
            if entry.link is not None:
                info = _info(name, tarfile.SYMTYPE, 0o777)
                info.linkname = entry.link
                tar.addfile(info)
            elif entry.data is None:
                tar.addfile(_info(name, tarfile.DIRTYPE, entry.mode))
            else:
                info = _info(name, tarfile.REGTYPE, entry.mode)
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return buf.getvalue()


def _info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
    return info


def _blob(blobs: dict[str, bytes], data: bytes, media_type: str) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _json(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build(image: Image, out_dir: Path) -> Path:
    """Write the image as an OCI archive under out_dir (reused if already there); return its path."""
    blobs: dict[str, bytes] = {}
    layer = _layer(image.entries)
    layer_desc = _blob(blobs, layer, "application/vnd.oci.image.layer.v1.tar")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": image.env, "Entrypoint": image.entrypoint or None, "Cmd": image.cmd or None,
                   "WorkingDir": image.workdir, "User": image.user,
                   **({"StopSignal": image.stop_signal} if image.stop_signal else {})},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        "history": [{"created_by": "pynode localcluster/images.py"}],
    }
    config_desc = _blob(blobs, _json(config), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = _blob(blobs, _json(manifest), "application/vnd.oci.image.manifest.v1+json")
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {**manifest_desc, "platform": {"architecture": "amd64", "os": "linux"},
         "annotations": {"io.containerd.image.name": name,
                         "org.opencontainers.image.ref.name": name.rpartition(":")[2]}}
        for name in image.names
    ]}
    index_bytes = _json(index)
    slug = re.sub(r"[^a-z0-9.]+", "-", image.names[0].rpartition("/")[2])
    path = out_dir / f"{slug}-{hashlib.sha256(index_bytes).hexdigest()[:12]}.tar"
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out_dir, delete=False) as tmp:
        with tarfile.open(fileobj=tmp, mode="w") as tar:
            files = {"oci-layout": _json({"imageLayoutVersion": "1.0.0"}), "index.json": index_bytes}
            files.update({f"blobs/sha256/{d.split(':')[1]}": data for d, data in blobs.items()})
            for name, data in sorted(files.items()):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    Path(tmp.name).rename(path)
    return path


def _ctr(node) -> list[str]:
    """The node's runtime's ctr, talking to its containerd in the `k8s.io` namespace (where CRI looks)."""
    return [node.runtime_program("ctr") or "ctr", f"--address={node.containerd_socket}", "--namespace=k8s.io"]


PINNED_LABEL = "io.cri-containerd.pinned=pinned"  # containerd's CRI reports the image pinned: no image GC


def archive_names(archive: Path) -> list[str]:
    """The image names an OCI archive written by `build` carries."""
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))
    return [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]
            if "io.containerd.image.name" in m.get("annotations", {})]


def import_archive(archive: Path, node, pin: bool = True) -> None:
    """Import the archive; with `pin`, each of its names is pinned, as the sandbox image is: no registry is
    reachable, so an image the kubelet's image GC removed could never be pulled again."""
    proc = subprocess.run([*_ctr(node), "images", "import", str(archive)], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise UpError(f"images: importing {archive.name} into {node.name}'s containerd failed: "
                      f"{proc.stderr.strip()}")
    for name in archive_names(archive) if pin else ():
        set_pinned(name, node)


def set_pinned(name: str, node, pinned: bool = True) -> None:
    """Pin image `name` in a node's containerd (its CRI then reports it pinned: no image GC), or unpin it."""
    label = PINNED_LABEL if pinned else PINNED_LABEL.split("=")[0] + "="
    proc = subprocess.run([*_ctr(node), "images", "label", name, label], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise UpError(f"images: {'pinning' if pinned else 'unpinning'} {name} in {node.name}'s containerd failed: "
                      f"{proc.stderr.strip()}")


def remove_image(name: str, node) -> None:
    """Forget image `name` in a node's containerd; one that is not there is no error."""
    proc = subprocess.run([*_ctr(node), "images", "rm", name], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and "not found" not in proc.stderr:
        raise UpError(f"images: removing {name} from {node.name}'s containerd failed: {proc.stderr.strip()}")


# --- the catalog -------------------------------------------------------------------------------

def _module_dir(cluster: Cluster) -> Path:
    """The k8s.io/kubernetes module source that the upstream build downloaded."""
    gomodcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True).stdout.strip()
    path = Path(gomodcache) / f"k8s.io/kubernetes@{cluster.version}"
    if not path.is_dir():
        raise UpError(f"images: {path} is missing; run the upstream build first")
    return path


def _upstream_fact(cluster: Cluster, relpath: str, pattern: str) -> str:
    text = (_module_dir(cluster) / relpath).read_text()
    match = re.search(pattern, text)
    if not match:
        raise UpError(f"images: cannot find {pattern!r} in {relpath} of Kubernetes {cluster.version}")
    return match.group(1)


def _pause_version(cluster: Cluster) -> str:
    return _upstream_fact(cluster, "cmd/kubeadm/app/constants/constants.go", r'PauseVersion\s*=\s*"([^"]+)"')


def pause_image(cluster: Cluster) -> Image:
    """The sandbox image: upstream's own pause program, compiled static from the pinned module."""
    version = _pause_version(cluster)
    source = _module_dir(cluster) / "build/pause/linux/pause.c"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pause"
        proc = subprocess.run(["gcc", "-Os", "-static", f"-DVERSION=v{version}", "-o", str(out), str(source)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise UpError(f"images: compiling pause.c failed: {proc.stderr.strip()}")
        subprocess.run(["strip", str(out)], check=False)
        data = out.read_bytes()
    return Image(names=[pause_name(cluster)], entries=[Entry("pause", data)],
                 entrypoint=["/pause"], env=[], user="65535:65535")


def busybox_name(cluster: Cluster) -> str:
    """The busybox image name the e2e tests of the pinned version use."""
    tag = _upstream_fact(cluster, "test/utils/image/manifest.go", r'"busybox",\s*"([^"]+)"')
    return f"registry.k8s.io/e2e-test-images/busybox:{tag}"


# The fallback when busybox cannot be built here: Debian 13's static busybox 1.37 (Debian 12's 1.35
# segfaults on `wget -T`), which drops environment names that are not identifiers.
BUSYBOX_RELEASE = "trixie"


def busybox_binary(cluster: Cluster) -> Path:
    """Upstream's busybox built here (localcluster/busybox.py); failing that, Debian 13's, with a warning."""
    try:
        return busybox.built(cluster)
    except (UpError, OSError, subprocess.SubprocessError) as err:
        print(f"[localcluster] images: using Debian's busybox, whose sh drops variables such as data-1 ({err})",
              file=sys.stderr, flush=True)
        return debian.unpacked(cluster, BUSYBOX_RELEASE, "busybox-static") / "usr/bin/busybox"


def busybox_entries(cluster: Cluster, passwd: str = "", group: str = "") -> list[Entry]:
    """Static busybox with every applet linked in /bin (as upstream's busybox image has them) and at its
    usual path, /etc/passwd and /etc/group (root, nobody and the extra lines given), /tmp, /root, /home and
    /var/log: the base of the images the e2e suite runs."""
    busybox = busybox_binary(cluster)
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    entries = [Entry("bin/busybox", busybox.read_bytes())]
    paths = {f"bin/{a.rpartition('/')[2]}" for a in applets} | set(applets)
    entries += [Entry(a, link="/bin/busybox") for a in sorted(paths) if a != "bin/busybox"]
    passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n" + passwd
    group = "root:x:0:\nnogroup:x:65534:\n" + group
    entries += [
        Entry("etc/passwd", passwd.encode(), 0o644), Entry("etc/group", group.encode(), 0o644),
        Entry("tmp", mode=0o1777), Entry("root", mode=0o700), Entry("home"), Entry("var/log"),
    ]
    return entries


def host_program_entries(*programs: str, unpacked: tuple[tuple[str, Path], ...] = ()) -> list[Entry]:
    """This host's dynamically linked programs with every library `ldd` names (and the loader), at the same
    paths: for tools with no static build in Debian (curl), which the e2e images carry. `unpacked` adds
    (path in the image, file) pairs of programs unpacked from a package of the host's release (debian.py), with
    the host's libraries they link."""
    files: dict[str, Path] = dict(unpacked)
    for program in programs:
        path = shutil.which(program)
        if not path:
            raise UpError(f"images: {program} is missing on this host (see APT_PACKAGES in the Makefile)")
        files[path] = Path(path)
    for path in list(files.values()):
        ldd = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
        for line in ldd.splitlines():
            match = re.search(r"(/\S+) \(0x", line)
            if match:
                files[match.group(1)] = Path(match.group(1))
    return [Entry(name.lstrip("/"), source.resolve().read_bytes(), 0o755) for name, source in sorted(files.items())]


def busybox_image(cluster: Cluster) -> Image:
    """The image busybox (busybox_binary) under the name the e2e tests use."""
    return Image(names=[busybox_name(cluster), "docker.io/library/busybox:latest"],
                 entries=busybox_entries(cluster), cmd=["sh"])


def coredns_name(cluster: Cluster) -> str:
    """The name kubeadm's Deployment uses."""
    return f"registry.k8s.io/coredns/coredns:{coredns_version()}"


def static_binary_image(name: str, binary: Path, recipe: str, user: tuple[str, int], *extra: Entry) -> Image:
    """An image of one static binary at /<its name>, run as `user` (name, uid; its group has the same id) with
    an /etc/passwd and /etc/group naming root and that user, as distroless images are made. `recipe` is the
    build script that puts `binary` in the cache, named when it is missing."""
    if not binary.is_file():
        raise UpError(f"images: {binary} is missing; run {recipe} first")
    account, uid = user
    group = {"nobody": "nogroup"}.get(account, account)
    home = "/nonexistent" if account == "nobody" else f"/home/{account}"
    entries = [
        Entry(binary.name, binary.read_bytes()),
        Entry("etc/passwd", f"root:x:0:0:root:/root:/sbin/nologin\n{account}:x:{uid}:{uid}:{account}:{home}:"
              "/sbin/nologin\n".encode(), 0o644),
        Entry("etc/group", f"root:x:0:\n{group}:x:{uid}:\n".encode(), 0o644),
        *extra,
    ]
    return Image(names=[name], entries=entries, entrypoint=[f"/{binary.name}"], user=str(uid))


def coredns_image(cluster: Cluster) -> Image:
    """CoreDNS as upstream's image has it (one static binary, USER 65532 nonroot)."""
    return static_binary_image(coredns_name(cluster), cluster.coredns_bin / "coredns",
                               "localcluster/upstream/coredns/build.sh", ("nonroot", 65532))


CATALOG: dict[str, Callable[[Cluster], Image]] = {
    "pause": pause_image,
    "busybox": busybox_image,
    "coredns": coredns_image,
}


def metrics_server_name(cluster: Cluster) -> str:
    """The name upstream's release manifests give the pinned metrics-server."""
    return f"registry.k8s.io/metrics-server/metrics-server:{metrics_server_version()}"


def metrics_server_image(cluster: Cluster) -> Image:
    """metrics-server as upstream's Dockerfile makes it (one static binary, USER 65534, a writable /tmp)."""
    return static_binary_image(metrics_server_name(cluster), cluster.metrics_server_bin / "metrics-server",
                               "localcluster/upstream/metrics-server/build.sh", ("nobody", 65534),
                               Entry("tmp", mode=0o1777))


ON_DEMAND: dict[str, Callable[[Cluster], Image]] = {
    "metrics-server": metrics_server_image,
}


def pause_name(cluster: Cluster) -> str:
    """The sandbox image kubeadm of the pinned version configures."""
    return f"registry.k8s.io/pause:{_pause_version(cluster)}"
