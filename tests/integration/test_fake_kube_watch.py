"""FakeKube's pod watch and graceful deletion, seen through the official client
(kubernetes 37.x ``watch.Watch().stream``) and through app.kube's wrapper: list, then
watch from the list's resourceVersion; ADDED / MODIFIED / DELETED in order; selectors;
timeoutSeconds; 410 Gone as an ERROR event once the version is older than the bounded
history; a terminating pod's container exit and the pod's removal a second later."""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from app.errors import WatchExpired
from app.kube import LogSource
from sim.fake_kube import NS_PER_S

SELECTOR = "app.kubernetes.io/name=traefik"

T0 = 1_795_000_000 * NS_PER_S  # 2026-11-18T11:06:40Z, a whole second (the fixture clock's start)




@pytest.fixture
def v1(kubeconfig: str):
    api = config.new_client_from_config(config_file=kubeconfig)
    yield client.CoreV1Api(api)
    api.close()


@pytest.fixture
def source(kubeconfig: str, monkeypatch) -> LogSource:
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    src = LogSource("traefik", SELECTOR, 5)
    yield src
    src.close()


def events(v1, rv: str | None, seconds: int = 1, **kw) -> list[tuple[str, str, object]]:
    """Everything one watch request streams: (type, pod name, object)."""
    args = {"resource_version": rv} if rv is not None else {}
    out = []
    for ev in watch.Watch().stream(v1.list_namespaced_pod, "traefik", timeout_seconds=seconds, **args, **kw):
        out.append((ev["type"], ev["object"].metadata.name, ev["object"]))
    return out


def test_list_then_watch_a_rolling_update(fake, v1, clock):
    fake.add_pod("traefik-a")
    listed = v1.list_namespaced_pod("traefik", label_selector=SELECTOR)
    rv = listed.metadata.resource_version

    fake.add_pod("traefik-b")  # the surge pod
    fake.terminate("traefik-a", grace_seconds=30)
    clock.advance(2)
    fake.write("traefik-a", "an in-flight request's line")  # still running while it drains
    fake.exit_container("traefik-a")
    clock.advance(0.5)
    assert v1.read_namespaced_pod_log("traefik-a", "traefik") == "an in-flight request's line\n"
    clock.advance(0.6)  # removal_delay (1 s) after the exit: the pod object is gone

    got = events(v1, rv, label_selector=SELECTOR)
    assert [(t, n) for t, n, _ in got] == [
        ("ADDED", "traefik-b"),
        ("MODIFIED", "traefik-a"),  # deletionTimestamp set
        ("MODIFIED", "traefik-a"),  # container terminated
        ("DELETED", "traefik-a"),
    ]
    versions = [int(o.metadata.resource_version) for _, _, o in got]
    assert versions == sorted(versions) and versions[0] > int(rv)
    deleting, exited, deleted = (o for _, _, o in got[1:])
    assert deleting.metadata.deletion_timestamp.timestamp() == (T0 + 30 * NS_PER_S) / NS_PER_S
    assert deleting.status.container_statuses[0].state.running is not None
    term = exited.status.container_statuses[0].state.terminated
    assert term.exit_code == 0 and term.finished_at.timestamp() == (T0 + 2 * NS_PER_S) / NS_PER_S
    assert term.container_id == fake_container_id(deleted)
    assert deleted.status.container_statuses[0].state.terminated is not None  # its last state
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_pod_log("traefik-a", "traefik")
    assert err.value.status == 404


def fake_container_id(pod: client.V1Pod) -> str:
    return pod.status.container_statuses[0].container_id


def test_grace_period_end_kills_the_container(fake, v1, clock):
    fake.add_pod("traefik-0", extra_containers=["sidecar"])
    rv = v1.list_namespaced_pod("traefik").metadata.resource_version
    fake.terminate("traefik-0", grace_seconds=5)
    fake.exit_container("traefik-0", container="traefik")  # Traefik is done; the sidecar is not
    clock.advance(3)
    assert v1.read_namespaced_pod("traefik-0", "traefik")  # the sidecar keeps the pod (and the log)
    clock.advance(2.5)  # grace over: the sidecar is killed, the pod goes a second later
    pod = v1.read_namespaced_pod("traefik-0", "traefik")
    assert pod.status.container_statuses[1].state.terminated.exit_code == 137
    clock.advance(1)
    got = events(v1, rv)
    assert [t for t, _, _ in got] == ["MODIFIED", "MODIFIED", "MODIFIED", "DELETED"]


def test_events_are_streamed_as_they_happen(fake, v1):
    rv = v1.list_namespaced_pod("traefik").metadata.resource_version
    w = watch.Watch()
    seen: list[tuple[str, str, float]] = []

    def run() -> None:
        for ev in w.stream(v1.list_namespaced_pod, "traefik", resource_version=rv, timeout_seconds=10):
            seen.append((ev["type"], ev["object"].metadata.name, time.monotonic()))
            if len(seen) == 2:
                w.stop()

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.3)
    at = time.monotonic()
    fake.add_pod("traefik-1")
    fake.terminate("traefik-1", grace_seconds=30)
    t.join(10)
    assert [(a, b) for a, b, _ in seen] == [("ADDED", "traefik-1"), ("MODIFIED", "traefik-1")]
    assert seen[0][2] - at < 1.0  # streamed, not at the end of the request


