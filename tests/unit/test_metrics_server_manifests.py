"""The metrics-server fixture: its pinned recipe, its image and upstream's manifests with our arguments."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from localcluster import images, metrics_server, procs, settings
from localcluster.procs import UpError


def test_the_recipe_pins_a_release_with_a_tool_line():
    text = (settings.METRICS_SERVER_DIR / "go.mod").read_text()
    assert settings.metrics_server_version() == "v0.8.0"
    assert "tool sigs.k8s.io/metrics-server/cmd/metrics-server" in text
    assert (settings.METRICS_SERVER_DIR / "go.sum").read_text().count("sigs.k8s.io/metrics-server v0.8.0") == 2
    cluster = settings.load()
    assert cluster.metrics_server_bin == cluster.cache / "upstream" / "metrics-server-v0.8.0" / "bin"
    printed = subprocess.run([str(metrics_server.BUILD_SCRIPT), "--bin-dir"], capture_output=True, text=True,
                             env={"PYNODE_CACHE": str(cluster.cache), "PATH": "/usr/bin:/bin"}, check=True)
    assert printed.stdout.strip() == str(cluster.metrics_server_bin)


def test_the_image_is_not_imported_by_up():
    assert "metrics-server" not in images.CATALOG and "metrics-server" in images.ON_DEMAND


def test_the_image_needs_the_built_binary(tmp_path):
    cluster = dataclasses.replace(settings.load(), cache=tmp_path)
    with pytest.raises(UpError, match="build.sh first"):
        images.metrics_server_image(cluster)


def test_the_image_runs_the_binary_as_nobody(tmp_path):
    cluster = dataclasses.replace(settings.load(), cache=tmp_path)
    cluster.metrics_server_bin.mkdir(parents=True)
    (cluster.metrics_server_bin / "metrics-server").write_bytes(b"\x7fELF not really")
    image = images.metrics_server_image(cluster)
    assert image.names == ["registry.k8s.io/metrics-server/metrics-server:v0.8.0"]
    archive = images.build(image, tmp_path / "images")
    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    index = json.loads(files["index.json"])
    manifest = json.loads(files["blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]])
    config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])["config"]
    assert config["User"] == "65534" and config["Entrypoint"] == ["/metrics-server"]


def _by_kind(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_manifests_verify_the_kubelets_against_the_cluster_ca():
    objects = _by_kind(metrics_server.manifests("example.test/metrics-server:v0"))
    container = objects[("Deployment", "metrics-server")]["spec"]["template"]["spec"]["containers"][0]
    assert "--kubelet-insecure-tls" not in container["args"]
    assert f"--kubelet-certificate-authority={metrics_server.SERVICE_ACCOUNT_CA}" in container["args"]
    assert "--kubelet-preferred-address-types=InternalIP" in container["args"]
    assert "--kubelet-use-node-status-port" in container["args"]
    assert container["image"] == "example.test/metrics-server:v0"
    rules = objects[("ClusterRole", "system:metrics-server")]["rules"]
    assert {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]} in rules
    assert objects[("APIService", "v1beta1.metrics.k8s.io")]["spec"]["service"] == {
        "name": "metrics-server", "namespace": "kube-system"}
    assert all(o["metadata"]["labels"]["k8s-app"] == "metrics-server" for o in objects.values())
    yaml.safe_dump_all(list(objects.values()))  # kubectl gets them as YAML


def _upstream_base() -> Path | None:
    gomodcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True).stdout.strip() \
        if subprocess.run(["sh", "-c", "command -v go"], capture_output=True).returncode == 0 else ""
    path = Path(gomodcache) / f"sigs.k8s.io/metrics-server@{settings.metrics_server_version()}/manifests/base"
    return path if gomodcache and path.is_dir() else None


def test_manifests_match_upstreams_base_apart_from_the_arguments_and_image():
    base = _upstream_base()
    if base is None:
        pytest.skip("the metrics-server module source is not in GOMODCACHE (run its build.sh)")
    upstream = _by_kind([d for f in sorted(base.glob("*.yaml")) if f.name != "kustomization.yaml"
                         for d in yaml.safe_load_all(f.read_text()) if d])
    ours = _by_kind(metrics_server.manifests("example.test/metrics-server:v0"))
    assert set(ours) == set(upstream)
    for key, theirs in upstream.items():
        mine = ours[key]
        if key[0] in ("ClusterRole", "Role"):
            assert mine["rules"] == theirs["rules"], key
        if key[0].endswith("Binding"):
            assert (mine["roleRef"], mine["subjects"]) == (theirs["roleRef"], theirs["subjects"]), key
        if key[0] in ("Service", "APIService"):
            assert {k: v for k, v in mine["spec"].items() if k != "selector"} == theirs["spec"], key
    pod, their_pod = (o[("Deployment", "metrics-server")]["spec"]["template"]["spec"] for o in (ours, upstream))
    mine, theirs = pod["containers"][0], their_pod["containers"][0]
    for field in ("resources", "ports", "readinessProbe", "livenessProbe", "securityContext", "volumeMounts"):
        assert mine[field] == theirs[field], field
    assert pod["volumes"] == their_pod["volumes"]
    assert pod["priorityClassName"] == their_pod["priorityClassName"]
    # The only argument upstream has and we do not widen is the address types (we scrape InternalIP only).
    assert set(theirs["args"]) - set(mine["args"]) == {"--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname"}


@pytest.mark.parametrize("flags, ok", [(["--enable-aggregator-routing=true"], True), ([], False)])
def test_deploy_first_checks_the_running_apiserver_routes_to_pods(tmp_path, flags, ok):
    """An apiserver started before the flag existed cannot reach the pod; say so rather than time out."""
    cluster = dataclasses.replace(settings.load(), state=tmp_path)
    with pytest.raises(UpError, match="kube-apiserver is not running"):
        metrics_server.check_apiserver(cluster)
    pid = procs.start(cluster, "kube-apiserver", [sys.executable, "-c", "import time; time.sleep(30)", *flags])
    cmdline = Path(f"/proc/{pid}/cmdline")
    deadline = time.monotonic() + 10
    while b"time.sleep" not in cmdline.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)  # between fork and exec the child still shows pytest's command line
    try:
        if ok:
            metrics_server.check_apiserver(cluster)
        else:
            with pytest.raises(UpError, match=r"started without --enable-aggregator-routing=true.*make down && make up"):
                metrics_server.check_apiserver(cluster)
    finally:
        procs.stop(cluster, "kube-apiserver", grace=2)
