"""The volume manager's bookkeeping: one watch per referenced object, projected payloads, claims, nested mounts.

The watches run on a stand-in for our own ListWatch (no apiserver); the real one is exercised by the
integration tests.
"""

from __future__ import annotations

import asyncio

import pytest

from pykubelet.volumes import manager, objects, persistent, projected


class FakeListWatch:
    """Our ListWatch's interface: run() lists, then keeps the watch open; tests push events."""

    instances: list["FakeListWatch"] = []

    def __init__(self, http, path, *, kind, replace, update, remove, params=None, parse=None):
        self.path, self.params = path, params
        self.replace, self.update, self.remove = replace, update, remove
        self.items: list[dict] = []
        self.cancelled = False
        FakeListWatch.instances.append(self)

    async def run(self):
        self.replace(list(self.items))
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


@pytest.fixture
def fake_watches(monkeypatch):
    FakeListWatch.instances = []
    monkeypatch.setattr(objects, "ListWatch", FakeListWatch)
    return FakeListWatch.instances


def cm(name, version="1", immutable=False, **data):
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": version}, "data": data,
            **({"immutable": True} if immutable else {})}


def test_one_watch_per_object_shared_by_pods_and_stopped_with_the_last(fake_watches):
    async def scenario():
        woken: list[set[str]] = []
        cache = objects.ObjectCache(lambda: None, "configmaps", "configmap", on_change=lambda uids: woken.append(uids))
        cache.register("pod-a", "ns", {"shared", "own"})
        cache.register("pod-b", "ns", {"shared"})
        await asyncio.sleep(0.01)  # the watches list
        assert sorted(w.params["fieldSelector"] for w in fake_watches) == ["metadata.name=own",
                                                                            "metadata.name=shared"]
        assert cache.watching == 2
        assert await cache.get("ns", "shared") is None  # listed: it does not exist (yet)
        shared = next(w for w in fake_watches if w.params["fieldSelector"].endswith("shared"))
        shared.update(cm("shared", "2", k="v"))
        assert woken == [{"pod-a", "pod-b"}]
        assert (await cache.get("ns", "shared"))["data"] == {"k": "v"}
        shared.update(cm("shared", "2", k="v"))  # the same version again (a re-list): nobody woken
        assert len(woken) == 1
        cache.unregister("pod-a")
        await asyncio.sleep(0)
        assert cache.watching == 1 and not shared.cancelled
        cache.register("pod-b", "ns", set())
        await asyncio.sleep(0.01)
        assert cache.watching == 0 and shared.cancelled
        with pytest.raises(objects.Unavailable):
            await cache.get("ns", "shared")
    asyncio.run(scenario())


def test_an_immutable_object_is_read_once_and_its_watch_ends(fake_watches):
    async def scenario():
        cache = objects.ObjectCache(lambda: None, "secrets", "secret")
        cache.register("pod", "ns", {"frozen"})
        await asyncio.sleep(0.01)  # the watch lists
        fake_watches[0].update(cm("frozen", "5", immutable=True, k="v"))
        await asyncio.sleep(0.01)
        assert fake_watches[0].cancelled and cache.watching == 0
        assert (await cache.get("ns", "frozen"))["data"] == {"k": "v"}
        await cache.close()
    asyncio.run(scenario())


def test_a_watch_that_never_lists_gives_upstreams_timeout(fake_watches, monkeypatch):
    async def never(self):
        await asyncio.Event().wait()
    monkeypatch.setattr(FakeListWatch, "run", never)
    monkeypatch.setattr(objects, "SYNC_TIMEOUT", 0.05)

    async def scenario():
        cache = objects.ObjectCache(lambda: None, "configmaps", "configmap")
        cache.register("pod", "ns", {"slow"})
        with pytest.raises(objects.Unavailable, match="failed to sync configmap cache: timed out waiting"):
            await cache.get("ns", "slow")
        await cache.close()
    asyncio.run(scenario())


POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": {
    "volumes": [{"name": "a", "configMap": {"name": "cm-a"}}, {"name": "b", "secret": {"secretName": "s-b"}},
                {"name": "c", "projected": {"sources": [{"configMap": {"name": "cm-c"}}, {"secret": {"name": "s-c"}},
                                                        {"serviceAccountToken": {"path": "t"}}]}}],
    "containers": [{"name": "x", "volumeMounts": [{"name": "a", "mountPath": "/etc/app"},
                                                  {"name": "b", "mountPath": "/etc/app/secret/inner"},
                                                  {"name": "c", "mountPath": "/other"}]}]}}


def test_references_and_nested_mount_points():
    assert manager.referenced(POD, "configMap") == {"cm-a", "cm-c"}
    assert manager.referenced(POD, "secret") == {"s-b", "s-c"}
    assert manager.nested_mount_points(POD, "a") == {"secret"}
    assert manager.nested_mount_points(POD, "c") == set()


