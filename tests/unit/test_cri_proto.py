"""Our api.proto against the upstream runtime.v1 wire facts, and the stubs against api.proto."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cri import api_pb2

# The upstream wire facts: {"package", "services": {name: [rpc]}, "messages":
# {"Msg" or "Msg.Nested": {field: number * 100 + descriptor type}}}.
# A copy of the project's shared reference (shared/reference/), kept with the tests.
FACTS = Path(__file__).parent / "data" / "cri-runtime-v1-wire-facts.json"

# The RPCs the kubelet uses; the proto must declare exactly these.
RUNTIME_RPCS = {
    "Version", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus",
    "ListPodSandbox", "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer",
    "ListContainers", "ContainerStatus", "UpdateContainerResources", "ReopenContainerLog",
    "ExecSync", "Exec", "Attach", "PortForward", "ContainerStats", "ListContainerStats",
    "PodSandboxStats", "ListPodSandboxStats", "UpdateRuntimeConfig", "Status",
}
IMAGE_RPCS = {"ListImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo"}

# Fields upstream has that we deliberately leave out, as "Message.field" (none today).
OMITTED: set[str] = set()


@pytest.fixture(scope="module")
def facts() -> dict:
    return json.loads(FACTS.read_text())


def declared_messages():
    """(dotted name relative to the package, descriptor) for every message we declare."""

    def walk(desc, prefix):
        for nested in desc.nested_types:
            if nested.GetOptions().map_entry:  # synthesized by map<>, not declared
                continue
            name = f"{prefix}.{nested.name}"
            yield name, nested
            yield from walk(nested, name)

    for desc in api_pb2.DESCRIPTOR.message_types_by_name.values():
        yield desc.name, desc
        yield from walk(desc, desc.name)


def test_package():
    assert api_pb2.DESCRIPTOR.package == "runtime.v1"


def test_facts_package(facts):
    assert facts["package"] == api_pb2.DESCRIPTOR.package


def test_every_declared_message_is_upstream(facts):
    unknown = [name for name, _ in declared_messages() if name not in facts["messages"]]
    assert not unknown, f"messages not in runtime.v1: {unknown}"


def test_every_declared_field_matches_the_wire_facts(facts):
    wrong = []
    for name, desc in declared_messages():
        expected = facts["messages"].get(name, {})
        for field in desc.fields:
            got = field.number * 100 + field.type
            want = expected.get(field.name)
            if want != got:
                wrong.append(
                    f"{name}.{field.name}: declared number {field.number} type {field.type}, "
                    + ("not in runtime.v1" if want is None else f"upstream number {want // 100} type {want % 100}")
                )
    assert not wrong, "\n".join(wrong)


def test_declared_messages_are_complete(facts):
    missing = []
    for name, desc in declared_messages():
        for field in facts["messages"][name]:
            if field not in desc.fields_by_name and f"{name}.{field}" not in OMITTED:
                missing.append(f"{name}.{field}")
    assert not missing, f"upstream fields we do not declare: {missing}"


def test_services(facts):
    services = api_pb2.DESCRIPTOR.services_by_name
    assert set(services) == {"RuntimeService", "ImageService"}
    for service, wanted in (("RuntimeService", RUNTIME_RPCS), ("ImageService", IMAGE_RPCS)):
        declared = set(services[service].methods_by_name)
        assert declared == wanted
        assert declared <= set(facts["services"][service]), declared - set(facts["services"][service])


def test_rpcs_are_unary_and_typed_by_name():
    for service in api_pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            assert not method.client_streaming and not method.server_streaming, method.full_name
            assert method.input_type.name == f"{method.name}Request", method.full_name
            assert method.output_type.name == f"{method.name}Response", method.full_name


def test_env_value_is_bytes():
    # Upstream switched KeyValue.value from string to bytes (same wire encoding).
    assert api_pb2.KeyValue(key="A", value=b"\xff").value == b"\xff"


def test_committed_stubs_match_the_proto():
    from cri import generate

    stale = generate.stale()
    assert not stale, f"stubs out of date with api.proto: {stale}; run `python -m cri.generate`"


def test_stale_stubs_are_detected(tmp_path):
    from cri import generate

    target = tmp_path / "cri"
    target.mkdir()
    for name in ("api.proto", *generate.OUTPUTS):
        (target / name).write_bytes((generate.PACKAGE_DIR / name).read_bytes())
    assert generate.stale(target) == []

    proto = target / "api.proto"
    proto.write_text(proto.read_text() + "\nmessage Extra { string x = 1; }\n")
    assert "api_pb2.py" in generate.stale(target)


def test_generation_is_deterministic():
    from cri import generate

    assert generate.render() == generate.render()
