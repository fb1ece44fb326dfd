"""subPath and subPathExpr: expansion from the container env and upstream's refusals."""

from __future__ import annotations

import pytest

from pykubelet.pods.envvars import ConfigProblem
from pykubelet.volumes.subpaths import prepare, subpath

ENV = {"POD_NAME": "web-0", "EMPTY": "", "ABS": "/etc", "UP": "..", "TICKS": "`date`"}


@pytest.mark.parametrize("mount, expected", [
    ({"subPath": "data/logs"}, "data/logs"),
    ({"subPathExpr": "logs/$(POD_NAME)"}, "logs/web-0"),
    ({"subPathExpr": "$$(POD_NAME)"}, "$(POD_NAME)"),
    ({"subPathExpr": "$(TICKS)"}, "`date`"),  # a name, not a command: nothing runs it
    ({}, ""),
])
def test_expansion(mount, expected):
    assert subpath(mount, ENV) == expected


@pytest.mark.parametrize("mount, message", [
    ({"subPathExpr": "$(UNSET)/$(EMPTY)"}, "missing value for EMPTY, UNSET"),
    ({"subPathExpr": "$(ABS)"}, "error SubPath `/etc` must not be an absolute path"),
    ({"subPath": "/etc"}, "error SubPath `/etc` must not be an absolute path"),
    ({"subPathExpr": "$(UP)/x"}, "unable to provision SubPath `../x`: must not contain '..'"),
])
def test_refusals_carry_upstreams_message(mount, message):
    with pytest.raises(ConfigProblem) as err:
        subpath(mount, ENV)
    assert err.value.reason == "CreateContainerConfigError" and str(err.value) == message


def test_prepare_creates_the_directory_and_refuses_a_symlink_out_of_the_volume(tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir(mode=0o777)
    volume.chmod(0o777)
    made = prepare(volume, "a/b", "data", "main")
    assert made == volume / "a" / "b" and made.is_dir() and made.stat().st_mode & 0o777 == 0o777
    (volume / "escape").symlink_to(tmp_path)
    with pytest.raises(ConfigProblem, match='failed to prepare subPath for volumeMount "data" of container "main"'):
        prepare(volume, "escape/x", "data", "main")
    assert not (tmp_path / "x").exists()
