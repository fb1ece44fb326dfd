"""The images the upstream e2e suite runs, made here under the exact names it pulls.

No registry is reachable, so `make conformance` builds each image the suite lists
(`e2e.test --list-images`) that has a recipe in BUILDERS, and imports it into every
node; an image with no recipe is named in a clear line before the run, since a
spec that needs it can only fail on ImagePullBackOff. Recipes follow the
Dockerfiles under test/images in the pinned Kubernetes module: same entrypoint,
users, files and ports, with the programs built from the same Go module and the
shell tools from upstream's busybox (busybox.py) and this host's curl, nc, dig and getent instead of Alpine's
or Debian's packages.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from . import images
from .images import Entry, Image
from .procs import UpError
from .settings import Cluster

E2E_REGISTRY = "registry.k8s.io/e2e-test-images"


def _version_of(cluster: Cluster, image_id: str, image: str) -> str:
    """The tag test/utils/image/manifest.go gives an e2e image (by its ImageID) at the pinned version."""
    text = (images._module_dir(cluster) / "test/utils/image/manifest.go").read_text()
    match = re.search(rf'configs\[{image_id}\] = Config\{{list\.PromoterE2eRegistry, "{re.escape(image)}", "([^"]+)"\}}',
                      text)
    if not match:
        raise UpError(f"testimages: no {image_id} ({image!r}) in test/utils/image/manifest.go of Kubernetes "
                      f"{cluster.version}")
    return match.group(1)


def agnhost_name(cluster: Cluster) -> str:
    return f"{E2E_REGISTRY}/agnhost:{_version_of(cluster, 'Agnhost', 'agnhost')}"


# Debian's, for the glibc programs carried from this host (getent hosts reads /etc/hosts, then DNS).
NSSWITCH = Entry("etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n", 0o644)


def agnhost_prev_name(cluster: Cluster) -> str:
    """The previous agnhost (AgnhostPrev), which specs use only as a second, different image name; it is
    the same build here."""
    return f"{E2E_REGISTRY}/agnhost:{_version_of(cluster, 'AgnhostPrev', 'agnhost')}"


def agnhost_image(cluster: Cluster) -> Image:
    """agnhost as its Dockerfile makes it: /agnhost (and the agnhost-2 link), porter's localhost certificate,
    /uploads, the image's own user and group, curl (the lifecycle hook specs run it), OpenBSD's nc as
    /usr/bin/nc ahead of busybox's (the Service specs run `nc -v -t -w 2`, and busybox's nc has no -t), dig
    and getent (the DNS specs' probes), as upstream's Alpine packages give them, ENTRYPOINT /agnhost with CMD
    pause."""
    porter = images._module_dir(cluster) / "test/images/agnhost/porter"
    entries = images.busybox_entries(
        cluster,
        passwd="user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n",
        group="user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n")
    entries += [
        Entry("agnhost", _built(cluster, "agnhost")), Entry("agnhost-2", link="agnhost"),
        Entry("localhost.crt", (porter / "localhost.crt").read_bytes(), 0o644),
        Entry("localhost.key", (porter / "localhost.key").read_bytes(), 0o644),
        Entry("uploads"), Entry("home/user-defined-in-image"),
    ]
    entries += images.host_program_entries("curl", "nc", "dig", "getent") + [NSSWITCH]
    return Image(names=[agnhost_name(cluster), agnhost_prev_name(cluster)], entries=entries,
                 entrypoint=["/agnhost"], cmd=["pause"])


def _built(cluster: Cluster, program: str) -> bytes:
    binary = cluster.bin / program
    if not binary.is_file():
        raise UpError(f"testimages: {binary} is missing; run localcluster/upstream/conformance/build.sh first")
    return binary.read_bytes()


def _web_image(cluster: Cluster, name: str) -> Image:
    """kitten and nautilus: agnhost serving one picture and a data.json with test-webserver."""
    html = images._module_dir(cluster) / f"test/images/{name}/html"
    base = agnhost_image(cluster)
    base.entries += [Entry(f"{name}.jpg", (html / f"{name}.jpg").read_bytes(), 0o644),
                     Entry("data.json", (html / "data.json").read_bytes(), 0o644)]
    return Image(names=[f"{E2E_REGISTRY}/{name}:{_version_of(cluster, name.capitalize(), name)}"],
                 entries=base.entries, entrypoint=base.entrypoint, cmd=["test-webserver"])


def nonewprivs_image(cluster: Cluster) -> Image:
    """nnp (prints its effective uid) setuid root in /usr/local/bin, on busybox, CMD nnp."""
    entries = images.busybox_entries(cluster) + [Entry("usr/local/bin/nnp", _built(cluster, "nnp"), 0o4755)]
    return Image(names=[f"{E2E_REGISTRY}/nonewprivs:{_version_of(cluster, 'Nonewprivs', 'nonewprivs')}"],
                 entries=entries, cmd=["nnp"])


def nonroot_image(cluster: Cluster) -> Image:
    """A base image whose default user is 1234."""
    return Image(names=[f"{E2E_REGISTRY}/nonroot:{_version_of(cluster, 'NonRoot', 'nonroot')}"],
                 entries=images.busybox_entries(cluster), cmd=["sh"], user="1234")


def glibc_dns_testing_image(cluster: Cluster) -> Image:
    """glibc-dns-testing, the DNS specs' glibc querier ("jessie"): its Dockerfile is Debian 12 with dnsutils, so
    here this host's (Debian 12) dig and getent with their libraries, Debian's /etc/nsswitch.conf for hosts, and
    busybox for the shell and the rest. The CoreDNS 1.5 it also carries is left out: no spec runs it there."""
    entries = images.busybox_entries(cluster) + images.host_program_entries("dig", "getent") + [NSSWITCH]
    return Image(names=[f"{E2E_REGISTRY}/glibc-dns-testing:"
                        f"{_version_of(cluster, 'GlibcDnsTesting', 'glibc-dns-testing')}"], entries=entries, cmd=["sh"])


BUILDERS: dict[str, Callable[[Cluster], Image]] = {
    "agnhost": agnhost_image,
    "kitten": lambda cluster: _web_image(cluster, "kitten"),
    "nautilus": lambda cluster: _web_image(cluster, "nautilus"),
    "nonewprivs": nonewprivs_image,
    "nonroot": nonroot_image,
    "glibc-dns-testing": glibc_dns_testing_image,
    **images.CATALOG,
}


def suite_images(cluster: Cluster) -> list[str]:
    """Every image name the e2e suite of the pinned version may pull (`e2e.test --list-images`)."""
    proc = subprocess.run([str(cluster.bin / "e2e.test"), "--list-images"], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise UpError(f"testimages: `e2e.test --list-images` failed: {proc.stderr.strip()[-500:]}")
    return sorted({line.strip() for line in proc.stdout.splitlines() if line.strip()})


def build_all(cluster: Cluster) -> tuple[list[Path], list[str]]:
    """Build every image there is a recipe for; returns (the archives, the suite's image names left unbuilt)."""
    archives, made = [], set()
    for make in BUILDERS.values():
        image = make(cluster)
        archives.append(images.build(image, cluster.images))
        made.update(image.names)
    missing = [name for name in suite_images(cluster) if name not in made]
    return archives, missing


def import_all(cluster: Cluster, archives: list[Path]) -> None:
    for node in cluster.nodes:
        for archive in archives:
            images.import_archive(archive, node)