class FakeTokens:
    async def get(self, pod, volume, source):
        return b"token-for-" + volume.encode()


def test_projected_payload_merges_sources_and_keeps_tokens_private_with_an_fs_group():
    source = {"defaultMode": 0o444, "sources": [
        {"configMap": {"name": "cm", "items": [{"key": "k", "path": "dir/k"}]}},
        {"secret": {"name": "missing", "optional": True}},
        {"serviceAccountToken": {"path": "token"}},
        {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}

    async def get_object(kind, name):
        return {"data": {"k": "v"}} if (kind, name) == ("configmap", "cm") else None

    async def bundles(_):
        raise AssertionError("not asked")

    async def build(fs_group):
        return await projected.payload(POD, "vol", source, get_object=get_object, tokens=FakeTokens(),
                                       trust_bundles=bundles, node_allocatable={}, fs_user=None, fs_group=fs_group)
    plain = asyncio.run(build(None))
    assert {k: (v.data, v.mode) for k, v in plain.items()} == {
        "dir/k": (b"v", 0o444), "token": (b"token-for-vol", 0o444), "name": (b"p", 0o444)}
    assert asyncio.run(build(1234))["token"].mode == 0o600


def test_projected_failures_are_listed_together():
    source = {"sources": [{"configMap": {"name": "gone"}}, {"secret": {"name": "also-gone"}}]}

    async def nothing(kind, name):
        return None

    with pytest.raises(ValueError) as err:
        asyncio.run(projected.payload(POD, "vol", source, get_object=nothing, tokens=FakeTokens(),
                                      trust_bundles=None, node_allocatable={}, fs_user=None, fs_group=None))
    assert str(err.value) == '[configmaps "gone" not found, secrets "also-gone" not found]'


def claim_objects(phase="Bound", pv_spec=None, owners=None, deleting=False):
    claim = {"metadata": {"name": "c", "uid": "claim-uid", "ownerReferences": owners or [],
                          **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {})},
             "spec": {"volumeName": "pv1"}, "status": {"phase": phase}}
    pv = {"metadata": {"name": "pv1"}, "spec": pv_spec or {"hostPath": {"path": "/srv/data", "type": "Directory"},
                                                          "claimRef": {"uid": "claim-uid"}}}
    return {"/api/v1/namespaces/ns/persistentvolumeclaims/c": claim,
            "/api/v1/namespaces/ns/persistentvolumeclaims/p-eph": claim,
            "/api/v1/persistentvolumes/pv1": pv}


def resolve(volume, objects_by_path):
    async def get(path):
        return objects_by_path.get(path)
    return asyncio.run(persistent.resolve(POD, volume, get))


def test_a_bound_claim_gives_its_volumes_path():
    claimed = resolve({"name": "v", "persistentVolumeClaim": {"claimName": "c", "readOnly": True}},
                      claim_objects())
    assert (str(claimed.path), claimed.kind, claimed.read_only, claimed.host_path_type) == \
        ("/srv/data", "hostPath", True, "Directory")


@pytest.mark.parametrize("volume, objs, message", [
    ({"name": "v", "persistentVolumeClaim": {"claimName": "nope"}}, claim_objects(),
     'error processing PVC ns/nope: failed to fetch PVC from API server: persistentvolumeclaims "nope" not found'),
    ({"name": "v", "persistentVolumeClaim": {"claimName": "c"}}, claim_objects(phase="Pending"),
     "error processing PVC ns/c: PVC is not bound"),
    ({"name": "v", "persistentVolumeClaim": {"claimName": "c"}}, claim_objects(deleting=True),
     "error processing PVC ns/c: PVC is being deleted"),
    ({"name": "v", "persistentVolumeClaim": {"claimName": "c"}},
     claim_objects(pv_spec={"csi": {"driver": "ebs.csi.aws.com"}}),
     'PersistentVolume pv1 needs CSI driver "ebs.csi.aws.com", which pykubelet does not provide'),
    ({"name": "v", "persistentVolumeClaim": {"claimName": "c"}},
     claim_objects(pv_spec={"local": {"path": "/dev/sdb"}, "volumeMode": "Block"}),
     "PersistentVolume pv1: volumeMode Block is not supported"),
    ({"name": "eph", "ephemeral": {"volumeClaimTemplate": {}}}, claim_objects(),
     "PVC ns/p-eph was not created for pod ns/p (pod is not owner)"),
])
def test_claims_that_cannot_be_used_say_why(volume, objs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(volume, objs)


def test_an_ephemeral_volumes_claim_owned_by_the_pod_is_used():
    objs = claim_objects(owners=[{"uid": "u", "controller": True}])
    assert str(resolve({"name": "eph", "ephemeral": {"volumeClaimTemplate": {}}}, objs).path) == "/srv/data"

