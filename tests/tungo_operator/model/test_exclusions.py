"""cluster_exclusions: the CIDRs a gateway keeps off its tunnel, each with its source, the fallbacks when
the cluster cannot tell, the problems reported, and the raw API values read from Nodes and Services."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from tungo_operator.model.exclusions import (
    ClusterFacts,
    DiscoveryConfig,
    Exclusion,
    ServiceLookup,
    cluster_exclusions,
    node_pod_cidrs,
    service_cidrs,
    service_cluster_ips,
)
from tungo_operator.model.gateway import Gateway, parse_gateway

BASE: dict[str, Any] = {
    "metadata": {"name": "gw", "namespace": "demo"},
    "spec": {"chainRef": {"name": "egress"}},
}
DNS = ServiceLookup("kube-system", "kube-dns", ("10.96.0.10",))
KUBERNETES = ServiceLookup("default", "kubernetes", ("10.96.0.1",))
CLUSTER = ClusterFacts(
    service_cidrs=(("kubernetes", ("10.96.0.0/12",)),),
    nodes=(("worker-1", ("10.244.1.0/24",)), ("worker-2", ("10.244.0.0/24",))),
    dns=DNS,
    kubernetes=KUBERNETES,
)
LINK_LOCAL = [Exclusion("169.254.0.0/16", "link-local"), Exclusion("fe80::/10", "link-local")]


def gateway(**spec: Any) -> Gateway:
    doc = copy.deepcopy(BASE)
    doc["spec"].update(spec)
    return parse_gateway(doc)


def test_a_discovered_cluster_gives_every_range_with_its_source() -> None:
    result = cluster_exclusions(gateway(excludedCIDRs=["172.31.0.0/16"]), CLUSTER)
    assert result.entries == (
        Exclusion("10.96.0.0/12", "ServiceCIDR/kubernetes"),
        Exclusion("10.96.0.10/32", "Service kube-system/kube-dns"),
        Exclusion("10.244.0.0/24", "Node/worker-2 podCIDRs"),
        Exclusion("10.244.1.0/24", "Node/worker-1 podCIDRs"),
        Exclusion("169.254.0.0/16", "link-local"),
        Exclusion("172.31.0.0/16", "spec.excludedCIDRs"),
        Exclusion("fe80::/10", "link-local"),
    )
    assert result.problems == () and result.cluster is True
    # The kubernetes Service's ClusterIP lies in the ServiceCIDR: no entry of its own.
    assert "10.96.0.1/32" not in result.cidrs
    assert result.cidrs == tuple(e.cidr for e in result.entries)
    assert result.as_status()[0] == {"cidr": "10.96.0.0/12", "source": "ServiceCIDR/kubernetes"}


def test_order_is_stable_whatever_order_the_facts_come_in() -> None:
    nodes = [(f"n{i}", (f"10.244.{i}.0/24", f"fd00:10:244:{i:x}::/64")) for i in range(40)]
    shuffled = list(nodes)
    random.Random(7).shuffle(shuffled)
    one = cluster_exclusions(gateway(), ClusterFacts(nodes=tuple(nodes), dns=DNS))
    other = cluster_exclusions(gateway(), ClusterFacts(nodes=tuple(shuffled), dns=DNS))
    assert one.cidrs == other.cidrs
    # IPv4 before IPv6, then by address (numerically: 10.244.9.0 before 10.244.10.0), then by prefix.
    v4 = [c for c in one.cidrs if ":" not in c]
    assert one.cidrs[: len(v4)] == tuple(v4) and v4.index("10.244.9.0/24") < v4.index("10.244.10.0/24")


def test_the_same_cidr_from_two_sources_is_one_entry_naming_both() -> None:
    result = cluster_exclusions(gateway(excludedCIDRs=["10.96.0.0/12", "169.254.0.0/16"]), CLUSTER)
    assert result.cidrs.count("10.96.0.0/12") == 1
    entries = {e.cidr: e.source for e in result.entries}
    assert entries["10.96.0.0/12"] == "spec.excludedCIDRs, ServiceCIDR/kubernetes"
    assert entries["169.254.0.0/16"] == "spec.excludedCIDRs, link-local"


def test_cluster_exclusions_false_keeps_only_the_users_list_sorted() -> None:
    result = cluster_exclusions(
        gateway(clusterExclusions=False, excludedCIDRs=["fd00::/8", "192.0.2.0/24", "10.0.0.0/8"]), CLUSTER
    )
    assert result.cidrs == ("10.0.0.0/8", "192.0.2.0/24", "fd00::/8")
    assert {e.source for e in result.entries} == {"spec.excludedCIDRs"}
    assert result.problems == () and result.cluster is False
    assert cluster_exclusions(gateway(clusterExclusions=False), CLUSTER).entries == ()


def test_without_servicecidr_objects_the_configured_range_is_used() -> None:
    facts = ClusterFacts(
        config=DiscoveryConfig(service_cidrs=("10.96.0.0/12",)),
        nodes=CLUSTER.nodes,
        dns=DNS,
        kubernetes=KUBERNETES,
    )
    result = cluster_exclusions(gateway(), facts)
    assert Exclusion("10.96.0.0/12", "operator --service-cidr") in result.entries
    assert "10.96.0.1/32" not in result.cidrs and result.problems == ()
    # ServiceCIDR objects win over the configured range: it is only the fallback.
    both = ClusterFacts(config=facts.config, service_cidrs=(("kubernetes", ("10.43.0.0/16",)),), dns=DNS)
    assert "10.96.0.0/12" not in cluster_exclusions(gateway(), both).cidrs


def test_a_configured_range_missing_the_kubernetes_clusterip_is_reported() -> None:
    facts = ClusterFacts(
        config=DiscoveryConfig(service_cidrs=("10.0.0.0/16",)),
        nodes=CLUSTER.nodes,
        dns=DNS,
        kubernetes=KUBERNETES,
    )
    result = cluster_exclusions(gateway(), facts)
    assert Exclusion("10.96.0.1/32", "Service default/kubernetes") in result.entries
    assert result.problems == (
        "the kubernetes Service's ClusterIP 10.96.0.1 is outside the service CIDRs (10.0.0.0/16): "
        "check tungo-operator --service-cidr (chart clusterExclusions.serviceCIDRs)",
    )


def test_a_dual_stack_clusterip_without_a_range_of_its_family_is_reported() -> None:
    facts = ClusterFacts(
        service_cidrs=(("kubernetes", ("10.96.0.0/12",)),),
        nodes=CLUSTER.nodes,
        dns=DNS,
        kubernetes=ServiceLookup("default", "kubernetes", ("10.96.0.1", "fd00:10:96::1")),
    )
    result = cluster_exclusions(gateway(), facts)
    assert Exclusion("fd00:10:96::1/128", "Service default/kubernetes") in result.entries
    assert len(result.problems) == 1
    assert "fd00:10:96::1 is IPv6 but no IPv6 service CIDR is known" in result.problems[0]


def test_an_unknown_service_range_excludes_the_clusterips_and_says_how_to_fix_it() -> None:
    facts = ClusterFacts(nodes=CLUSTER.nodes, dns=DNS, kubernetes=KUBERNETES)
    result = cluster_exclusions(gateway(), facts)
    assert result.cidrs == (
        "10.96.0.1/32",
        "10.96.0.10/32",
        "10.244.0.0/24",
        "10.244.1.0/24",
        "169.254.0.0/16",
        "fe80::/10",
    )
    (problem,) = result.problems
    assert problem.startswith("service CIDR unknown: the API has no networking.k8s.io/v1 ServiceCIDR")
    assert "chart clusterExclusions.serviceCIDRs" in problem
    assert "the kubernetes Service's ClusterIP 10.96.0.1 lies in it" in problem


def test_pod_ranges_fall_back_to_the_configured_ones_only_when_no_node_has_any() -> None:
    config = DiscoveryConfig(pod_cidrs=("10.244.0.0/16",))
    facts = ClusterFacts(config=config, service_cidrs=CLUSTER.service_cidrs, dns=DNS)
    result = cluster_exclusions(gateway(), facts)
    assert Exclusion("10.244.0.0/16", "operator --pod-cidr") in result.entries and result.problems == ()
    with_nodes = ClusterFacts(
        config=config, service_cidrs=CLUSTER.service_cidrs, nodes=CLUSTER.nodes, dns=DNS
    )
    assert "10.244.0.0/16" not in cluster_exclusions(gateway(), with_nodes).cidrs

    unknown = cluster_exclusions(gateway(), ClusterFacts(service_cidrs=CLUSTER.service_cidrs, dns=DNS))
    (problem,) = unknown.problems
    assert problem.startswith("pod CIDRs unknown: no Node has spec.podCIDRs")
    assert "chart clusterExclusions.podCIDRs" in problem


@pytest.mark.parametrize(
    ("dns", "problem"),
    [
        (
            ServiceLookup("kube-system", "kube-dns", found=False),
            "DNS Service kube-system/kube-dns not found: set tungo-operator --dns-service",
        ),
        (
            ServiceLookup(
                "kube-system", "kube-dns", found=False, error="Kubernetes API error 403: forbidden"
            ),
            "DNS Service kube-system/kube-dns could not be read: Kubernetes API error 403: forbidden",
        ),
        (ServiceLookup("kube-system", "kube-dns"), "DNS Service kube-system/kube-dns has no ClusterIP"),
    ],
    ids=["missing", "unreadable", "headless"],
)
def test_a_dns_service_that_gives_no_address_is_reported(dns: ServiceLookup, problem: str) -> None:
    facts = ClusterFacts(service_cidrs=CLUSTER.service_cidrs, nodes=CLUSTER.nodes, dns=dns)
    result = cluster_exclusions(gateway(), facts)
    (found,) = result.problems
    assert found.startswith(problem)
    assert not [e for e in result.entries if e.source.startswith("Service kube-system/")]


def test_discovery_off_gives_link_local_and_the_configured_ranges() -> None:
    config = DiscoveryConfig(enabled=False, service_cidrs=("10.96.0.0/12",), pod_cidrs=("10.244.0.0/16",))
    result = cluster_exclusions(gateway(), ClusterFacts(config=config))
    assert list(result.entries) == [
        Exclusion("10.96.0.0/12", "operator --service-cidr"),
        Exclusion("10.244.0.0/16", "operator --pod-cidr"),
        LINK_LOCAL[0],
        LINK_LOCAL[1],
    ]
    (problem,) = result.problems  # one line, not one per range it did not look for
    assert problem.startswith("cluster discovery is off (tungo-operator --no-cluster-discovery)")


def test_malformed_discovered_values_are_reported_and_skipped() -> None:
    facts = ClusterFacts(
        service_cidrs=(("kubernetes", ("10.96.0.0/12", "banana")),),
        nodes=(("worker-1", ("10.244.1.7/24",)),),  # host bits: the network is meant
        dns=ServiceLookup("kube-system", "kube-dns", ("10.96.0.0/24",)),
        kubernetes=KUBERNETES,
    )
    result = cluster_exclusions(gateway(), facts)
    assert "10.244.1.0/24" in result.cidrs and "10.96.0.0/24" not in result.cidrs
    assert result.problems == (
        "ServiceCIDR/kubernetes: 'banana' is not a CIDR; ignored",
        "Service kube-system/kube-dns: '10.96.0.0/24' is not an IP address; ignored",
    )


def test_raw_api_values() -> None:
    assert node_pod_cidrs({"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00::/64"]}) == (
        "10.244.1.0/24",
        "fd00::/64",
    )
    assert node_pod_cidrs({"podCIDR": "10.244.1.0/24"}) == ("10.244.1.0/24",)  # before podCIDRs existed
    assert node_pod_cidrs({}) == () and node_pod_cidrs({"podCIDRs": "junk"}) == ("junk",)
    assert node_pod_cidrs({"podCIDRs": [None, 3, ""]}) == ()
    assert service_cidrs({"cidrs": ["10.96.0.0/12", "fd00:10:96::/112"]}) == (
        "10.96.0.0/12",
        "fd00:10:96::/112",
    )
    assert service_cluster_ips({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::a"]}) == (
        "10.96.0.10",
        "fd00::a",
    )
    assert service_cluster_ips({"clusterIP": "10.96.0.10"}) == ("10.96.0.10",)
    assert service_cluster_ips({"clusterIP": "None", "clusterIPs": ["None"]}) == ()  # headless
    assert service_cluster_ips({"type": "ExternalName"}) == ()
