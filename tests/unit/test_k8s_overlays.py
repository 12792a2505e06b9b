"""The kustomize layout (k8s/base, k8s/components/*, k8s/overlays/{dev,prod}), each overlay
rendered with ``kubectl kustomize``:

- every built-in object validates offline against the Kubernetes schemas
  (``kubernetes-validate``, strict: no unknown field); the custom resources (ServiceMonitor,
  PrometheusRule, ScaledObject, TriggerAuthentication) have their required fields;
- KEDA scales the report workers on Celery's own list for the ``report`` queue, through
  the broker's password, and the scaled Deployment has no ``replicas`` of its own;
- NetworkPolicies: everything denied, then Redis only from this application's pods (and
  KEDA's namespace with KEDA), the exporter only from Prometheus, egress only to DNS,
  Redis, the platform (report workers) and the API server (fetch workers, watcher), whose
  address each overlay sets;
- PodDisruptionBudgets for the workers that run several replicas, and only them;
- a probe on every long-running container.

The invariants of the base (one beat, durable Redis, secrets, RBAC, resources, security
contexts, Flower's auth, settings names, health probes) are checked per overlay in
test_deploy.py.
"""

from __future__ import annotations

import ipaddress

import pytest

from app.metrics import queue_keys
from app.queues import Queue
from tests.unit.test_deploy import (
    OVERLAYS,
    _containers,
    _of_kind,
    _one,
    _pod_spec,
    _workloads,
    render,
)

NAMESPACE = "traefik-metrics-scraper"
APP = {"app.kubernetes.io/name": "traefik-metrics-scraper"}
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}
BASE_PLACEHOLDER = "192.0.2.1/32"  # k8s/base/networkpolicy.yaml: reaches nothing, overlays replace it


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def docs(overlay) -> list[dict]:
    return render(overlay)


def _component(obj: dict) -> str:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")


def _deployment_labels(docs: list[dict]) -> dict[str, dict[str, str]]:
    return {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in _workloads(docs)}


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels, matchExpressions In/NotIn/Exists) against labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
    return True


# ----- schemas ------------------------------------------------------------------------------


def test_builtin_objects_validate_against_the_kubernetes_schemas(docs):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.latest_version()
    custom = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            custom.append((doc["apiVersion"], doc["kind"]))
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} is invalid for Kubernetes {version}: "
                        f"{'.'.join(map(str, e.path))}: {e.message}")
    assert set(custom) <= CUSTOM, f"objects without a schema that are not the known CRDs: {set(custom) - CUSTOM}"


def test_custom_resources_have_their_required_fields(docs, overlay):
    kinds = {(d["apiVersion"], d["kind"]) for d in docs}
    if overlay == "prod":
        assert CUSTOM <= kinds, "prod ships the ServiceMonitor, the PrometheusRule and KEDA's objects"
    else:
        assert not CUSTOM & kinds, "dev needs no Prometheus Operator or KEDA"
    services = {s["metadata"]["name"]: s for s in _of_kind(docs, "Service")}
    for sm in _of_kind(docs, "ServiceMonitor"):
        spec = sm["spec"]
        assert spec["endpoints"] and all(e.get("port") for e in spec["endpoints"])
        matched = [s for s in services.values() if _selects(spec["selector"], s["metadata"].get("labels", {}))]
        assert [s["metadata"]["name"] for s in matched] == ["metrics"]
        ports = {p["name"] for p in matched[0]["spec"]["ports"]}
        assert {e["port"] for e in spec["endpoints"]} <= ports
    for rule in _of_kind(docs, "PrometheusRule"):
        assert rule["spec"]["groups"]
        for group in rule["spec"]["groups"]:
            assert group["name"] and group["rules"]
            for r in group["rules"]:
                assert ("alert" in r) != ("record" in r) and r["expr"], r
    auths = {a["metadata"]["name"]: a for a in _of_kind(docs, "TriggerAuthentication")}
    for auth in auths.values():
        refs = auth["spec"]["secretTargetRef"]
        assert refs and all(r["parameter"] and r["name"] and r["key"] for r in refs)
    for so in _of_kind(docs, "ScaledObject"):
        spec = so["spec"]
        assert spec["scaleTargetRef"]["name"] and spec["triggers"]
        for trigger in spec["triggers"]:
            assert trigger["type"] and trigger["metadata"]
            ref = trigger.get("authenticationRef", {}).get("name")
            assert ref is None or ref in auths, ref


# ----- KEDA ------------------------------------------------------------------------------------


def test_keda_scales_report_workers_on_celerys_report_list(docs, overlay):
    scaled = _of_kind(docs, "ScaledObject")
    if overlay != "prod":
        assert not scaled
        return
    (so,) = scaled
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"name": "worker-report"}
    worker = _one(docs, "Deployment", "worker-report")
    assert "replicas" not in worker["spec"], "a Deployment scaled by KEDA has no replicas of its own"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    # The list Celery (kombu's Redis transport) keeps the report queue's messages in.
    assert meta["listName"] == queue_keys(Queue.REPORT.value)[0] == "report"
    (container,) = _containers(worker)
    assert container["command"][container["command"].index("-Q") + 1] == meta["listName"]
    assert meta["address"].split(":")[0] in ("redis", f"redis.{NAMESPACE}.svc.cluster.local")
    assert int(meta["listLength"]) > 0
    (auth,) = _of_kind(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "traefik-metrics-scraper-redis", "key": "password"}]
    for workload in ("beat", "worker-fetch"):
        assert all(so["spec"]["scaleTargetRef"]["name"] != workload for so in scaled)


