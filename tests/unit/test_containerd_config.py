"""The nodes' containerd: which runtime, where its programs are, and the config each version reads."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from localcluster import containerd, procs, settings


@pytest.fixture
def cluster(tmp_path):
    return dataclasses.replace(settings.load(), state=tmp_path / "state", cache=tmp_path / "cache")


def test_the_pinned_releases_are_read_from_the_recipe():
    containerd_version, runc_version = settings.containerd_versions()
    assert containerd_version.startswith("v2.") and runc_version.startswith("v1.")


def test_the_built_runtime_lives_in_the_cache_and_debians_on_path(cluster):
    containerd_version, runc_version = settings.containerd_versions()
    node = cluster.nodes[0]
    assert node.runtime == "upstream"
    assert node.containerd_bin == cluster.cache / "upstream" / f"containerd-{containerd_version}-runc-" \
        f"{runc_version}" / "bin"
    assert node.runtime_program("ctr") == ""  # not built in this empty cache
    assert dataclasses.replace(cluster, containerd="debian").nodes[0].containerd_bin is None


def test_a_node_keeps_the_runtime_its_state_was_made_by(cluster):
    node = cluster.nodes[0]
    (node.dir / "containerd" / "root").mkdir(parents=True)
    assert node.runtime == "debian"  # made before the choice existed: Debian's
    (node.dir / "containerd" / containerd.RUNTIME_MARK).write_text("upstream\n")
    assert node.runtime == "upstream"


def test_containerd_2_gets_a_version_3_config_with_the_nodes_paths(cluster):
    node = cluster.nodes[0]
    config = tomllib.loads(containerd.config_toml(node))
    assert config["version"] == 3 and config["imports"] == []
    assert config["grpc"]["address"] == str(node.containerd_socket)
    runtime = config["plugins"]["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True and runtime["netns_mounts_under_state_dir"] is True
    runc = runtime["containerd"]["runtimes"]["runc"]
    assert runc["options"]["Root"] == str(node.dir / "containerd" / "runc")
    assert runtime["cni"]["conf_dir"] == str(node.dir / "cni")
    images = config["plugins"]["io.containerd.cri.v1.images"]
    assert images["pinned_images"]["sandbox"].startswith("registry.k8s.io/pause:")
    assert "io.containerd.nri.v1.nri" in config["disabled_plugins"]


def test_debians_containerd_gets_a_version_2_config(cluster):
    node = dataclasses.replace(cluster, containerd="debian").nodes[0]
    config = tomllib.loads(containerd.config_toml(node))
    assert config["version"] == 2
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True and cri["sandbox_image"].startswith("registry.k8s.io/pause:")


def test_asking_for_another_runtime_than_a_nodes_state_has_is_refused(cluster, monkeypatch):
    node = dataclasses.replace(cluster, containerd="upstream").nodes[0]
    (node.dir / "containerd").mkdir(parents=True)
    (node.dir / "containerd" / containerd.RUNTIME_MARK).write_text("debian\n")
    monkeypatch.setattr(settings.Node, "runtime_program", lambda self, name: f"/bin/{name}")
    with pytest.raises(procs.UpError, match="made by the debian runtime, and PYNODE_CONTAINERD asks for upstream"):
        containerd.start(node)
    with pytest.raises(procs.UpError, match="expected one of"):
        containerd.start(dataclasses.replace(cluster, containerd="podman").nodes[0])
