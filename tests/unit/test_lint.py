"""pyflakes over our Python: no unused imports, undefined names or dead f-strings land."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("api_pb2.py", "api_pb2.pyi")


def test_pyflakes_is_clean():
    files = [str(p) for top in ("src", "localcluster", "tests", "bench") for p in (ROOT / top).rglob("*.py")
             if p.name not in GENERATED]
    result = subprocess.run([sys.executable, "-m", "pyflakes", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_test_modules_have_unique_names():
    """tests/ has no __init__.py, so pytest refuses two test modules of the same file name."""
    names = [p.name for top in ("unit", "integration") for p in (ROOT / "tests" / top).glob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
