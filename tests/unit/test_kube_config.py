"""``LogSource.load_config``: where the Kubernetes config comes from, and what a worker
is told when there is none (app/kube.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.errors import KubeError
from app.kube import LogSource

ROOT = Path(__file__).resolve().parents[2]


def _fresh_interpreter(tmp_path, code: str) -> list[str]:
    """What ``code`` prints, split into words, run by a fresh interpreter (this one may
    have imported the client already) with a kubeconfig of an API nothing serves and a
    Redis URL nothing serves (no connection is made)."""
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {token: t}}]\n")
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"} | {
        "KUBECONFIG": str(kubeconfig), "REDIS_URL": "redis://127.0.0.1:1/0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


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


def test_the_start_check_imports_the_pod_api_so_the_first_round_does_not(tmp_path):
    # The client imports CoreV1Api (a 4 MiB module, up to 1.9 s of CPU) at first use: a
    # fetch worker paid it in its first round (bench/backlog.py). Its start check does now.
    code = ("import sys; from app import runtime; "
            "before = 'kubernetes.client.api.core_v1_api' in sys.modules; runtime.check_kube_config(); "
            "print(before, 'kubernetes.client.api.core_v1_api' in sys.modules)")
    assert _fresh_interpreter(tmp_path, code) == ["False", "True"]


@pytest.mark.parametrize("text", ["just a string\n", "- a\n- b\n", "not: [valid\n", "clusters: 5\ncurrent-context: c\n",
                                  "\udcff\udcfe"])
def test_a_file_that_is_not_a_kubeconfig_is_a_kube_error(monkeypatch, tmp_path, text):
    # The loader raised TypeError, yaml's ParserError or UnicodeDecodeError: not KubeError,
    # so a fetch worker's start check let them through and the worker started (a review).
    path = tmp_path / "config"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(path))
    with pytest.raises(KubeError, match=r"KUBECONFIG: not a kubeconfig file \(\w+: ") as info:
        LogSource.load_config()
    assert len(str(info.value).splitlines()) == 1


def test_a_report_workers_processes_do_not_import_the_kubernetes_client(tmp_path):
    # runtime.init_process created a log source in every prefork child, so a report
    # worker's children imported the client (~8 MB each; with a kubeconfig CoreV1Api too,
    # 96 MB of maxrss against 74: a review). The worker's start tells it whether it fetches.
    code = ("import sys; from app import runtime; runtime.init_process(fetches=False); "
            "print('kubernetes' in sys.modules); runtime.init_process(fetches=True); print('kubernetes' in sys.modules)")
    assert _fresh_interpreter(tmp_path, code) == ["False", "True"]


_KUBECONFIG = """apiVersion: v1
kind: Config
current-context: c
clusters: [{{name: c, cluster: {cluster}}}]
contexts: [{{name: c, context: {{cluster: c, user: u}}}}]
users: [{users}]
"""


@pytest.mark.parametrize(("cluster", "users", "why"), [
    # The client took each of these and failed every request after (a review's trial).
    ("{insecure-skip-tls-verify: true}", "{name: u, user: {token: t}}", "its cluster has no server"),
    ("{server: 'https://127.0.0.1:9', proxy-url: '::::user:SEKRET@'}", "{name: u, user: {token: t}}",
     "not a kubeconfig file ("),  # ProxySchemeUnknown, LocationParseError: both ValueError
    ("{server: 'https://127.0.0.1:9'}",
     "{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1beta1, command: /nonexistent/SEKRET}}}",
     "its exec credential plugin failed: "),
    # The loader's own message quoted the whole user entry, token included.
    ("{server: 'https://127.0.0.1:9'}", "{name: u, token: SEKRET-TOKEN}", "Invalid kube-config file. Expected key user"),
])
def test_a_kubeconfig_the_client_takes_but_cannot_use_is_refused_without_its_content(monkeypatch, tmp_path, cluster,
                                                                                    users, why):
    path = tmp_path / "config"
    path.write_text(_KUBECONFIG.format(cluster=cluster, users=users))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(path))
    with pytest.raises(KubeError) as info:
        LogSource.load_config()
    line = str(info.value)
    assert f"KUBECONFIG: {why}" in line and len(line.splitlines()) == 1
    assert "SEKRET" not in line


def test_a_kubeconfig_nested_past_the_parsers_recursion_is_refused(monkeypatch, tmp_path):
    path = tmp_path / "config"
    path.write_text("[" * 5000 + "]" * 5000)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(path))
    with pytest.raises(KubeError, match=r"KUBECONFIG: not a kubeconfig file \((RecursionError|\w+Error): "):
        LogSource.load_config()
