"""FakeKube behaves like the apiserver facts in docs/design.md ("Kubernetes pod log endpoint"),
seen through the official client.

Every check goes over HTTP with kubernetes 37.x (kubeconfig written by the fake), so
what the scraper will see is what is tested here.
"""

from __future__ import annotations

import json
import os
import threading

import pytest
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from sim.fake_kube import NS_PER_S, FakeKube, ManualClock, PodNotFound, format_ts

T0_TEXT = "2026-11-18T11:06:40"
LOG_PATH = "/api/v1/namespaces/{namespace}/pods/{name}/log"

T0 = 1_795_000_000 * NS_PER_S  # 2026-11-18T11:06:40Z, a whole second (the fixture clock's start)


@pytest.fixture
def v1(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


def stream_log(
    api_client: client.ApiClient,
    name: str,
    query: list[tuple[str, str]],
    namespace: str = "traefik",
    chunk: int = 4096,
) -> tuple[int, bytes, int]:
    """A log request built with param_serialize/call_api (the only way to pass
    sinceTime in client 37), read streamed. Returns (status, body, chunks read)."""
    params = api_client.param_serialize(
        "GET",
        LOG_PATH,
        path_params={"namespace": namespace, "name": name},
        query_params=query,
        auth_settings=["BearerToken"],
    )
    resp = api_client.call_api(*params, _request_timeout=5)
    raw = resp.response  # urllib3.HTTPResponse, not preloaded
    try:
        parts = list(raw.stream(chunk))
    finally:
        raw.release_conn()
    return resp.status, b"".join(parts), len(parts)


def since(api_client, name: str, since_time: str, **extra: str) -> bytes:
    query = [("container", "traefik"), ("timestamps", "true"), ("sinceTime", since_time)]
    query += list(extra.items())
    status, body, _ = stream_log(api_client, name, query)
    assert status == 200, body
    return body


def lines_of(body: bytes) -> list[bytes]:
    """The log lines, timestamp prefixes removed."""
    return [line.split(b" ", 1)[1] for line in body.splitlines()]


def status_of(err: ApiException) -> dict:
    return json.loads(err.body)


# ------------------------------------------------------------------ pods


def test_list_filters_by_label_selector(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_pod("traefik-0")
    fake.add_pod("traefik-1", labels={"app.kubernetes.io/name": "traefik", "tier": "edge"})
    fake.add_pod("other", labels={"app.kubernetes.io/name": "nginx"})
    fake.add_pod("traefik-x", namespace="elsewhere")

    def names(selector: str) -> list[str]:
        pods = v1.list_namespaced_pod("traefik", label_selector=selector)
        assert pods.metadata.resource_version
        return [p.metadata.name for p in pods.items]

    assert names("app.kubernetes.io/name=traefik") == ["traefik-0", "traefik-1"]
    assert names("app.kubernetes.io/name=traefik,tier=edge") == ["traefik-1"]
    assert names("app.kubernetes.io/name in (traefik,nginx),tier!=edge") == ["other", "traefik-0"]
    assert names("app.kubernetes.io/name==nope") == []
    assert names("") == ["other", "traefik-0", "traefik-1"]
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_pod("traefik", label_selector="a=(b")
    assert err.value.status == 400
    assert status_of(err.value)["reason"] == "BadRequest"


def test_pod_deserializes_into_v1pod(fake: FakeKube, v1: client.CoreV1Api) -> None:
    uid = fake.add_pod("traefik-0", extra_containers=["sidecar"])
    pod = v1.read_namespaced_pod("traefik-0", "traefik")
    assert isinstance(pod, client.V1Pod)
    assert pod.metadata.uid == uid
    assert pod.metadata.labels == {"app.kubernetes.io/name": "traefik"}
    assert pod.metadata.creation_timestamp is not None
    assert pod.metadata.deletion_timestamp is None
    assert [c.name for c in pod.spec.containers] == ["traefik", "sidecar"]
    assert pod.status.phase == "Running"
    assert pod.status.pod_ip
    main = pod.status.container_statuses[0]
    assert main.name == "traefik"
    assert main.container_id == fake.container_id("traefik-0")
    assert main.container_id.startswith("containerd://")
    assert main.restart_count == 0
    assert main.state.running.started_at is not None
    assert main.last_state.terminated is None


def test_unknown_path_is_a_404_status(fake: FakeKube, api_client: client.ApiClient) -> None:
    params = api_client.param_serialize("GET", "/api/v1/nodes", auth_settings=["BearerToken"])
    resp = api_client.call_api(*params, _request_timeout=5)
    assert resp.status == 404
    body = json.loads(resp.read())
    assert body["kind"] == "Status" and body["reason"] == "NotFound" and body["code"] == 404


# ------------------------------------------------------------- timestamps


def test_timestamps_fixed_width(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_pod("traefik-0")
    fake.write("traefik-0", "a", T0 + 123_456_789)
    fake.write("traefik-0", "b", T0 + 500_000_000)
    fake.write("traefik-0", "c", T0 + NS_PER_S)
    text = v1.read_namespaced_pod_log("traefik-0", "traefik", timestamps=True)
    assert text == (
        f"{T0_TEXT}.123456789Z a\n{T0_TEXT}.500000000Z b\n2026-11-18T11:06:41.000000000Z c\n"
    )
    assert v1.read_namespaced_pod_log("traefik-0", "traefik") == "a\nb\nc\n"


def test_timestamps_old_kubelet_trim_zeros(fake: FakeKube, v1: client.CoreV1Api) -> None:
    fake.add_pod("traefik-0", old_kubelet=True)
    fake.write("traefik-0", "a", T0 + 123_456_789)
    fake.write("traefik-0", "b", T0 + 500_000_000)
    fake.write("traefik-0", "c", T0 + NS_PER_S)
    text = v1.read_namespaced_pod_log("traefik-0", "traefik", timestamps=True)
    assert text == (f"{T0_TEXT}.123456789Z a\n{T0_TEXT}.5Z b\n2026-11-18T11:06:41Z c\n")
    assert format_ts(T0 + 1_000, old_kubelet=True) == f"{T0_TEXT}.000001Z"


def test_many_lines_with_one_timestamp(fake: FakeKube, api_client, clock: ManualClock) -> None:
    fake.add_pod("traefik-0")
    ts = fake.write_many("traefik-0", [f"line {i}" for i in range(1000)], T0 + 42)
    assert ts == T0 + 42
    body = since(api_client, "traefik-0", f"{T0_TEXT}Z")
    prefixes = {line.split(b" ", 1)[0] for line in body.splitlines()}
    assert prefixes == {f"{T0_TEXT}.000000042Z".encode()}
    assert lines_of(body) == [f"line {i}".encode() for i in range(1000)]
    clock.advance(1)
    assert fake.write_many("traefik-0", ["x", "y"]) == T0 + NS_PER_S


# --------------------------------------------------------------- sinceTime


def test_since_time_is_whole_second(fake: FakeKube, api_client) -> None:
    fake.add_pod("traefik-0")
    fake.write("traefik-0", "s0-a", T0 + 100_000_000)
    fake.write("traefik-0", "s0-b", T0 + 600_000_000)
    fake.write("traefik-0", "s0-c", T0 + 999_999_999)
    fake.write("traefik-0", "s1-a", T0 + NS_PER_S)
    fake.write("traefik-0", "s2-a", T0 + 2 * NS_PER_S + 1)

    # A cursor in the middle of second 0 re-delivers the lines of its whole second.
    cursor = format_ts(T0 + 600_000_000)
    assert lines_of(since(api_client, "traefik-0", cursor)) == [
        b"s0-a",
        b"s0-b",
        b"s0-c",
        b"s1-a",
        b"s2-a",
    ]
    # Second boundaries: from 11:06:41 on, and from 11:06:42 on.
    assert lines_of(since(api_client, "traefik-0", "2026-11-18T11:06:41.999Z")) == [
        b"s1-a",
        b"s2-a",
    ]
    assert lines_of(since(api_client, "traefik-0", "2026-11-18T11:06:42Z")) == [b"s2-a"]
    # Another zone designator, same instant.
    assert lines_of(since(api_client, "traefik-0", "2026-11-18T12:06:42+01:00")) == [b"s2-a"]
    assert since(api_client, "traefik-0", "2026-11-18T11:06:43Z") == b""
    # The line format with a sinceTime is the same as without.
    assert since(api_client, "traefik-0", "2026-11-18T11:06:42Z") == (
        f"{format_ts(T0 + 2 * NS_PER_S + 1)} s2-a\n".encode()
    )


def test_since_time_invalid_is_400(fake: FakeKube, api_client) -> None:
    fake.add_pod("traefik-0")
    status, body, _ = stream_log(api_client, "traefik-0", [("sinceTime", "yesterday")])
    assert status == 400
    assert json.loads(body)["reason"] == "BadRequest"


def test_since_seconds_uses_the_fake_clock(fake: FakeKube, v1, clock: ManualClock) -> None:
    fake.add_pod("traefik-0")
    assert fake.write("traefik-0", "old") == T0
    clock.advance(10)
    fake.write("traefik-0", "new")
    clock.advance(1)
    assert v1.read_namespaced_pod_log("traefik-0", "traefik", since_seconds=5) == "new\n"
    assert v1.read_namespaced_pod_log("traefik-0", "traefik", since_seconds=11) == "old\nnew\n"
    assert v1.read_namespaced_pod_log("traefik-0", "traefik", tail_lines=1) == "new\n"


# --------------------------------------------------------------- limitBytes


def test_limit_bytes_cuts_mid_line(fake: FakeKube, v1, api_client) -> None:
    fake.add_pod("traefik-0")
    for i in range(5):
        fake.write("traefik-0", f"line-number-{i}", T0 + i)
    full = v1.read_namespaced_pod_log("traefik-0", "traefik", timestamps=True).encode()
    limit = len(full) // 2 + 3
    text = v1.read_namespaced_pod_log("traefik-0", "traefik", timestamps=True, limit_bytes=limit)
    assert text.encode() == full[:limit]
    assert not text.endswith("\n")  # the last line is partial
    status, body, _ = stream_log(
        api_client,
        "traefik-0",
        [("timestamps", "true"), ("sinceTime", f"{T0_TEXT}Z"), ("limitBytes", str(limit))],
    )
    assert status == 200 and body == full[:limit]


def test_large_log_streams_in_chunks(fake: FakeKube, api_client) -> None:
    fake.add_pod("traefik-0")
    lines = [("x" * 90 + f"{i:09d}").encode() for i in range(5000)]
    for i in range(0, 5000, 500):
        fake.write_many("traefik-0", lines[i : i + 500], T0 + i)
    status, body, chunks = stream_log(
        api_client, "traefik-0", [("sinceTime", f"{T0_TEXT}Z")], chunk=16 * 1024
    )
    assert status == 200
    assert body == b"".join(line + b"\n" for line in lines)
    assert chunks > 10


def test_abandoned_stream_leaves_client_usable(fake: FakeKube, api_client, v1) -> None:
    fake.add_pod("traefik-0")
    fake.write_many("traefik-0", [b"y" * 1000] * 2000, T0)
    params = api_client.param_serialize(
        "GET",
        LOG_PATH,
        path_params={"namespace": "traefik", "name": "traefik-0"},
        query_params=[("sinceTime", f"{T0_TEXT}Z")],
        auth_settings=["BearerToken"],
    )
    resp = api_client.call_api(*params, _request_timeout=5)
    first = next(resp.response.stream(1024))
    assert first.startswith(b"y" * 1000 + b"\n")
    resp.response.close()  # stop early: close the connection, don't put it back
    assert v1.read_namespaced_pod_log("traefik-0", "traefik", tail_lines=1) == "y" * 1000 + "\n"


# -------------------------------------------------- restarts, rotation, previous


def test_previous_without_restart_is_400(fake: FakeKube, v1) -> None:
    fake.add_pod("traefik-0")
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_pod_log("traefik-0", "traefik", previous=True)
    assert err.value.status == 400
    body = status_of(err.value)
    assert body["message"] == 'previous terminated container "traefik" in pod "traefik-0" not found'
    assert body["reason"] == "BadRequest"


def test_restart_moves_log_to_previous(fake: FakeKube, v1, clock: ManualClock) -> None:
    fake.add_pod("traefik-0")
    old_id = fake.container_id("traefik-0")
    fake.write("traefik-0", "before-1")
    fake.write("traefik-0", "before-2")
    clock.advance(5)
    fake.restart("traefik-0", exit_code=1)
    fake.write("traefik-0", "after-1")

    assert v1.read_namespaced_pod_log("traefik-0", "traefik") == "after-1\n"
    assert v1.read_namespaced_pod_log("traefik-0", "traefik", previous=True) == (
        "before-1\nbefore-2\n"
    )
    status = v1.read_namespaced_pod("traefik-0", "traefik").status.container_statuses[0]
    assert status.container_id != old_id
    assert status.container_id == fake.container_id("traefik-0")
    assert status.restart_count == 1
    term = status.last_state.terminated
    assert term.container_id == old_id
    assert term.exit_code == 1 and term.reason == "Error"
    assert term.finished_at.timestamp() == (T0 + 5 * NS_PER_S) / NS_PER_S

    # Only the last terminated container is kept.
    clock.advance(5)
    fake.restart("traefik-0")
    assert v1.read_namespaced_pod_log("traefik-0", "traefik", previous=True) == "after-1\n"
    assert v1.read_namespaced_pod_log("traefik-0", "traefik") == ""
    status = v1.read_namespaced_pod("traefik-0", "traefik").status.container_statuses[0]
    assert status.restart_count == 2 and status.last_state.terminated.reason == "Completed"


def test_rotation_drops_lines(fake: FakeKube, v1) -> None:
    fake.add_pod("traefik-0")
    for i in range(5):
        fake.write("traefik-0", f"l{i}", T0 + i)
    fake.rotate("traefik-0", keep_last=2)
    assert v1.read_namespaced_pod_log("traefik-0", "traefik") == "l3\nl4\n"
    fake.rotate("traefik-0")
    assert v1.read_namespaced_pod_log("traefik-0", "traefik") == ""
    fake.write("traefik-0", "l5", T0 + 5)
    assert v1.read_namespaced_pod_log("traefik-0", "traefik") == "l5\n"


def test_size_based_rotation(clock: ManualClock) -> None:
    fk = FakeKube(clock=clock, rotate_bytes=1000, rotate_every=0)  # checked at every write
    fk.add_pod("traefik-0")
    for i in range(30):
        fk.write("traefik-0", f"{i:09d}")  # 9 + 41 CRI bytes: rotates every 20 lines
    assert [line for _, line in fk.log_lines("traefik-0")] == [
        f"{i:09d}".encode() for i in range(20, 30)
    ]
    assert len(fk.unserved("traefik-0")) == 20  # none of the rotated lines was read


def test_size_rotation_is_checked_every_ten_seconds(fake: FakeKube, v1, clock: ManualClock) -> None:
    """The kubelet looks at the file's size every ContainerLogMonitorInterval (10 s): the
    file grows past containerLogMaxSize until the next check, which renames it away with
    every line no read returned (unserved); lines served before stay served."""
    fake.rotate_bytes = 1000  # the checks come every 10 s from the fake's creation (T0)
    fake.add_pod("traefik-0")
    for i in range(30):
        fake.write("traefik-0", f"{i:09d}")  # 1,500 CRI bytes: over the limit, not yet checked
    assert len(fake.log_lines("traefik-0")) == 30
    clock.advance(9.9)
    body = v1.read_namespaced_pod_log("traefik-0", "traefik", limit_bytes=10 * 10 + 5)  # 10 lines whole
    assert body.startswith("000000000\n") and body.count("\n") == 10
    for i in range(30, 35):
        fake.write("traefik-0", f"{i:09d}")
    assert fake.rotations == 0
    clock.advance(0.1)  # the check at 10 s
    fake.write("traefik-0", "after")
    assert fake.rotations == 1
    assert [line for _, line in fake.log_lines("traefik-0")] == [b"after"]
    assert [line for _, line in fake.unserved("traefik-0")] == [f"{i:09d}".encode() for i in range(10, 35)]
    # The rotation happened at the 10 s check, between the old file's last stamp and the new one's first.
    (at,) = fake.rotation_instants("traefik-0")
    assert at == T0 + 10 * NS_PER_S
    assert fake.log_lines("traefik-0")[0][0] >= at > max(ts for ts, _ in fake.unserved("traefik-0"))
    clock.advance(10)  # the next check: the new file is small, nothing happens
    fake.write("traefik-0", "later")
    assert fake.rotations == 1
    assert fake.rotation_instants("traefik-0") == [at]


def test_a_rotation_with_every_line_served_is_recorded_too(fake: FakeKube, v1, clock: ManualClock) -> None:
    """A file renamed away after a read returned all of it loses nothing (no unserved
    lines) but is still a rotation: the reader sees a new file with none of its lines."""
    fake.rotate_bytes = 100
    fake.add_pod("traefik-0")
    for i in range(5):
        fake.write("traefik-0", f"{i:09d}")
    assert v1.read_namespaced_pod_log("traefik-0", "traefik").count("\n") == 5
    clock.advance(12.5)
    fake.write("traefik-0", "new")
    assert fake.unserved("traefik-0") == []
    assert fake.rotation_instants("traefik-0") == [T0 + 10 * NS_PER_S]


def test_multi_container_needs_container_param(fake: FakeKube, v1) -> None:
    fake.add_pod("traefik-0", extra_containers=["sidecar"])
    fake.write("traefik-0", "main")
    fake.write("traefik-0", "side", container="sidecar")
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_pod_log("traefik-0", "traefik")
    assert err.value.status == 400
    assert "a container name must be specified" in status_of(err.value)["message"]
    assert v1.read_namespaced_pod_log("traefik-0", "traefik", container="traefik") == "main\n"
    assert v1.read_namespaced_pod_log("traefik-0", "traefik", container="sidecar") == "side\n"
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_pod_log("traefik-0", "traefik", container="nope")
    assert err.value.status == 400


# ------------------------------------------------------ deletion, replacement


def test_terminating_pod_readable_during_grace(fake: FakeKube, v1, clock: ManualClock) -> None:
    fake.add_pod("traefik-0")
    fake.write("traefik-0", "last words")
    fake.terminate("traefik-0", grace_seconds=30)
    clock.advance(29)
    pod = v1.read_namespaced_pod("traefik-0", "traefik")
    assert pod.metadata.deletion_timestamp.timestamp() == (T0 + 30 * NS_PER_S) / NS_PER_S
    assert pod.metadata.deletion_grace_period_seconds == 30
    assert v1.read_namespaced_pod_log("traefik-0", "traefik") == "last words\n"
    listed = v1.list_namespaced_pod("traefik", label_selector="app.kubernetes.io/name=traefik")
    assert [p.metadata.name for p in listed.items] == ["traefik-0"]

    # The grace period is over: the kubelet kills the container; the pod object and its
    # log stay until the kubelet deletes it, about a second later.
    clock.advance(1.5)
    state = v1.read_namespaced_pod("traefik-0", "traefik").status.container_statuses[0].state
    assert state.running is None and state.terminated.exit_code == 137
    assert state.terminated.finished_at.timestamp() == (T0 + 30 * NS_PER_S) / NS_PER_S
    assert v1.read_namespaced_pod_log("traefik-0", "traefik") == "last words\n"
    clock.advance(0.5)
    for call in (
        lambda: v1.read_namespaced_pod("traefik-0", "traefik"),
        lambda: v1.read_namespaced_pod_log("traefik-0", "traefik"),
    ):
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 404
    assert v1.list_namespaced_pod("traefik").items == []


def test_deleted_pod_is_404(fake: FakeKube, v1, api_client) -> None:
    fake.add_pod("traefik-0")
    fake.write("traefik-0", "x")
    fake.delete("traefik-0")
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_pod("traefik-0", "traefik")
    assert err.value.status == 404
    body = status_of(err.value)
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'pods "traefik-0" not found',
        "reason": "NotFound",
        "code": 404,
        "details": {"name": "traefik-0", "kind": "pods"},
    }
    status, _, _ = stream_log(api_client, "traefik-0", [("sinceTime", f"{T0_TEXT}Z")])
    assert status == 404
    assert v1.list_namespaced_pod("traefik").items == []
    with pytest.raises(PodNotFound):
        fake.write("traefik-0", "y")


def test_replaced_pod_has_new_uid_and_fresh_logs(fake: FakeKube, v1) -> None:
    uid = fake.add_pod("traefik-0")
    old_id = fake.container_id("traefik-0")
    fake.write("traefik-0", "old pod")
    new_uid = fake.replace_pod("traefik-0")
    assert new_uid != uid
    pod = v1.read_namespaced_pod("traefik-0", "traefik")
    assert pod.metadata.uid == new_uid
    assert pod.status.container_statuses[0].container_id != old_id
    assert pod.status.container_statuses[0].restart_count == 0
    assert v1.read_namespaced_pod_log("traefik-0", "traefik") == ""
    # After the old one is gone too (terminate, then the StatefulSet recreates it).
    fake.terminate("traefik-0", 0)
    fake.clock.advance(1)  # type: ignore[attr-defined]
    assert fake.replace_pod("traefik-0") not in (uid, new_uid)


def test_write_rejects_bad_input(fake: FakeKube) -> None:
    fake.add_pod("traefik-0")
    fake.write("traefik-0", "a", T0 + 10)
    with pytest.raises(ValueError):
        fake.write("traefik-0", "b", T0 + 9)
    with pytest.raises(ValueError):
        fake.write("traefik-0", "two\nlines", T0 + 10)
    with pytest.raises(ValueError):
        fake.add_pod("traefik-0")


# ------------------------------------------------------------ auth and faults


def test_401_without_token(fake: FakeKube) -> None:
    cfg = client.Configuration(host=fake.url)
    with client.ApiClient(cfg) as anonymous:
        with pytest.raises(ApiException) as err:
            client.CoreV1Api(anonymous).list_namespaced_pod("traefik")
    assert err.value.status == 401
    assert json.loads(err.value.body)["reason"] == "Unauthorized"


def test_403_when_forbidden(fake: FakeKube, v1) -> None:
    fake.add_pod("traefik-0")
    fake.forbid()
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_pod_log("traefik-0", "traefik")
    assert err.value.status == 403
    body = status_of(err.value)
    assert body["reason"] == "Forbidden"
    assert 'cannot get resource "pods/log"' in body["message"]
    assert 'in the namespace "traefik"' in body["message"]
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_pod("traefik")
    assert 'cannot list resource "pods"' in status_of(err.value)["message"]
    fake.forbid(False)
    assert v1.read_namespaced_pod_log("traefik-0", "traefik") == ""


def test_fail_next_then_recovers(fake: FakeKube, v1) -> None:
    fake.add_pod("traefik-0")
    fake.fail_next(2, status=500, path_contains="/log")
    assert len(v1.list_namespaced_pod("traefik").items) == 1  # not matched: unaffected
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            v1.read_namespaced_pod_log("traefik-0", "traefik")
        assert err.value.status == 500
        assert status_of(err.value)["reason"] == "InternalError"
    assert v1.read_namespaced_pod_log("traefik-0", "traefik") == ""
    log_requests = [r for r in fake.requests if r[1].endswith("/log")]
    assert len(log_requests) == 3
    assert log_requests[0] == ("GET", "/api/v1/namespaces/traefik/pods/traefik-0/log", {})


def test_delay_makes_client_time_out(fake: FakeKube, v1) -> None:
    fake.add_pod("traefik-0")
    fake.delay(2)
    with pytest.raises(urllib3.exceptions.HTTPError):
        v1.read_namespaced_pod_log("traefik-0", "traefik", _request_timeout=0.2)
    fake.delay(0)
    assert v1.read_namespaced_pod_log("traefik-0", "traefik", _request_timeout=2) == ""


# -------------------------------------------------------------- concurrency


def test_concurrent_readers(fake: FakeKube, api_client) -> None:
    fake.add_pod("traefik-0")
    fake.write_many("traefik-0", [f"{i}" for i in range(2000)], T0)
    expected = b"".join(f"{i}\n".encode() for i in range(2000))
    results: list[bytes] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            status, body, _ = stream_log(api_client, "traefik-0", [("sinceTime", f"{T0_TEXT}Z")])
            assert status == 200
            results.append(body)
        except (AssertionError, ApiException, urllib3.exceptions.HTTPError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert errors == []
    assert results == [expected] * 16


def test_attach_stream_stamps_lines_from_a_pipe(fake: FakeKube, clock: ManualClock, v1) -> None:
    fake.add_pod("traefik-0")
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as stream:
        thread = fake.attach_stream("traefik-0", stream)
        os.write(write_fd, b"one\ntwo\n")
        assert fake.wait_for_lines("traefik-0", 2, timeout=5)
        clock.advance(2.5)
        os.write(write_fd, b"three\npartial")
        os.close(write_fd)
        thread.join(timeout=5)
        assert not thread.is_alive()
    assert fake.log_lines("traefik-0") == [
        (T0, b"one"),
        (T0, b"two"),
        (T0 + 2_500_000_000, b"three"),
        (T0 + 2_500_000_000, b"partial"),
    ]
    assert v1.read_namespaced_pod_log("traefik-0", "traefik", timestamps=True) == (
        f"{T0_TEXT}.000000000Z one\n{T0_TEXT}.000000000Z two\n"
        "2026-11-18T11:06:42.500000000Z three\n2026-11-18T11:06:42.500000000Z partial\n"
    )


def test_stop_closes_the_server(clock: ManualClock, tmp_path) -> None:
    fk = FakeKube(clock=clock)
    url = fk.start()
    api = config.new_client_from_config(config_file=fk.write_kubeconfig(tmp_path / "kc"))
    api.configuration.retries = 0
    try:
        v1 = client.CoreV1Api(api)
        assert v1.list_namespaced_pod("traefik").items == []
        fk.stop()
        with pytest.raises(urllib3.exceptions.HTTPError):
            client.CoreV1Api(api).list_namespaced_pod("traefik", _request_timeout=2)
    finally:
        api.close()
    assert url.startswith("http://127.0.0.1:")


# ------------------------------------------- two streams, zones, per-line sinceTime


def test_two_streams_merge_in_arrival_order_monotonic_per_stream(fake: FakeKube, v1) -> None:
    """containerd stamps each stream in its own reader: the file is in arrival order,
    stamps go backwards only across the two streams."""
    fake.add_pod("traefik-0")
    fake.write("traefik-0", "access", T0 + 500_000_000)
    fake.write("traefik-0", "error", T0 + 400_000_000, stream="stderr")  # stamped earlier, written after
    fake.write("traefik-0", "access-2", T0 + 600_000_000)
    with pytest.raises(ValueError):
        fake.write("traefik-0", "back", T0 + 550_000_000)  # stdout never goes backwards
    with pytest.raises(ValueError):
        fake.write("traefik-0", "back", T0 + 300_000_000, stream="stderr")
    with pytest.raises(ValueError):
        fake.write("traefik-0", "x", stream="stdin")
    assert fake.log_lines("traefik-0") == [
        (T0 + 500_000_000, b"access"),
        (T0 + 400_000_000, b"error"),
        (T0 + 600_000_000, b"access-2"),
    ]
    assert v1.read_namespaced_pod_log("traefik-0", "traefik", timestamps=True) == (
        f"{T0_TEXT}.500000000Z access\n{T0_TEXT}.400000000Z error\n{T0_TEXT}.600000000Z access-2\n"
    )


def test_stream_skew_stamps_lines_when_their_reader_has_them(fake: FakeKube, clock: ManualClock) -> None:
    fake.add_pod("traefik-0")
    jitter = iter([0.003, -0.002])
    fake.configure_log("traefik-0", skew={"stderr": -0.004, "stdout": lambda: next(jitter)})
    fake.append_now("traefik-0", b"out-1")
    fake.append_now("traefik-0", b"err-1", stream="stderr")
    fake.append_now("traefik-0", b"out-2")  # its reader's stamp is before out-1's: clamped
    assert fake.write("traefik-0", "err-2", stream="stderr") == T0 - 4_000_000
    assert fake.log_lines("traefik-0") == [
        (T0 + 3_000_000, b"out-1"),
        (T0 - 4_000_000, b"err-1"),
        (T0 + 3_000_000, b"out-2"),
        (T0 - 4_000_000, b"err-2"),
    ]


def test_local_zone_stamps_keep_the_offset(fake: FakeKube, v1, api_client) -> None:
    """containerd stamps in the node's zone and the kubelet keeps the offset."""
    fake.add_pod("traefik-0")
    fake.add_pod("traefik-old", old_kubelet=True)
    for pod in ("traefik-0", "traefik-old"):
        fake.configure_log(pod, zone="+08:00")
        fake.write(pod, "a", T0 + 250_000_000)
        fake.write(pod, "b", T0 + NS_PER_S)
    assert v1.read_namespaced_pod_log("traefik-0", "traefik", timestamps=True) == (
        "2026-11-18T19:06:40.250000000+08:00 a\n2026-11-18T19:06:41.000000000+08:00 b\n"
    )
    assert v1.read_namespaced_pod_log("traefik-old", "traefik", timestamps=True) == (
        "2026-11-18T19:06:40.25+08:00 a\n2026-11-18T19:06:41+08:00 b\n"
    )
    # sinceTime compares instants, whatever zone either side is written in
    assert lines_of(since(api_client, "traefik-0", "2026-11-18T11:06:41Z")) == [b"b"]
    assert lines_of(since(api_client, "traefik-0", "2026-11-18T06:06:41-05:00")) == [b"b"]
    assert format_ts(T0, zone="-05:30") == "2026-11-18T05:36:40.000000000-05:30"
    assert format_ts(T0, zone="+00:00") == f"{T0_TEXT}.000000000Z"  # Go writes Z for UTC
    with pytest.raises(ValueError):
        fake.configure_log("traefik-0", zone="+8")


def test_since_time_drops_each_older_line_on_its_own(fake: FakeKube, api_client) -> None:
    """The kubelet tests every line against sinceTime: a stderr line stamped before it,
    written after newer lines, is dropped alone; the lines around it stay, in order."""
    fake.add_pod("traefik-0")
    fake.write("traefik-0", "out-0.8", T0 + 800_000_000)
    fake.write("traefik-0", "out-1.5", T0 + 1_500_000_000)
    fake.write("traefik-0", "err-0.9", T0 + 900_000_000, stream="stderr")
    fake.write("traefik-0", "out-2.1", T0 + 2_100_000_000)
    fake.write("traefik-0", "err-1.0", T0 + NS_PER_S, stream="stderr")
    assert lines_of(since(api_client, "traefik-0", "2026-11-18T11:06:41.7Z")) == [b"out-1.5", b"out-2.1", b"err-1.0"]
    assert lines_of(since(api_client, "traefik-0", f"{T0_TEXT}Z")) == [
        b"out-0.8", b"out-1.5", b"err-0.9", b"out-2.1", b"err-1.0"
    ]
    body = since(api_client, "traefik-0", "2026-11-18T11:06:42Z", limitBytes="40")
    assert body == f"{format_ts(T0 + 2_100_000_000)} out-2.1\n"[:40].encode()
