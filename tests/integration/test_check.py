"""``traefik-metrics-scraper check`` run as a command against a real redis-server, the fake
Kubernetes API (which answers SelfSubjectAccessReviews as the apiserver does) and the
platform stub: every check passes on a good setup, and each way of being wrong is one
clear FAIL line with what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sim.procs import free_port
from tests.traffic import TRAEFIK_TEXT, Traffic

ROOT = Path(__file__).resolve().parents[2]
CLF = (b'10.0.0.9 - - [24/Nov/2026:03:12:03 +0000] "GET /a HTTP/1.1" 200 10 "-" "curl/8.11.0" '
       b'12 "tunnel@file" "http://127.0.0.1:8080" 1ms')


@pytest.fixture
def env(tmp_path, redis_url, kube, platform) -> dict[str, str]:
    names = ("CELERY_", "REDIS_", "PLATFORM_", "FETCH_", "REPORT_", "TRAEFIK_", "TUNNEL_", "LOG_", "KUBECONFIG",
             "START_AT", "SCRAPER_ID")
    out = {k: v for k, v in os.environ.items() if not k.startswith(names)}
    out.update({"PYTHONPATH": str(ROOT), "REDIS_URL": redis_url, "KUBECONFIG": kube.write_kubeconfig(tmp_path / "kc"),
                "PLATFORM_API_URL": platform.url, "PLATFORM_INTERNAL_SECRET": platform.secret})
    return out


def check(env: dict[str, str], *args: str, **more: str) -> tuple[int, dict[str, str], str]:
    """Run the command (with ``args``); (exit status, {check name: its line}, all output)."""
    proc = subprocess.run([sys.executable, "-m", "app", "check", *args], env={**env, **more}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    lines = {}
    for line in proc.stdout.splitlines():
        status, rest = line[:5].strip(), line[6:]
        name = rest[:14].strip()
        lines[name] = f"{status} {rest[14:].strip()}"
    return proc.returncode, lines, proc.stdout + proc.stderr


def traefik_pod(kube, name: str = "traefik-a", lines: list[bytes] | None = None) -> None:
    kube.add_pod(name)
    for line in lines if lines is not None else [TRAEFIK_TEXT, *Traffic(seed=1).lines(30)]:
        kube.write(name, line)


def test_a_good_setup_passes_every_check(env, kube, platform):
    traefik_pod(kube)
    kube.add_pod("other", labels={"app": "nginx"})
    code, lines, out = check(env)
    print(out)  # the README shows this output
    assert code == 0, out
    assert set(lines) == {"redis", "ledger", "kubernetes", "permissions", "pods", "access log", "tunnel domain",
                          "platform"}, out
    for name, line in lines.items():
        assert line.startswith("OK ") or name == "ledger", out
    assert "appendonly yes, appendfsync always, maxmemory-policy noeviction" in lines["redis"]
    assert "list pods, watch pods, get pods, get pods/log in namespace traefik" in lines["permissions"]
    assert "1 pod(s) match" in lines["pods"] and "traefik-a" in lines["pods"]
    assert "no request sent" in lines["platform"]
    # Nothing was sent to the platform, and only the reviews were POSTed to the API.
    assert not platform.records
    posts = {path for method, path, _ in kube.requests if method != "GET"}
    assert posts == {"/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"}


def test_a_missing_permission(env, kube):
    traefik_pod(kube)
    kube.deny("get", "pods/log")
    code, lines, out = check(env)
    print(out)
    assert code == 1
    assert lines["permissions"] == (
        "FAIL missing in namespace traefik: get pods/log -> apply the Role and RoleBinding of k8s/base/rbac.yaml "
        "in namespace traefik (pods get/list/watch, pods/log get) for this ServiceAccount"
    ), out
    assert lines["pods"].startswith("OK ")
    assert lines["access log"].startswith("FAIL ") and "cannot get resource \"pods/log\"" in lines["access log"]


def test_no_permission_at_all(env, kube):
    """forbid(): every request is refused, yet the reviews are answered (system:basic-user)."""
    traefik_pod(kube)
    kube.forbid()
    code, lines, out = check(env)
    assert code == 1
    assert "missing in namespace traefik: list pods, watch pods, get pods, get pods/log" in lines["permissions"], out
    assert lines["pods"].startswith("FAIL ") and "HTTP 403" in lines["pods"]
    assert lines["access log"].startswith("SKIP ") and lines["tunnel domain"].startswith("SKIP ")


def test_a_clf_pod(env, kube):
    traefik_pod(kube, lines=[TRAEFIK_TEXT, CLF, CLF, CLF])
    code, lines, out = check(env)
    print(out)
    assert code == 1
    assert lines["access log"] == (
        "FAIL pod traefik-a writes its access log in CLF (3 of 4 lines): it has no Host and no request size, "
        "so nothing can be metered -> set Traefik's accessLog.format to json"
    ), out
    assert lines["tunnel domain"].startswith("SKIP ")


def test_only_traefiks_own_lines_or_no_tunnel_traffic(env, kube):
    traefik_pod(kube, lines=[TRAEFIK_TEXT] * 5)
    code, lines, out = check(env)
    assert code == 1 and lines["access log"].startswith("FAIL pod traefik-a: 0 of its newest 5 lines"), out
    assert "accessLog.format=json, no accessLog.filePath" in lines["access log"]

    kube.delete("traefik-a")
    other = Traffic(seed=2, domain="example.org")
    traefik_pod(kube, "traefik-b", lines=other.lines(10))
    code, lines, out = check(env)
    assert code == 1
    assert lines["access log"].startswith("OK "), out
    assert lines["tunnel domain"].startswith("FAIL none of the 10 access lines is for *.t.lum.tools"), out


def test_no_pod_matches(env, kube):
    kube.add_pod("other", labels={"app": "nginx"})
    code, lines, out = check(env, TRAEFIK_LABEL_SELECTOR="app.kubernetes.io/name=traefik")
    assert code == 1
    assert lines["pods"].startswith("FAIL no pod in namespace traefik matches app.kubernetes.io/name=traefik"), out


def test_a_wrong_redis_url(env, kube):
    traefik_pod(kube)
    port = free_port()  # nothing listens there
    code, lines, out = check(env, REDIS_URL=f"redis://:hunter2-secret@127.0.0.1:{port}/3")
    print(out)
    assert code == 1
    assert lines["redis"].startswith(f"FAIL redis://127.0.0.1:{port}/3: ConnectionError"), out
    assert lines["redis"].endswith("-> check REDIS_URL (host, port, database, password) and that Redis runs")
    assert lines["ledger"].startswith("SKIP ")
    assert "hunter2-secret" not in out
    assert lines["permissions"].startswith("OK "), "the other checks still run"


def test_a_redis_that_may_forget(env, kube, r):
    traefik_pod(kube)
    r.config_set("appendfsync", "everysec")
    try:
        code, lines, out = check(env)
    finally:
        r.config_set("appendfsync", "always")
    assert code == 1
    assert "appendfsync everysec" in lines["redis"] and "set appendfsync always" in lines["redis"], out


def test_an_unreachable_platform(env, kube):
    traefik_pod(kube)
    port = free_port()
    code, lines, out = check(env, PLATFORM_API_URL=f"http://127.0.0.1:{port}")
    assert code == 1
    assert lines["platform"].startswith(f"FAIL 127.0.0.1:{port}: ConnectionRefusedError"), out


def test_tls_platform_is_verified(env, kube):
    """An https platform gets a TLS handshake with certificate verification: the plain-HTTP
    stub fails it."""
    traefik_pod(kube)
    url = env["PLATFORM_API_URL"].replace("http://", "https://")
    code, lines, out = check(env, PLATFORM_API_URL=url)
    assert code == 1 and lines["platform"].startswith("FAIL ") and "TLS" in lines["platform"], out



# LOG_SOURCE=file: the files instead of the Kubernetes API ----------------------------------------


def file_env(env: dict[str, str], tmp_path, lines: list[bytes]) -> dict[str, str]:
    logs = tmp_path / "traefik"
    logs.mkdir()
    (logs / "access.log").write_bytes(b"".join(line + b"\n" for line in lines))
    (logs / "access.log.1.gz").write_bytes(b"\x1f\x8b\x08\x00")  # a rotated, compressed one
    return {**env, "LOG_SOURCE": "file", "LOG_FILES": str(logs / "access.log*")}


def test_file_mode_checks_the_files(env, tmp_path, kube):
    code, lines, out = check(file_env(env, tmp_path, Traffic(seed=2).lines(30)))
    print(out)
    assert code == 0, out
    assert set(lines) == {"redis", "ledger", "files", "access log", "tunnel domain", "platform"}, out
    assert lines["files"].startswith("OK 1 file(s) match") and "1 compressed file(s) skipped" in lines["files"]
    assert lines["access log"].startswith("OK file ") and lines["tunnel domain"].startswith("OK ")
    assert not kube.requests  # no Kubernetes API in file mode


def test_file_mode_reports_clf_and_missing_files(env, tmp_path):
    code, lines, out = check(file_env(env, tmp_path, [CLF] * 4))
    assert code == 1
    assert "writes its access log in CLF (4 of 4 lines)" in lines["access log"] and "accessLog.format to json" in out
    assert lines["tunnel domain"].startswith("SKIP")
    code, lines, out = check({**env, "LOG_SOURCE": "file", "LOG_FILES": str(tmp_path / "nowhere" / "*.log")})
    assert code == 1
    assert lines["files"].startswith("FAIL LOG_FILES=") and "matches no readable log file" in lines["files"]
    assert lines["access log"].startswith("SKIP") and lines["tunnel domain"].startswith("SKIP")


def test_skip_what_the_network_policy_keeps_this_pod_from(env, kube):
    # The manifests' NetworkPolicy: a fetch worker reaches the API server but not the
    # platform, a report worker the platform but not the API server. Unreachable, each
    # was a FAIL for a good deployment (a review of the check).
    traefik_pod(kube)
    status, lines, out = check(env, "--skip", "platform", PLATFORM_API_URL="http://10.255.255.1:3000")  # dropped
    assert status == 0, out
    assert lines["platform"] == "SKIP --skip platform" and lines["pods"].startswith("OK"), out
    status, lines, out = check(env, "--skip", "kubernetes", KUBECONFIG="/nonexistent")
    assert status == 0, out
    assert {n for n, line in lines.items() if line.startswith("SKIP")} == {"kubernetes", "permissions", "pods",
                                                                          "access log", "tunnel domain"}, out
    assert lines["platform"].startswith("OK") and lines["redis"].startswith("OK"), out


def test_a_ledger_made_under_another_scraper_id_fails_the_ledger_check(env, kube, redis_url, r):
    from app.ledger import Ledger

    traefik_pod(kube)
    Ledger(r, "tms", 60).initialise(0, scraper_id="default")
    code, lines, out = check(env, "--skip", "kubernetes", REDIS_KEY_PREFIX="tms")
    assert code == 0, out
    assert lines["ledger"] == ("OK initialised under prefix 'tms', reports made with REPORT_INTERVAL=60 and "
                               "SCRAPER_ID='default'"), out
    code, lines, out = check(env, "--skip", "kubernetes", REDIS_KEY_PREFIX="tms", SCRAPER_ID="cluster-b")
    assert code == 1, out
    assert lines["ledger"].startswith("FAIL SCRAPER_ID is 'cluster-b' but the ledger under prefix 'tms' makes its "
                                      "reports with SCRAPER_ID='default'"), out
    code, lines, out = check(env, "--skip", "kubernetes", REDIS_KEY_PREFIX="tms", REPORT_INTERVAL="30",
                             FETCH_INTERVAL="10")
    assert code == 1 and lines["ledger"].startswith("FAIL REPORT_INTERVAL is '30'"), out
    assert Ledger(r, "tms", 60).init_record()["scraper_id"] == "default"  # check changes nothing


def test_a_start_still_ahead_is_a_warning_in_init_ledger_and_check(env, redis_url, r):
    # A typo (2062 for 2026) silently stopped billing for good: lines before it are read past.
    made = subprocess.run([sys.executable, "-m", "app", "init-ledger", "--start-at", "2062-01-01T00:00:00Z"],
                          env={**env, "REDIS_KEY_PREFIX": "ahead"}, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    assert made.stderr.startswith("warning: counting starts in the future (2062-01-01T00:00:00.000000000Z"), made.stderr
    assert "with the right --start-at" in made.stderr
    code, lines, out = check(env, "--skip", "kubernetes", REDIS_KEY_PREFIX="ahead")
    assert code == 0, out
    assert lines["ledger"].startswith("WARN initialised under prefix 'ahead', counting from 2062-01-01T00:00:00Z, "
                                      "still ahead"), out
    # Run again (already initialised), with the time from START_AT: warned too, naming it.
    again = subprocess.run([sys.executable, "-m", "app", "init-ledger"],
                           env={**env, "REDIS_KEY_PREFIX": "ahead", "START_AT": "2062-01-01T00:00:00Z"}, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already initialised" in again.stderr, again.stderr
    assert "warning: counting starts in the future" in again.stderr and "the right START_AT" in again.stderr
    now = subprocess.run([sys.executable, "-m", "app", "init-ledger", "--force", "--start-at", "2026-01-01T00:00:00Z"],
                         env={**env, "REDIS_KEY_PREFIX": "ahead"}, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert now.returncode == 0 and now.stderr == "", now.stderr
    assert check(env, "--skip", "kubernetes", REDIS_KEY_PREFIX="ahead")[1]["ledger"].startswith("OK "), out
