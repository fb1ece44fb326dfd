"""Files from Debian packages of any release, unpacked into the cache, never installed on the host.

Images need programs the host's release has only in an older or broken form
(Debian 12's busybox 1.35 crashes on `wget -T`), or that must not be installed on
the host (a package that starts a server). `unpacked()` downloads one package with
apt from a private sources list and list directory (the host's apt configuration
and state are left alone), unpacks it with `dpkg-deb -x` under
`<cache>/debian/<release>/<package>_<version>/`, and returns that directory. A
package already unpacked there is reused without any network access. `source()`
downloads a source package the same way (the upstream tarball and Debian's changes),
for a program that must be built from upstream's code.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .procs import UpError
from .settings import Cluster

MIRROR = "http://deb.debian.org/debian"


def _apt(root: Path, release: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    options = [f"-oDir::Etc::SourceList={root / 'sources.list'}", "-oDir::Etc::SourceParts=/dev/null",
               f"-oDir::State::Lists={root / 'lists'}", f"-oDir::Cache={root / 'apt-cache'}",
               "-oAPT::Sandbox::User=root", "-oDebug::NoLocking=1"]
    return subprocess.run(["apt-get", "-q", *options, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def _update(root: Path, release: str) -> None:
    for sub in ("lists/partial", "apt-cache/archives/partial", "debs", "sources"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "sources.list").write_text(f"deb {MIRROR} {release} main\ndeb-src {MIRROR} {release} main\n")
    update = _apt(root, release, "update")
    if update.returncode != 0:
        raise UpError(f"debian: `apt-get update` for {release} failed: {update.stderr.strip()[-400:]}")


def unpacked(cluster: Cluster, release: str, package: str) -> Path:
    """The directory holding `package` from Debian `release` unpacked (downloaded on first use)."""
    root = cluster.cache / "debian" / release
    done = sorted(root.glob(f"{package}_*/.unpacked"))
    if done:
        return done[-1].parent
    _update(root, release)
    download = _apt(root, release, "download", package, cwd=root / "debs")
    debs = sorted((root / "debs").glob(f"{package}_*.deb"))
    if download.returncode != 0 or not debs:
        raise UpError(f"debian: downloading {package} from {release} failed: {download.stderr.strip()[-400:]}")
    version = debs[-1].name.split("_")[1].replace("%3a", ":")
    target = root / f"{package}_{version}"
    proc = subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UpError(f"debian: unpacking {debs[-1].name} failed: {proc.stderr.strip()}")
    (target / ".unpacked").write_text(debs[-1].name + "\n")
    return target


def source(cluster: Cluster, release: str, package: str) -> Path:
    """The upstream tarball of source package `package` in Debian `release` (downloaded on first use)."""
    root = cluster.cache / "debian" / release
    found = sorted((root / "sources").glob(f"{package}_*.orig.tar.*"))
    if found:
        return found[-1]
    _update(root, release)
    download = _apt(root, release, "source", "--download-only", package, cwd=root / "sources")
    found = sorted((root / "sources").glob(f"{package}_*.orig.tar.*"))
    if download.returncode != 0 or not found:
        raise UpError(f"debian: downloading the source of {package} from {release} failed: "
                      f"{download.stderr.strip()[-400:]}")
    return found[-1]
