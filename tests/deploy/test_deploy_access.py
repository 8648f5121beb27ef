"""Who can reach the workers: the Ingress for callers outside the cluster, the
NetworkPolicy that admits only clients and the scraper, and the ServiceMonitor's API key.
Schema validity (strict) is checked for every manifest in test_deploy_manifests.py; these
are the semantic checks no schema makes."""

from __future__ import annotations

from typing import Any

import pytest
from deploy_files import KUBE, all_objects, by_kind, containers, load_documents

OBJECTS = all_objects()
WORKERS = [
    d for d in by_kind(OBJECTS, "Deployment") if d["metadata"]["name"].startswith("embed-worker")
]
CLIENTS = by_kind(all_objects([KUBE / "client-example" / "fastapi-client.yaml"]), "Deployment")


def _one(kind: str) -> dict[str, Any]:
    (obj,) = by_kind(OBJECTS, kind)
    return obj


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels only, which is all these manifests use) against labels."""
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _admits(policy: dict[str, Any], pod_labels: dict[str, str], namespace: str) -> bool:
    """Whether a NetworkPolicy ``from`` list admits a pod with these labels, in a
    namespace whose only label is the standard kubernetes.io/metadata.name."""
    ns_labels = {"kubernetes.io/metadata.name": namespace}
    own = policy["metadata"]["namespace"]
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            pods = peer.get("podSelector")
            spaces = peer.get("namespaceSelector")
            in_ns = _matches(spaces, ns_labels) if spaces is not None else namespace == own
            if in_ns and (pods is None or _matches(pods, pod_labels)):
                return True
    return False


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def test_new_manifests_are_in_the_kustomization() -> None:
    """If this fails, `kubectl apply -k` leaves the Ingress, the policy or the Secret out."""
    names = {p.name for p in (KUBE / "kustomization.yaml").parent.glob("*.yaml")}
    resources = load_documents(KUBE / "kustomization.yaml")[0]["resources"]
    for name in ("ingress.yaml", "networkpolicy.yaml", "api-key-secret.yaml"):
        assert name in names
        assert name in resources


def test_ingress_routes_the_embedding_paths_to_a_headless_worker_service() -> None:
    """If this fails, outside callers hit a Service that does not exist, a port it does
    not have, or miss one of the embedding routes."""
    ingress = _one("Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    services = {s["metadata"]["name"]: s for s in by_kind(OBJECTS, "Service")}
    paths = set()
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            paths.add(path["path"])
            backend = path["backend"]["service"]
            service = services[backend["name"]]
            assert service["metadata"]["namespace"] == ingress["metadata"]["namespace"]
            assert service["spec"]["clusterIP"] == "None"
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert {"/embed", "/v1/embeddings"} <= paths
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/load-balance"] == "ewma"
    # POSTs are retried on another pod only because embedding requests are idempotent.
    assert "non_idempotent" in annotations["nginx.ingress.kubernetes.io/proxy-next-upstream"]


def test_network_policy_selects_every_worker_pod_and_only_them() -> None:
    """If this fails, some worker pods are left open, or the policy locks down pods that
    are not workers."""
    policy = _one("NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    selector = policy["spec"]["podSelector"]
    for worker in WORKERS:
        assert _matches(selector, _pod_labels(worker))
    for client in CLIENTS:
        assert not _matches(selector, _pod_labels(client))


@pytest.mark.parametrize(
    ("who", "labels", "namespace", "admitted"),
    [
        ("labelled client anywhere", {"embedbalance/client": "true"}, "search", True),
        ("example client app", {"app.kubernetes.io/name": "embed-client"}, "embeddings", True),
        ("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}, "ingress-nginx", True),
        ("prometheus", {"app.kubernetes.io/name": "prometheus"}, "monitoring", True),
        ("unlabelled pod in the namespace", {"app": "other"}, "embeddings", False),
        ("prometheus elsewhere", {"app.kubernetes.io/name": "prometheus"}, "default", False),
        (
            "example app's label elsewhere",
            {"app.kubernetes.io/name": "embed-client"},
            "default",
            False,
        ),
    ],
)
def test_network_policy_admits_only_clients_and_the_scraper(
    who: str, labels: dict[str, str], namespace: str, admitted: bool
) -> None:
    """If this fails, the policy lets in someone it should not, or shuts out a caller
    the docs promise (clients, the ingress controller, the scraper)."""
    assert _admits(_one("NetworkPolicy"), labels, namespace) is admitted, who


def test_network_policy_admits_the_shipped_client_and_only_the_worker_port() -> None:
    """If this fails, the example client Deployment is cut off from the workers, or the
    policy opens ports the workers do not serve on."""
    policy = _one("NetworkPolicy")
    for client in CLIENTS:
        assert _admits(policy, _pod_labels(client), client["metadata"]["namespace"])
    worker_ports = {p["name"] for w in WORKERS for c in containers(w) for p in c["ports"]}
    for rule in policy["spec"]["ingress"]:
        assert [p["port"] for p in rule["ports"]] == ["http"]
        assert "http" in worker_ports


def test_servicemonitor_sends_the_workers_api_key() -> None:
    """If this fails, scraping breaks as soon as workers require an API key: the
    ServiceMonitor's bearer token must come from the Secret the workers' key lives in."""
    (monitor,) = by_kind(OBJECTS, "ServiceMonitor")
    secrets = {s["metadata"]["name"]: s for s in by_kind(OBJECTS, "Secret")}
    for endpoint in monitor["spec"]["endpoints"]:
        auth = endpoint["authorization"]
        assert auth["type"] == "Bearer"
        secret = secrets[auth["credentials"]["name"]]
        assert secret["metadata"]["namespace"] == monitor["metadata"]["namespace"]
        assert auth["credentials"]["key"] in secret["stringData"]
