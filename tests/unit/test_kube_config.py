"""``LogSource.load_config``: where the Kubernetes config comes from, and what a worker
is told when there is none (app/kube.py)."""

from __future__ import annotations

import pytest

from app.errors import KubeError
from app.kube import LogSource


def test_no_config_outside_a_cluster_names_kubeconfig(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(KubeError, match=r"no Kubernetes config: not in a cluster; KUBECONFIG: "):
        LogSource.load_config()


def test_no_token_in_a_pod_says_why_the_service_account_failed(monkeypatch, tmp_path):
    # A pod with automountServiceAccountToken: false: the in-cluster loader's reason is
    # the news, not KUBECONFIG's (it said "not in a cluster"; a review).
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(KubeError, match=r"no Kubernetes config: in the cluster: .*token.*; KUBECONFIG: ") as info:
        LogSource.load_config()
    assert len(str(info.value).splitlines()) == 1
