"""pyproxy.model: Services and EndpointSlices (API dicts) into what the proxy programs."""

from __future__ import annotations

import logging

from pyproxy.model import Endpoint, ServicePort, endpoints_from_slices, services_from_api


def svc(**spec) -> dict:
    base = {"type": "ClusterIP", "clusterIP": "10.232.0.10", "clusterIPs": ["10.232.0.10"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    base.update(spec)
    return {"metadata": {"namespace": "ns", "name": "web"}, "spec": base}


def eps_slice(endpoints, *, ports=None, name="web-x", service="web", address_type="IPv4") -> dict:
    return {"metadata": {"namespace": "ns", "name": name, "labels": {"kubernetes.io/service-name": service}},
            "addressType": address_type,
            "ports": ports if ports is not None else [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints}


def test_cluster_ip_service_defaults():
    [port] = services_from_api(svc())
    assert port == ServicePort(namespace="ns", name="web", port_name="http", protocol="TCP", port=80,
                               cluster_ips=("10.232.0.10",))
    assert port.key == ("ns", "web", "http")
    assert port.name_string == "ns/web:http"
    assert not port.externally_accessible


def test_unnamed_port_name_string():
    [port] = services_from_api(svc(ports=[{"port": 53, "protocol": "UDP"}]))
    assert port.name_string == "ns/web" and port.protocol == "UDP" and port.port_name == ""


def test_load_balancer_full_shape():
    service = svc(type="LoadBalancer", externalIPs=["192.0.2.9", "bogus"], externalTrafficPolicy="Local",
                  healthCheckNodePort=32000, loadBalancerSourceRanges=["203.0.113.0/25", " 198.51.100.7 ", "x"],
                  sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
                  internalTrafficPolicy="Local",
                  ports=[{"name": "http", "port": 80, "nodePort": 30080},
                         {"name": "sctp", "port": 9, "protocol": "SCTP", "nodePort": 30009}])
    service["status"] = {"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}, {"hostname": "lb.example"},
                                                      {"ip": "5.6.7.9", "ipMode": "Proxy"}]}}
    http, sctp = services_from_api(service)
    assert http.node_port == 30080 and sctp.protocol == "SCTP" and sctp.node_port == 30009
    assert http.external_ips == ("192.0.2.9",)
    assert http.load_balancer_ips == ("5.6.7.8",)  # hostnames and ipMode Proxy are not programmed
    assert http.load_balancer_source_ranges == ("203.0.113.0/25", "198.51.100.7/32")
    assert http.session_affinity == "ClientIP" and http.affinity_timeout == 60
    assert http.external_policy_local and http.internal_policy_local
    assert http.health_check_node_port == 32000
    assert http.uses_local_endpoints and http.uses_cluster_endpoints  # externally reachable: short circuit


def test_affinity_default_timeout_and_policies():
    [port] = services_from_api(svc(sessionAffinity="ClientIP"))
    assert port.affinity_timeout == 10800
    assert port.uses_cluster_endpoints and not port.uses_local_endpoints
    # ETP Local without external access does not make the service use local endpoints.
    [port] = services_from_api(svc(externalTrafficPolicy="Local"))
    assert not port.external_policy_local


def test_skipped_services(caplog):
    caplog.set_level(logging.DEBUG, logger="pyproxy")
    assert services_from_api(svc(clusterIP="None", clusterIPs=["None"])) == []
    assert services_from_api({"metadata": {"name": "x"}, "spec": {"type": "ExternalName"}}) == []
    assert services_from_api({"metadata": {}, "spec": {}}) == []
    assert services_from_api(svc(clusterIP="999.1.1.1", clusterIPs=["999.1.1.1"])) == []
    assert services_from_api({"metadata": "nonsense", "spec": []}) == []  # malformed: no exception
    assert services_from_api(svc(ports=[{"port": 80, "protocol": "ICMP"}, {"port": 0}, {"port": "80"},
                                        {"name": "a", "port": 81}, {"name": "a", "port": 82}])) == [
        ServicePort(namespace="ns", name="web", port_name="a", protocol="TCP", port=81,
                    cluster_ips=("10.232.0.10",))]
    assert any("ICMP" in r.getMessage() for r in caplog.records)
    assert any("duplicate" in r.getMessage() for r in caplog.records)


def test_endpoints_conditions_and_dedup():
    slices = [
        eps_slice([{"addresses": ["10.231.0.12"], "conditions": {"ready": True}, "nodeName": "n1", "zone": "a",
                    "hints": {"forZones": [{"name": "a"}]}},
                   {"addresses": ["10.231.0.11"], "conditions": {}},  # nil ready means ready
                   {"addresses": ["10.231.0.13"], "conditions": {"ready": False, "serving": True,
                                                                 "terminating": True}}]),
        eps_slice([{"addresses": ["10.231.0.12"], "conditions": {"ready": True}}], name="web-y"),
    ]
    got = endpoints_from_slices(slices)
    assert list(got) == [("ns", "web", "http")]
    eps = got[("ns", "web", "http")]
    assert [str(e) for e in eps] == ["10.231.0.11:8080", "10.231.0.12:8080", "10.231.0.13:8080"]
    assert eps[0] == Endpoint(ip="10.231.0.11", port=8080)
    assert eps[1].node_name == "n1" and eps[1].zone == "a" and eps[1].zone_hints == ("a",)
    assert (eps[2].ready, eps[2].serving, eps[2].terminating) == (False, True, True)


def test_endpoints_multi_port_and_bad_input(caplog):
    caplog.set_level(logging.DEBUG, logger="pyproxy")
    ports = [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"},
             {"name": "bad", "port": 99999}]
    slices = [
        eps_slice([{"addresses": ["10.231.0.11"]}, {"addresses": []}, {"addresses": ["nope"]}], ports=ports),
        eps_slice([{"addresses": ["x.example"]}], address_type="FQDN", name="fq"),
        {"metadata": {"namespace": "ns", "name": "orphan"}, "addressType": "IPv4", "endpoints": []},
        "garbage",
    ]
    got = endpoints_from_slices(slices)
    assert sorted(got) == [("ns", "web", "dns"), ("ns", "web", "http")]
    assert [str(e) for e in got[("ns", "web", "dns")]] == ["10.231.0.11:5353"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "FQDN" in messages and "malformed" in messages
