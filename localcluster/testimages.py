"""The images the upstream e2e suite runs, made here under the exact names it pulls.

No registry is reachable, so `make conformance` builds each image the suite lists
(`e2e.test --list-images`) that has a recipe in BUILDERS, and imports it into every
node; an image with no recipe is named in a clear line before the run, since a
spec that needs it can only fail on ImagePullBackOff. Recipes follow the
Dockerfiles under test/images in the pinned Kubernetes module: same entrypoint,
users, files and ports, with the programs built from the same Go module (or their own
module's recipe: sample-apiserver, etcd), the shell tools from upstream's busybox (busybox.py)
and this host's curl, nc, dig and getent instead of Alpine's or Debian's packages, and nginx
from Debian's package for this host's release.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

from . import debian, images
from .cluster import build_recipe
from .images import Entry, Image
from .procs import UpError
from .settings import UPSTREAM_DIR, Cluster

E2E_REGISTRY = "registry.k8s.io/e2e-test-images"


def _version_of(cluster: Cluster, image_id: str, image: str) -> str:
    """The tag test/utils/image/manifest.go gives an e2e image (by its ImageID) at the pinned version."""
    text = (images._module_dir(cluster) / "test/utils/image/manifest.go").read_text()
    match = re.search(rf'configs\[{image_id}\] = Config\{{list\.\w+, "{re.escape(image)}", "([^"]+)"\}}', text)
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


# Images whose program has a Go module recipe of its own (localcluster/upstream/<recipe>/build.sh).
RECIPES = ("sample-apiserver", "etcd")


def build_programs(cluster: Cluster) -> None:
    """Build the programs of RECIPES into the cache (seconds when cached; minutes cold)."""
    for recipe in RECIPES:
        build_recipe(cluster, UPSTREAM_DIR / recipe, recipe)


def _recipe_program(cluster: Cluster, recipe: str) -> bytes:
    proc = subprocess.run([str(UPSTREAM_DIR / recipe / "build.sh"), "--bin-dir"], capture_output=True, text=True,
                          env={**os.environ, "PYNODE_CACHE": str(cluster.cache)}, check=True)
    binary = Path(proc.stdout.strip()) / recipe
    if not binary.is_file():
        raise UpError(f"testimages: {binary} is missing; run localcluster/upstream/{recipe}/build.sh first")
    return binary.read_bytes()


def sample_apiserver_image(cluster: Cluster) -> Image:
    """The Aggregator spec's extension API server: /sample-apiserver as its ENTRYPOINT, on busybox (upstream's
    is on Alpine), built from k8s.io/sample-apiserver at the pinned release."""
    entries = images.busybox_entries(cluster) + [Entry("sample-apiserver", _recipe_program(cluster,
                                                                                           "sample-apiserver"))]
    return Image(names=[f"{E2E_REGISTRY}/sample-apiserver:{_version_of(cluster, 'APIServer', 'sample-apiserver')}"],
                 entries=entries, entrypoint=["/sample-apiserver"])


def etcd_image(cluster: Cluster) -> Image:
    """registry.k8s.io/etcd as the Aggregator spec runs it (`/usr/local/bin/etcd --listen-client-urls …`, data in
    the working directory /): the static etcd of the tag's release and nothing else, as upstream's distroless
    image, plus /tmp."""
    tag = _version_of(cluster, "Etcd", "etcd")
    entries = [Entry("usr/local/bin/etcd", _recipe_program(cluster, "etcd")), Entry("tmp", mode=0o1777),
               Entry("etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\n", 0o644)]
    return Image(names=[f"registry.k8s.io/etcd:{tag}"], entries=entries, entrypoint=["/usr/local/bin/etcd"],
                 workdir="/")


NGINX_CONF = textwrap.dedent("""\
    user nginx;
    worker_processes auto;
    pid /run/nginx.pid;
    events {
        worker_connections 1024;
    }
    http {
        include /etc/nginx/mime.types;
        default_type application/octet-stream;
        access_log /dev/stdout;
        error_log stderr notice;
        sendfile on;
        keepalive_timeout 65;
        include /etc/nginx/conf.d/*.conf;
    }
    """).encode()
NGINX_SERVER = textwrap.dedent("""\
    server {
        listen 80;
        server_name localhost;
        location / {
            root /usr/share/nginx/html;
            index index.html index.htm;
        }
        error_page 500 502 503 504 /50x.html;
        location = /50x.html {
            root /usr/share/nginx/html;
        }
    }
    """).encode()
NGINX_PAGE = (b"<!DOCTYPE html>\n<html>\n<head><title>Welcome to nginx!</title></head>\n"
              b"<body>\n<h1>Welcome to nginx!</h1>\n</body>\n</html>\n")


def host_release() -> str:
    """This host's Debian release (its VERSION_CODENAME): packages unpacked from it link the host's libraries."""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    raise UpError("testimages: /etc/os-release names no VERSION_CODENAME; is this Debian?")


def nginx_image(cluster: Cluster) -> Image:
    """nginx, under both names the suite uses (Nginx and NginxNew), as its Dockerfile's base (the official image)
    serves: port 80, the default page under /usr/share/nginx/html, workers as user nginx (101), the access log on
    stdout and errors on stderr, CMD `nginx -g 'daemon off;'` and STOPSIGNAL SIGQUIT. The nginx program is
    Debian's for this host's release, unpacked and never installed (debian.py), with mime.types from
    nginx-common; busybox gives the shell and the rest. The suite only needs a web server that answers on 80."""
    release = host_release()
    program = debian.unpacked(cluster, release, "nginx") / "usr/sbin/nginx"
    mime_types = debian.unpacked(cluster, release, "nginx-common") / "etc/nginx/mime.types"
    entries = images.busybox_entries(cluster, passwd="nginx:x:101:101:nginx:/var/cache/nginx:/sbin/nologin\n",
                                     group="nginx:x:101:nginx\n")
    entries += images.host_program_entries(unpacked=(("/usr/sbin/nginx", program),)) + [NSSWITCH]
    entries += [
        Entry("etc/nginx/nginx.conf", NGINX_CONF, 0o644), Entry("etc/nginx/mime.types", mime_types.read_bytes(), 0o644),
        Entry("etc/nginx/conf.d/default.conf", NGINX_SERVER, 0o644),
        Entry("usr/share/nginx/html/index.html", NGINX_PAGE, 0o644),
        Entry("usr/share/nginx/html/50x.html", b"<html><body><h1>An error occurred.</h1></body></html>\n", 0o644),
        Entry("var/lib/nginx"), Entry("var/cache/nginx"), Entry("var/lock"), Entry("run"),
    ]
    names = [f"{E2E_REGISTRY}/nginx:{_version_of(cluster, image_id, 'nginx')}" for image_id in ("Nginx", "NginxNew")]
    return Image(names=names, entries=entries, cmd=["nginx", "-g", "daemon off;"], stop_signal="SIGQUIT")


BUILDERS: dict[str, Callable[[Cluster], Image]] = {
    "agnhost": agnhost_image,
    "kitten": lambda cluster: _web_image(cluster, "kitten"),
    "nautilus": lambda cluster: _web_image(cluster, "nautilus"),
    "nonewprivs": nonewprivs_image,
    "nonroot": nonroot_image,
    "glibc-dns-testing": glibc_dns_testing_image,
    "nginx": nginx_image,
    "sample-apiserver": sample_apiserver_image,
    "etcd": etcd_image,
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
