"""The pod cgroup's pids limit and its removal, on directory trees standing in for cgroup mounts."""

from __future__ import annotations

from pykubelet.pods.podcgroups import PodCgroups, mounts

V1 = """\
30 25 0:26 / {base}/pids rw,nosuid shared:11 - cgroup cgroup rw,pids
31 25 0:27 / {base}/memory rw,nosuid shared:12 - cgroup cgroup rw,memory
32 25 0:28 / {base}/cpu,cpuacct rw,nosuid shared:13 - cgroup cgroup rw,cpu,cpuacct
33 25 0:29 / {base}/unified rw,nosuid shared:14 - cgroup2 cgroup2 rw
"""

V2 = "40 25 0:30 / {base} rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"


def test_mounts_lists_each_v1_hierarchy_and_the_unified_one(tmp_path):
    v1, unified = mounts(V1.format(base=tmp_path))
    assert [(str(m), c) for m, _, c in v1] == [(f"{tmp_path}/pids", {"pids"}), (f"{tmp_path}/memory", {"memory"}),
                                                (f"{tmp_path}/cpu,cpuacct", {"cpu", "cpuacct"})]
    assert unified == (tmp_path / "unified", "/")


def test_v1_the_pod_cgroup_gets_pids_max_before_the_sandbox_and_goes_with_the_pod(tmp_path):
    cgroups = PodCgroups("/node1", 1024, V1.format(base=tmp_path))
    cgroups.prepare("/node1/kubepods/burstable/podabc")
    assert (tmp_path / "pids/node1/kubepods/burstable/podabc/pids.max").read_text() == "1024"
    # runc then makes the containers' cgroups below it, in every hierarchy
    for hierarchy in ("pids", "memory", "cpu,cpuacct"):
        (tmp_path / hierarchy / "node1/kubepods/burstable/podabc/sandbox1").mkdir(parents=True, exist_ok=True)
    (tmp_path / "pids/node1/kubepods/burstable/podabc/pids.max").unlink()  # a real cgroup's files go with it
    cgroups.remove("abc")
    for hierarchy in ("pids", "memory", "cpu,cpuacct"):
        assert not (tmp_path / hierarchy / "node1/kubepods/burstable/podabc").exists()
        assert (tmp_path / hierarchy / "node1/kubepods/burstable").is_dir()  # the tier stays


def test_no_limit_makes_nothing_and_a_busy_cgroup_stays(tmp_path):
    cgroups = PodCgroups("", -1, V1.format(base=tmp_path))
    cgroups.prepare("/kubepods/podabc")
    assert not (tmp_path / "pids/kubepods").exists()
    busy = tmp_path / "memory/kubepods/podabc"
    busy.mkdir(parents=True)
    (busy / "cgroup.procs").write_text("123\n")  # stands in for a cgroup that still has processes: rmdir fails
    cgroups.remove("abc")
    assert busy.is_dir()


def test_v2_enables_pids_down_the_ancestors(tmp_path):
    (tmp_path / "cgroup.subtree_control").write_text("cpu memory\n")
    cgroups = PodCgroups("", 64, V2.format(base=tmp_path))
    (tmp_path / "kubepods").mkdir()
    (tmp_path / "kubepods/cgroup.subtree_control").write_text("")
    (tmp_path / "kubepods/besteffort").mkdir()
    (tmp_path / "kubepods/besteffort/cgroup.subtree_control").write_text("pids\n")
    cgroups.prepare("/kubepods/besteffort/podxyz")
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+pids"  # the kernel would add it to the list
    assert (tmp_path / "kubepods/cgroup.subtree_control").read_text() == "+pids"
    assert (tmp_path / "kubepods/besteffort/cgroup.subtree_control").read_text() == "pids\n"  # already on
    assert (tmp_path / "kubepods/besteffort/podxyz/pids.max").read_text() == "64"
