"""The pynode wheel and every dependency as wheels (systemd-python built here): what `make wheels` builds and the
ansible pynode role installs from, for the nspawn machine (`make node-test`) and the Vagrant VMs.

Beside the wheelhouse directory goes the same wheels as one uncompressed tar, `<wheelhouse>.tar` (the wheels are
zip files already): the role sends that archive, one transfer per host rather than one per wheel (about 1.5 s
each over ansible's ssh on a busy machine, two dozen wheels)."""

from __future__ import annotations

import shutil
import sys
import tarfile
from pathlib import Path

from .procs import run_checked

REPO = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> None:
    run_checked(*argv, timeout=900)


def wheelhouse(into: Path) -> Path:
    """Build into `into`: the pynode wheel beside it, and into/wheelhouse with it and its dependencies."""
    into.mkdir(parents=True, exist_ok=True)
    for old in into.glob("pynode-*.whl"):
        old.unlink()
    _run(sys.executable, "-m", "build", "--wheel", "--outdir", str(into), str(REPO))
    wheel = next(into.glob("pynode-*.whl"))
    shutil.rmtree(into / "wheelhouse", ignore_errors=True)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(into / "wheelhouse"), f"{wheel}[systemd]")
    archive(into / "wheelhouse")
    return into / "wheelhouse"


def archive(wheelhouse: Path) -> Path:
    """`<wheelhouse>.tar`: its wheels at the archive's top level, owned by root, 0644, in name order."""
    path = wheelhouse.with_name(wheelhouse.name + ".tar")
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        for wheel in sorted(wheelhouse.glob("*.whl")):
            info = tar.gettarinfo(str(wheel), arcname=wheel.name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o644
            with open(wheel, "rb") as data:
                tar.addfile(info, data)
    tmp.rename(path)
    return path