# ----- network policies ---------------------------------------------------------------------


def _policies_for(docs: list[dict], labels: dict[str, str], kind: str) -> list[dict]:
    return [p for p in _of_kind(docs, "NetworkPolicy")
            if kind in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], labels)]


def test_everything_is_denied_then_allowed_per_pod(docs):
    (deny,) = [p for p in _of_kind(docs, "NetworkPolicy") if p["spec"]["podSelector"] == {}]
    assert deny["metadata"]["name"] == "default-deny"
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    for policy in _of_kind(docs, "NetworkPolicy"):
        assert policy["metadata"]["namespace"] == NAMESPACE


def test_redis_only_from_the_scrapers_pods_and_keda(docs, overlay):
    redis = _deployment_labels(docs)["redis"]
    sources = []
    for policy in _policies_for(docs, redis, "Ingress"):
        for rule in policy["spec"].get("ingress", []):
            assert [p["port"] for p in rule["ports"]] == [6379]
            sources += rule["from"]
    expected = [{"podSelector": {"matchLabels": APP}}]
    if overlay == "prod":  # the keda component
        expected.append({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}})
    assert sorted(map(str, sources)) == sorted(map(str, expected))


def test_only_prometheus_reaches_the_exporter_and_nothing_else_has_ingress(docs):
    labels = _deployment_labels(docs)
    for name, pod in labels.items():
        rules = [r for p in _policies_for(docs, pod, "Ingress") for r in p["spec"].get("ingress", [])]
        if name == "metrics":
            (rule,) = rules
            assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
            assert rule["ports"] == [{"port": 9108, "protocol": "TCP"}]
        elif name != "redis":
            assert not rules, f"{name} serves nothing: no ingress"


def _destination(rule: dict) -> set[str]:
    kinds = set()
    for to in rule["to"]:
        if "ipBlock" in to:
            kinds.add("apiserver")
        elif to.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": "kube-system"}:
            assert to["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
            assert sorted((p["port"], p["protocol"]) for p in rule["ports"]) == [(53, "TCP"), (53, "UDP")]
            kinds.add("dns")
        elif to.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "redis":
            assert [p["port"] for p in rule["ports"]] == [6379]
            kinds.add("redis")
        elif to.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": "platform"}:
            kinds.add("platform")
        else:
            pytest.fail(f"unexpected egress destination {to}")
    return kinds


def test_egress_only_to_dns_redis_the_platform_and_the_api_server(docs):
    allowed = {
        "worker-fetch": {"dns", "redis", "apiserver"},
        "watcher": {"dns", "redis", "apiserver"},
        "worker-report": {"dns", "redis", "platform"},
        "beat": {"dns", "redis"},
        "flower": {"dns", "redis"},
        "metrics": {"dns", "redis"},
        "redis": {"dns", "redis"},
    }
    for name, pod in _deployment_labels(docs).items():
        got = set()
        for policy in _policies_for(docs, pod, "Egress"):
            for rule in policy["spec"].get("egress", []):
                got |= _destination(rule)
        assert got == allowed[name], name


def test_each_overlay_sets_the_api_servers_address(docs):
    (policy,) = [p for p in _of_kind(docs, "NetworkPolicy") if p["metadata"]["name"] == "egress-apiserver"]
    (rule,) = policy["spec"]["egress"]
    cidrs = [to["ipBlock"]["cidr"] for to in rule["to"]]
    assert cidrs and BASE_PLACEHOLDER not in cidrs, "the overlay must replace the base's placeholder"
    for cidr in cidrs:
        ipaddress.ip_network(cidr)
    assert {p["port"] for p in rule["ports"]} == {443, 6443}


# ----- disruption budgets and probes ------------------------------------------------------


def test_disruption_budgets_for_multi_replica_workers_only(docs):
    scaled = {so["spec"]["scaleTargetRef"]["name"]: so["spec"] for so in _of_kind(docs, "ScaledObject")}
    deployments = {d["metadata"]["name"]: d for d in _of_kind(docs, "Deployment")}

    def min_replicas(name: str) -> int:
        if name in scaled:
            return scaled[name].get("minReplicaCount", 0)
        return deployments[name]["spec"].get("replicas", 1)

    budgets = {}
    for pdb in _of_kind(docs, "PodDisruptionBudget"):
        targets = [n for n, d in deployments.items()
                   if _selects(pdb["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        assert len(targets) == 1, pdb["metadata"]["name"]
        (target,) = targets
        assert target.startswith(("worker-", "watcher")), f"no budget for {target}"
        assert min_replicas(target) >= 2, f"{target} runs one replica: a budget would block drains"
        assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}
        budgets[target] = pdb
    workers = [n for n in deployments if n.startswith(("worker-", "watcher"))]
    assert {n for n in workers if min_replicas(n) >= 2} == set(budgets), "every multi-replica worker has one"


def test_every_long_running_container_has_probes(docs):
    for workload in _workloads(docs):
        for container in _pod_spec(workload).get("containers", []):
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert container.get("livenessProbe"), f"{where}: no liveness probe"
            if _component(workload) in ("redis", "flower", "metrics", "worker-fetch", "worker-report"):
                assert container.get("readinessProbe"), f"{where}: no readiness probe"
