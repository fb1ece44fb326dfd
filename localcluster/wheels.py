"""The pynode wheel and every dependency as wheels (systemd-python built here): what `make wheels` builds and the
ansible pynode role installs from, for the nspawn machine (`make node-test`) and the Vagrant VMs."""

from __future__ import annotations

import shutil
import sys
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
    return into / "wheelhouse"