def test_selectors_and_namespace_filter_events(fake, v1):
    rv = v1.list_namespaced_pod("traefik").metadata.resource_version
    fake.add_pod("traefik-0")
    fake.add_pod("nginx-0", labels={"app.kubernetes.io/name": "nginx"})
    fake.add_pod("traefik-x", namespace="elsewhere")
    assert [n for _, n, _ in events(v1, rv, label_selector=SELECTOR)] == ["traefik-0"]
    assert [n for _, n, _ in events(v1, rv)] == ["traefik-0", "nginx-0"]
    assert [n for _, n, _ in events(v1, rv, field_selector="metadata.name=nginx-0")] == ["nginx-0"]


def test_watch_without_a_version_starts_with_the_current_pods(fake, v1):
    fake.add_pod("traefik-0")
    fake.add_pod("traefik-1")
    assert [(t, n) for t, n, _ in events(v1, None)] == [("ADDED", "traefik-0"), ("ADDED", "traefik-1")]


def test_timeout_seconds_ends_the_stream(fake, v1):
    rv = v1.list_namespaced_pod("traefik").metadata.resource_version
    start = time.monotonic()
    assert events(v1, rv, seconds=1) == []
    assert 0.9 <= time.monotonic() - start < 3


def test_too_old_resource_version_is_410_as_an_error_event(fake, v1):
    fake.add_pod("traefik-0")
    old = v1.list_namespaced_pod("traefik").metadata.resource_version
    fake.watch_history = 3  # a bounded history, like the apiserver's watch cache
    for i in range(5):
        fake.add_pod(f"traefik-{i + 1}")
    # The client raises the ERROR event's Status (timeout_seconds given: no retry of its own).
    with pytest.raises(ApiException) as err:
        events(v1, old)
    assert err.value.status == 410
    assert "Expired: too old resource version" in err.value.reason
    # A recent version still works; after a compaction it is too old as well.
    recent = v1.list_namespaced_pod("traefik").metadata.resource_version
    fake.add_pod("traefik-9")
    assert [n for _, n, _ in events(v1, recent)] == ["traefik-9"]
    fake.compact_watch_history()
    with pytest.raises(ApiException) as err:
        events(v1, recent)
    assert err.value.status == 410


def test_the_error_event_on_the_wire(fake, kubeconfig):
    """The raw stream: HTTP 200, chunked JSON lines, the Status inside an ERROR event."""
    import json

    import urllib3

    fake.add_pod("traefik-0")  # resourceVersion 2
    fake.compact_watch_history()
    http = urllib3.PoolManager()
    resp = http.request(
        "GET", f"{fake.url}/api/v1/namespaces/traefik/pods?watch=true&resourceVersion=1&timeoutSeconds=5",
        headers={"Authorization": f"Bearer {fake.token}"}, preload_content=False,
    )
    assert resp.status == 200 and resp.headers["Transfer-Encoding"] == "chunked"
    assert resp.headers["Content-Type"] == "application/json"
    (line,) = [json.loads(x) for x in resp.read().splitlines()]
    assert line["type"] == "ERROR"
    assert line["object"]["code"] == 410 and line["object"]["reason"] == "Expired"
    assert line["object"]["message"] == "too old resource version: 1 (2)"


# ----------------------------------------------------------- through app.kube


def test_log_source_lists_and_watches(fake, source, clock):
    fake.add_pod("traefik-0")
    pods, rv = source.list_pods_at()
    assert [p.name for p in pods] == ["traefik-0"] and rv
    fake.terminate("traefik-0", grace_seconds=30)
    clock.advance(1)
    fake.exit_container("traefik-0")
    clock.advance(1)
    got = list(source.watch_pods(rv, 1))
    assert [e.kind for e in got] == ["MODIFIED", "MODIFIED", "DELETED"]
    deleting, exited, deleted = (e.pod for e in got)
    assert deleting.deleting and deleting.deletion_ns == T0 + 30 * NS_PER_S
    assert not deleting.container("").exited
    ctr = exited.container("")
    assert ctr.exited and ctr.finished_ns == T0 + NS_PER_S
    assert ctr == deleting.container("")  # same container: the exit is not a restart
    assert got[-1].resource_version == deleted.resource_version and int(got[-1].resource_version) > int(rv)


def test_log_source_turns_410_into_watch_expired(fake, source):
    fake.add_pod("traefik-0")
    _, rv = source.list_pods_at()
    fake.compact_watch_history()
    fake.add_pod("traefik-1")
    fake.compact_watch_history()
    with pytest.raises(WatchExpired) as err:
        list(source.watch_pods(rv, 5))
    assert "410" in str(err.value) and isinstance(err.value.__cause__, ApiException)


def test_log_source_watch_stops_at_once(fake, source):
    _, rv = source.list_pods_at()
    w = source.watch_pods(rv, 30)
    out: list = []
    t = threading.Thread(target=lambda: out.extend(w))
    t.start()
    time.sleep(0.3)
    start = time.monotonic()
    w.stop()
    t.join(5)
    assert not t.is_alive() and time.monotonic() - start < 2 and out == []
