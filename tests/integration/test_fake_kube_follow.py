"""FakeKube serves ``follow=true`` on the pod log endpoint as the kubelet does (``ReadLogs``
and ``waitLogs`` in kubernetes staging/src/k8s.io/cri-client/pkg/logs/logs.go), seen through
the official client (kubernetes 37.x ``param_serialize``/``call_api``, the body streamed):
the open file from ``sinceTime``, then each line as it is written; across a size rotation
the renamed file to its end, then the new file from its start; the end of the stream after
the last line once the container no longer runs (exit, deletion, restart) or at
``limitBytes``; ``stop()`` cuts open streams."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import urllib3
from kubernetes import client, config
from urllib3.connection import HTTPConnection

from sim.fake_kube import NS_PER_S, FakeKube, ManualClock, format_ts

LOG_PATH = "/api/v1/namespaces/{namespace}/pods/{name}/log"
WAIT = 5.0  # seconds any wait below may take before the test fails

T0 = 1_795_000_000 * NS_PER_S  # 2026-11-18T11:06:40Z, a whole second (the fixture clock's start)




class Follow:
    """One ``follow=true`` request, its body read by a thread as the chunks come."""

    def __init__(self, api: client.ApiClient, name: str, **query: str) -> None:
        params = api.param_serialize(
            "GET",
            LOG_PATH,
            path_params={"namespace": "traefik", "name": name},
            query_params=[("container", "traefik"), ("follow", "true"), *query.items()],
            auth_settings=["BearerToken"],
        )
        resp = api.call_api(*params, _request_timeout=(5, 60))
        self.status = resp.status
        self.raw: urllib3.BaseHTTPResponse = resp.response
        self.body = bytearray()
        self.ended = False  # the body ended with its last chunk
        self.error: Exception | None = None  # or the connection broke
        self._done = False  # either
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for part in self.raw.stream(4096):
                with self._cond:
                    self.body += part
                    self._cond.notify_all()
        except (urllib3.exceptions.HTTPError, OSError) as e:
            self.error = e
        finally:
            with self._cond:
                self.ended = self.error is None
                self._done = True
                self._cond.notify_all()

    def wait_for(self, expected: bytes, timeout: float = WAIT) -> bytes:
        """The body once it holds ``expected`` (or more, or the stream is over)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.body) >= len(expected) or self._done, timeout)
            return bytes(self.body)

    def wait_done(self, timeout: float = WAIT) -> bool:
        """True once the body ended or the connection broke."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done, timeout)

    def close(self) -> None:
        """Hang up from the client's side."""
        sock = getattr(getattr(self.raw, "connection", None), "sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(WAIT)
        self.raw.release_conn()


def stamped(ts: int, line: str) -> bytes:
    return f"{format_ts(ts)} {line}\n".encode()


def test_follow_from_since_time_then_new_lines_promptly(fake: FakeKube, api_client, clock) -> None:
    fake.follow_check_period = 60.0  # new lines must come from the write, not from the 1 s timer
    fake.add_pod("traefik-0")
    fake.write("traefik-0", "before", T0 - NS_PER_S)  # before sinceTime: skipped
    fake.write("traefik-0", "first", T0 + 250_000_000)
    fake.write("traefik-0", "second", T0 + 500_000_000)
    follow = Follow(api_client, "traefik-0", timestamps="true", sinceTime="2026-11-18T11:06:40.9Z")
    assert follow.status == 200
    existing = stamped(T0 + 250_000_000, "first") + stamped(T0 + 500_000_000, "second")
    assert follow.wait_for(existing) == existing  # sinceTime truncated to the second
    assert fake.follow_readers("traefik-0") == 1

    expected = existing
    for i in range(3):
        clock.advance(1)
        written_at = time.monotonic()
        ts = fake.write("traefik-0", f"later-{i}")
        expected += stamped(ts, f"later-{i}")
        assert follow.wait_for(expected) == expected
        assert time.monotonic() - written_at < 2.0  # the write wakes the stream, not a timer (60 s)
    # A line stamped before sinceTime written now is still skipped (each line is tested).
    fake.write("traefik-0", "late-stamp", T0 - NS_PER_S, stream="stderr")
    fake.write("traefik-0", "after-it", clock())
    expected += stamped(clock(), "after-it")
    assert follow.wait_for(expected) == expected
    assert not follow.ended
    follow.close()
    assert fake.wait_follow_readers("traefik-0", 0, WAIT)  # the server saw the client go


def test_a_follow_stream_loses_nothing_across_size_rotations(clock: ManualClock, tmp_path) -> None:
    """Each file holds 20 lines (9 + 41 CRI bytes each, rotated at 1000, checked at every
    write): the write of the 20th line renames the file away with lines the stream may not
    have read yet; it reads them, then the new file from its start. One rotation at a time
    (the stream catches up between batches; behind by two, the kubelet would skip a file).
    A pod polled without follow after each batch loses what was rotated away in between."""
    fk = FakeKube(clock=clock, rotate_bytes=1000, rotate_every=0)
    fk.start()
    api = config.new_client_from_config(config_file=fk.write_kubeconfig(tmp_path / "kubeconfig"))
    try:
        fk.add_pod("traefik-0")
        fk.add_pod("traefik-1")  # the contrast: read without follow
        v1 = client.CoreV1Api(api)
        follow = Follow(api, "traefik-0", timestamps="true")
        expected = b""
        n = 0
        for batch in (25, 20, 20, 13):  # rotations at lines 20, 40 and 60
            for _ in range(batch):
                ts = T0 + n * 1_000_000
                fk.write("traefik-0", f"{n:09d}", ts)
                fk.write("traefik-1", f"{n:09d}", ts)
                expected += stamped(ts, f"{n:09d}")
                n += 1
            assert follow.wait_for(expected) == expected
            v1.read_namespaced_pod_log("traefik-1", "traefik")  # the poll after each batch
        assert fk.rotations == 6
        assert [at for at in fk.rotation_instants("traefik-0")] == [T0 + k * 1_000_000 for k in (19, 39, 59)]
        fk.restart("traefik-0")  # the old container's stream ends after its file's end
        assert follow.wait_done() and follow.ended
        assert bytes(follow.body) == expected  # every line once, in order
        assert fk.unserved("traefik-0") == []
        lost = [int(line) for _, line in fk.unserved("traefik-1")]
        assert lost == [*range(0, 20), *range(25, 40), *range(45, 60)]
        assert fk.wait_follow_readers("traefik-0", 0, WAIT)  # its thread is done after the last chunk
    finally:
        api.close()
        fk.stop()


def test_a_lagging_follow_stream_keeps_the_renamed_file(clock: ManualClock, tmp_path) -> None:
    """The renamed file keeps what an open stream has not read, even lines a plain read
    already served (so not unserved): the stream still sends them. The stream is held back
    by its client (a small receive buffer, not read): it took the first batch and is
    blocked sending it when the second batch is written, served, and renamed away."""
    fk = FakeKube(clock=clock, rotate_bytes=1000)  # checked every 10 s on the clock
    fk.start()
    small_buffer = (socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    http = urllib3.PoolManager(socket_options=[*HTTPConnection.default_socket_options, small_buffer])
    api = config.new_client_from_config(config_file=fk.write_kubeconfig(tmp_path / "kubeconfig"))
    try:
        fk.add_pod("traefik-0")
        resp = http.request(
            "GET",
            fk.url + LOG_PATH.format(namespace="traefik", name="traefik-0") + "?follow=true",
            headers={"Authorization": f"Bearer {fk.token}"},
            preload_content=False,
            timeout=urllib3.Timeout(connect=5, read=WAIT),
        )
        body = resp.stream(1 << 16)
        big = [f"{i:02d}" + "x" * (1 << 20) for i in range(12)]  # 12 MiB: more than the socket buffers hold
        fk.write_many("traefik-0", big, T0)
        got = next(body)  # the stream took the batch and is sending it
        small = [f"{i:09d}" for i in range(20)]
        fk.write_many("traefik-0", small, T0 + 1)
        plain = client.CoreV1Api(api).read_namespaced_pod_log("traefik-0", "traefik")
        assert plain.count("\n") == 32  # every line served by a plain read
        clock.advance(10)
        fk.write("traefik-0", "new-file", T0 + 10 * NS_PER_S)  # the check at 10 s renames the file away
        assert fk.rotations == 1 and fk.unserved("traefik-0") == []
        expected = "".join(f"{line}\n" for line in [*big, *small, "new-file"]).encode()
        for part in body:
            got += part
            if len(got) >= len(expected):
                break
        assert got == expected
        assert fk.follow_readers("traefik-0") == 1
    finally:
        api.close()
        fk.stop()
        http.clear()


def test_container_exit_ends_the_stream_after_the_last_line(fake: FakeKube, api_client, clock) -> None:
    """The kubelet notices an exit at its next check (``waitLogs`` asks the runtime at each
    wait; no file event comes), within ``logForceCheckPeriod``: ``follow_check_period``."""
    fake.follow_check_period = 0.2
    fake.add_pod("traefik-0", extra_containers=["sidecar"])
    fake.write("traefik-0", "one", T0)
    follow = Follow(api_client, "traefik-0")
    sidecar = Follow(api_client, "traefik-0", container="sidecar")
    assert follow.wait_for(b"one\n") == b"one\n"
    assert fake.follow_readers("traefik-0") == 2
    fake.terminate("traefik-0", grace_seconds=30)
    fake.write("traefik-0", "draining", T0 + 1)
    fake.exit_container("traefik-0", container="traefik")
    assert follow.wait_done() and follow.ended
    assert bytes(follow.body) == b"one\ndraining\n"
    assert not sidecar.wait_done(0.5)  # its container still runs
    fake.write("traefik-0", "sidecar-line", T0 + 2, container="sidecar")
    assert sidecar.wait_for(b"sidecar-line\n") == b"sidecar-line\n"
    clock.advance(31)  # the grace period is over: the kubelet kills the sidecar
    assert sidecar.wait_done() and sidecar.ended
    assert bytes(sidecar.body) == b"sidecar-line\n"
    assert fake.wait_follow_readers("traefik-0", 0, WAIT)


def test_pod_deletion_and_restart_end_the_stream(fake: FakeKube, api_client) -> None:
    fake.follow_check_period = 0.2
    fake.add_pod("traefik-0")
    fake.write("traefik-0", "kept", T0)
    follow = Follow(api_client, "traefik-0")
    assert follow.wait_for(b"kept\n") == b"kept\n"
    fake.write("traefik-0", "last", T0 + 1)
    fake.delete("traefik-0")
    assert follow.wait_done() and follow.ended
    assert bytes(follow.body) == b"kept\nlast\n"

    # A restart: the new container's file is created next to the old one (a file event),
    # so the old stream ends at once, not at the timer.
    fake.follow_check_period = 60.0
    fake.add_pod("traefik-1")
    fake.write("traefik-1", "old-container", T0)
    follow = Follow(api_client, "traefik-1")
    assert follow.wait_for(b"old-container\n") == b"old-container\n"
    fake.restart("traefik-1")
    fake.write("traefik-1", "new-container", T0 + 1)
    assert follow.wait_done() and follow.ended
    assert bytes(follow.body) == b"old-container\n"
    # A new follow stream reads the new container; previous=true ends at its file's end.
    assert Follow(api_client, "traefik-1").wait_for(b"new-container\n") == b"new-container\n"
    previous = Follow(api_client, "traefik-1", previous="true")
    assert previous.wait_done() and previous.ended
    assert bytes(previous.body) == b"old-container\n"


def test_limit_bytes_ends_a_follow_stream_mid_line(fake: FakeKube, api_client) -> None:
    fake.add_pod("traefik-0")
    fake.write("traefik-0", "0123456789", T0)  # 11 bytes with its newline
    follow = Follow(api_client, "traefik-0", limitBytes="15", tailLines="1")
    assert follow.wait_for(b"0123456789\n") == b"0123456789\n"
    assert not follow.wait_done(0.2)  # 4 bytes to go: it waits for them
    fake.write("traefik-0", "abcdefghij", T0 + 1)
    assert follow.wait_done() and follow.ended
    assert bytes(follow.body) == b"0123456789\nabcd"
    fake.write("traefik-0", "more", T0 + 2)
    assert fake.wait_follow_readers("traefik-0", 0, WAIT)


def test_stop_returns_promptly_with_a_follow_stream_open(clock: ManualClock) -> None:
    fk = FakeKube(clock=clock)
    fk.start()
    http = urllib3.PoolManager()
    try:
        fk.add_pod("traefik-0")
        fk.write("traefik-0", "line", T0)
        resp = http.request(
            "GET",
            fk.url + LOG_PATH.format(namespace="traefik", name="traefik-0") + "?follow=true",
            headers={"Authorization": f"Bearer {fk.token}"},
            preload_content=False,
            timeout=urllib3.Timeout(connect=5, read=60),
        )
        assert resp.status == 200 and resp.headers["Transfer-Encoding"] == "chunked"
        body = resp.stream(4096)
        assert next(body) == b"line\n"
        assert fk.follow_readers("traefik-0") == 1
        started = time.monotonic()
        fk.stop()
        assert time.monotonic() - started < 2.0
        assert fk.follow_readers("traefik-0") == 0
        with pytest.raises((urllib3.exceptions.HTTPError, OSError)):
            b"".join(body)  # cut: no last chunk
    finally:
        fk.stop()
        http.clear()


def test_follow_answers_errors_and_injected_failures_first(fake: FakeKube, api_client) -> None:
    """As without follow: an injected failure or a missing pod is a Status answer, no stream."""
    fake.add_pod("traefik-0")
    fake.fail_next(1, 503, "/pods/traefik-0/log")
    failed = Follow(api_client, "traefik-0")
    assert failed.wait_done() and failed.status == 503
    assert json.loads(bytes(failed.body))["message"] == "injected failure (503)"
    missing = Follow(api_client, "missing")
    assert missing.wait_done() and missing.status == 404
    assert json.loads(bytes(missing.body))["reason"] == "NotFound"
    assert fake.follow_readers("traefik-0") == 0
    fake.write("traefik-0", "served", T0)
    assert Follow(api_client, "traefik-0").wait_for(b"served\n") == b"served\n"
