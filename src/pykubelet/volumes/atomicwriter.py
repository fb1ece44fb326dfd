"""Publish a set of files into a volume directory so that readers see the old set or the new one, never a mix.

Upstream's AtomicWriter layout, which configMap, secret, downwardAPI and projected volumes share:

    <volume>/..2026_12_06_23_59_59.123456789/   the files themselves (one directory per version)
    <volume>/..data -> ..2026_12_06_...          switched to a new version by one rename(2)
    <volume>/<name> -> ..data/<name>             what the container sees, for each top-level name

A write that changes nothing on disk creates no new version (the visible links are still checked), and a
name that left the payload loses its link once the new version is live.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = "..data"
NEW_DATA_DIR = "..data_tmp"
MAX_FILE_NAME = 255
MAX_PATH = 4096


@dataclass(frozen=True)
class FileProjection:
    data: bytes
    mode: int = 0o644
    fs_user: int | None = None  # owner of the file (and its visible link), as FileProjection.FsUser


class PayloadError(ValueError):
    """A payload path the writer refuses (absolute, with '..', too long); the message is upstream's."""


def validate_path(path: str) -> None:
    if not path:
        raise PayloadError("invalid path: must not be empty")
    if len(path) > MAX_PATH:
        raise PayloadError(f"invalid path: must be less than or equal to {MAX_PATH} characters")
    if path.startswith("/"):
        raise PayloadError("invalid path: must be relative path")
    parts = path.split("/")
    for part in parts:
        if len(part) > MAX_FILE_NAME:
            raise PayloadError(f"invalid path: filenames must be less than or equal to {MAX_FILE_NAME} characters")
    if ".." in parts:
        raise PayloadError("invalid path: must not contain '..'")
    if path.startswith(".."):
        raise PayloadError("invalid path: must not start with '..'")


def clean(payload: Mapping[str, FileProjection]) -> dict[str, FileProjection]:
    """The payload with its paths validated and cleaned (`a//b/` is `a/b`)."""
    cleaned = {}
    for path, projection in payload.items():
        validate_path(path)
        cleaned[os.path.normpath(path)] = projection
    return cleaned


def current_version(target: Path) -> str | None:
    try:
        return os.readlink(target / DATA_DIR)
    except FileNotFoundError:
        return None


def _files_under(directory: Path) -> set[str]:
    found = set()
    for root, _, files in os.walk(directory):
        for name in files:
            found.add(os.path.relpath(os.path.join(root, name), directory))
    return found


def _differs(payload: Mapping[str, FileProjection], old: Path) -> bool:
    for path, projection in payload.items():
        file = old / path
        try:
            info = file.stat()
            if info.st_size != len(projection.data) or file.read_bytes() != projection.data:
                return True
        except OSError:
            return True
    return False


def write(target: Path, payload: Mapping[str, FileProjection],
          set_permissions: Callable[[Path], None] | None = None) -> bool:
    """Publish `payload` (relative path -> file) in `target`; returns whether a new version was written.

    `set_permissions(new_version_dir)` runs on a new version before it goes live (fsGroup ownership).
    Raises PayloadError for a bad path, OSError for what the filesystem refuses.
    """
    payload = clean(payload)
    target.mkdir(parents=True, exist_ok=True)
    old = current_version(target)
    stale: set[str] = set()
    write_new = True
    if old:
        old_dir = target / old
        old_files = _files_under(old_dir) if old_dir.is_dir() else set()
        stale = {p.split("/", 1)[0] for p in old_files} - {p.split("/", 1)[0] for p in payload}
        if not stale and old_files == set(payload) and not _differs(payload, old_dir):
            write_new = False
    if write_new:
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
        version = Path(tempfile.mkdtemp(prefix=stamp, dir=target))
        try:
            version.chmod(0o755)  # group and others must be able to walk in, whatever the umask
            for path, projection in payload.items():
                file = version / path
                if "/" in path:
                    file.parent.mkdir(parents=True, exist_ok=True)
                file.write_bytes(projection.data)
                file.chmod(projection.mode)
                if projection.fs_user is not None:
                    os.lchown(file, projection.fs_user, -1)
            if set_permissions is not None:
                set_permissions(version)
            link = target / NEW_DATA_DIR
            link.unlink(missing_ok=True)
            link.symlink_to(version.name)
            link.replace(target / DATA_DIR)
        except BaseException:
            shutil.rmtree(version, ignore_errors=True)
            raise
    for path, projection in payload.items():
        name = path.split("/", 1)[0]
        visible = target / name
        if not visible.is_symlink():
            visible.symlink_to(f"{DATA_DIR}/{name}")
            if projection.fs_user is not None:
                os.lchown(visible, projection.fs_user, -1)
    for name in stale:
        (target / name).unlink(missing_ok=True)
    if write_new:
        live = current_version(target)
        for entry in target.iterdir():  # the old version, and any a crash left half-written
            if entry.name.startswith("..") and entry.name[2:3].isdigit() and entry.name != live:
                shutil.rmtree(entry, ignore_errors=True)
    return write_new


def read(target: Path) -> dict[str, bytes]:
    """The files of the live version (for tests and for comparing after a restart)."""
    version = current_version(target)
    if version is None:
        return {}
    directory = target / version
    return {path: (directory / path).read_bytes() for path in sorted(_files_under(directory))}
