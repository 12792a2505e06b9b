"""The fake Kubernetes API answers SelfSubjectAccessReviews as the apiserver does
(sim/fake_kube.py, ``_self_review_of``, with the upstream sources it follows), through the
official client and over raw HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from kubernetes import client, config

PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


@pytest.fixture
def authz(kube, tmp_path):
    api = config.new_client_from_config(kube.write_kubeconfig(tmp_path / "kc"))
    yield client.AuthorizationV1Api(api)
    api.close()


def review(authz, verb: str, resource: str, subresource: str | None = None, namespace: str = "traefik"):
    attrs = client.V1ResourceAttributes(namespace=namespace, verb=verb, resource=resource, subresource=subresource)
    body = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attrs))
    return authz.create_self_subject_access_review(body).status


def post(kube, body: bytes, token: str | None = "test-token") -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(kube.url + PATH, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_role_is_granted_with_rbacs_reason(authz):
    for verb, resource, sub in (("get", "pods", None), ("list", "pods", None), ("watch", "pods", None),
                                ("get", "pods", "log")):
        status = review(authz, verb, resource, sub)
        assert status.allowed is True, (verb, resource, sub)
        assert status.reason.startswith('RBAC: allowed by RoleBinding "traefik-metrics-scraper-log-reader/traefik"')
    for verb, resource, sub in (("delete", "pods", None), ("get", "secrets", None), ("create", "pods", "exec")):
        status = review(authz, verb, resource, sub)
        assert status.allowed is False and not status.reason and not status.denied, (verb, resource, sub)


def test_deny_and_forbid_answer_not_allowed_and_the_request_is_refused(kube, authz):
    kube.add_pod("traefik-a")
    kube.deny("get", "pods/log")
    assert review(authz, "get", "pods", "log").allowed is False
    assert review(authz, "get", "pods").allowed is True
    core = client.CoreV1Api(authz.api_client)
    with pytest.raises(client.ApiException) as refused:
        core.read_namespaced_pod_log("traefik-a", "traefik")
    assert refused.value.status == 403
    message = json.loads(refused.value.body)["message"]
    assert message.endswith('cannot get resource "pods/log" in API group "" in the namespace "traefik"'), message
    core.read_namespaced_pod("traefik-a", "traefik")  # the rest is still granted
    kube.deny("get", "pods/log", on=False)
    kube.deny("watch", "pods")
    with pytest.raises(client.ApiException) as refused:
        core.list_namespaced_pod("traefik", watch=True, timeout_seconds=1)
    assert 'cannot watch resource "pods"' in json.loads(refused.value.body)["message"]
    core.list_namespaced_pod("traefik")
    kube.deny("watch", "pods", on=False)
    # forbid(): nothing is granted, yet the review itself is answered (system:basic-user).
    kube.forbid()
    assert review(authz, "list", "pods").allowed is False
    with pytest.raises(client.ApiException):
        core.list_namespaced_pod("traefik")


def test_raw_answers_201_validation_and_authentication(kube):
    body = json.dumps({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                       "spec": {"resourceAttributes": {"namespace": "traefik", "verb": "list", "resource": "pods"}}})
    code, doc = post(kube, body.encode())
    assert code == 201
    assert doc["kind"] == "SelfSubjectAccessReview" and doc["apiVersion"] == "authorization.k8s.io/v1"
    assert doc["status"]["allowed"] is True
    assert doc["spec"]["resourceAttributes"]["verb"] == "list"

    code, doc = post(kube, b'{"kind": "SelfSubjectAccessReview", "spec": {}}')
    assert code == 422 and doc["reason"] == "Invalid"
    assert doc["message"].endswith("exactly one of nonResourceAttributes or resourceAttributes must be specified")

    both = {"spec": {"resourceAttributes": {"verb": "get"}, "nonResourceAttributes": {"path": "/api", "verb": "get"}}}
    code, doc = post(kube, json.dumps(both).encode())
    assert code == 422 and "cannot be specified in combination with resourceAttributes" in doc["message"]

    named = {"metadata": {"name": "x"}, "spec": {"resourceAttributes": {"verb": "get", "resource": "pods"}}}
    code, doc = post(kube, json.dumps(named).encode())
    assert code == 422 and doc["message"].endswith("must be empty")

    code, doc = post(kube, json.dumps({"spec": {"nonResourceAttributes": {"path": "/version", "verb": "get"}}}).encode())
    assert code == 201 and doc["status"]["allowed"] is True and "system:discovery" in doc["status"]["reason"]

    code, doc = post(kube, body.encode(), token=None)
    assert code == 401
