"""The busybox in the e2e images: upstream's busybox, built from the release tarball Debian ships.

Upstream's e2e busybox image is docker's busybox, upstream's code with its default configuration.
Debian's busybox differs where the suite looks: Debian reverts upstream's change that keeps environment
variables whose names are not shell identifiers (`data-1` from an envFrom ConfigMap vanishes in `sh`),
its static build leaves out a third of the applets, and Debian 12's 1.35 crashes on `wget -T`. So the
images carry a static busybox built here from the `.orig` tarball of Debian 13's source package (the
upstream release itself, none of Debian's patches) with `make defconfig`, once, into the cache
(about a minute with both CPUs). `tc` is left out: its CBQ code needs kernel headers that newer kernels
no longer ship.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from . import debian
from .procs import UpError
from .settings import Cluster

SOURCE_RELEASE = "trixie"


def _configure(config: Path) -> None:
    text = config.read_text()
    text = text.replace("# CONFIG_STATIC is not set", "CONFIG_STATIC=y")
    text = re.sub(r"^CONFIG_TC=y$", "# CONFIG_TC is not set", text, flags=re.M)
    config.write_text(text)


def _make(src: Path, version: str, *args: str) -> None:
    proc = subprocess.run(["make", *args], cwd=src, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise UpError(f"busybox {version}: `make {' '.join(args)}` failed: {proc.stderr.strip()[-600:]}")


def built(cluster: Cluster) -> Path:
    """The static busybox built from upstream's release tarball (built on first use, then cached)."""
    tarball = debian.source(cluster, SOURCE_RELEASE, "busybox")
    version = tarball.name.split("_")[1].split(".orig")[0]
    out = cluster.cache / "busybox" / version / "busybox"
    if out.is_file():
        return out
    with tempfile.TemporaryDirectory(prefix="busybox-") as tmp:
        with tarfile.open(tarball) as archive:
            archive.extractall(tmp, filter="tar")
        src = next(Path(tmp).iterdir())
        _make(src, version, "defconfig")
        _configure(src / ".config")
        _make(src, version, f"-j{os.cpu_count() or 1}", "busybox")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / "busybox", out.with_suffix(".tmp"))
        out.with_suffix(".tmp").rename(out)
    return out
