"""The Fetcher against the fake Kubernetes API (official client, real Redis): logs as
containerd writes them, with stdout and stderr stamped by separate readers and stamps
in the node's zone. Each of the issue's three cases, with its exact totals."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from app.errors import FetchTimeLimitExceeded, KubeUnavailable
from app.fetching import Fetcher
from app.kube import CHUNK, LogSource
from app.ledger import Ledger
from app.metrics import LedgerCollector
from app.model import Cursor
from sim.fake_kube import NS_PER_S, FakeKube, ManualClock
from sim.procs import wait_until

NS = NS_PER_S
DAY = int(datetime(2026, 11, 30, tzinfo=UTC).timestamp()) * NS
POD = "traefik-0"
ERROR_LINE = b"\x1b[90m2026-11-30T10:10:05Z\x1b[0m \x1b[31mERR\x1b[0m Error while proxying error=\"context canceled\""


def at(h: int, m: int, s: int, nanos: int = 0) -> int:
    return DAY + (h * 3600 + m * 60 + s) * NS + nanos


def access(sub: str, bytes_in: int, bytes_out: int) -> bytes:
    return (
        b'{"DownstreamContentSize":%d,"DownstreamStatus":200,"RequestContentSize":%d,'
        b'"RequestHost":"%s.t.lum.tools","StartUTC":"2026-11-30T10:10:05.1Z"}' % (bytes_out, bytes_in, sub.encode())
    )


@pytest.fixture
def fake(tmp_path, monkeypatch):
    fk = FakeKube(clock=ManualClock(at(10, 10, 0)))
    fk.start()
    monkeypatch.setenv("KUBECONFIG", fk.write_kubeconfig(tmp_path / "kubeconfig"))
    fk.add_pod(POD)
    yield fk
    fk.stop()


@pytest.fixture
def ledger(r):
    led = Ledger(r, "fs", 3600)
    led.initialise(0)
    return led


@pytest.fixture
def fetcher(fake, ledger):
    source = LogSource("traefik", "app.kubernetes.io/name=traefik", 5)
    yield Fetcher(source, ledger, domain="t.lum.tools", container="", limit_bytes=1 << 20)
    source.close()


def fetch(fetcher: Fetcher, fake: FakeKube) -> dict:
    out = fetcher.fetch(POD, fake.pod_uid(POD))
    assert out["status"] == "ok", out
    return out


def billed(ledger: Ledger) -> dict[str, list[int]]:
    total: dict[str, list[int]] = {}
    for start in ledger.open_intervals(ledger.now() + 2 * ledger.ri):
        for sub, counts in ledger.interval_totals(start).items():
            total[sub] = [a + b for a, b in zip(total.get(sub, [0, 0, 0]), counts, strict=True)]
    return total


def test_stderr_line_stamped_before_the_access_line_ahead_of_it(fake, fetcher, ledger):
    fake.write(POD, access("acme", 0, 1000), at(10, 10, 5, 500_000_000))
    fake.write(POD, ERROR_LINE, at(10, 10, 5, 400_000_000), stream="stderr")
    fetch(fetcher, fake)
    fake.write(POD, access("acme", 0, 500), at(10, 10, 9))
    fetch(fetcher, fake)
    assert billed(ledger) == {"acme": [0, 1500, 2]}
    assert ledger.gaps() == []


def test_access_line_stamped_before_the_stderr_line_that_ended_the_read(fake, fetcher, ledger):
    fake.write(POD, ERROR_LINE, at(10, 10, 5, 500_000_000), stream="stderr")
    fetch(fetcher, fake)
    fake.write(POD, access("acme", 0, 300), at(10, 10, 5, 400_000_000))
    fake.write(POD, access("acme", 0, 700), at(10, 10, 9))
    fetch(fetcher, fake)
    assert billed(ledger) == {"acme": [0, 1000, 2]}
    assert ledger.gaps() == []


def test_stamps_in_the_nodes_zone(fake, fetcher, ledger, caplog):
    fake.configure_log(POD, zone="+08:00")  # served as 2026-11-30T18:08:00.250000000+08:00
    fake.write(POD, access("acme", 70, 700), at(10, 8, 0, 250_000_000))
    fake.write(POD, access("acme", 30, 300), at(10, 8, 1, 250_000_000))
    with caplog.at_level(logging.WARNING):
        first = fetch(fetcher, fake)
        second = fetch(fetcher, fake)
    assert (first["consumed"], second["consumed"]) == (2, 0)
    assert billed(ledger) == {"acme": [100, 1000, 2]}
    stats = ledger.stats()
    assert stats["lines_counted"] == 2
    assert not any("timestamp" in key for key in stats)
    assert "timestamp prefix" not in caplog.text
    cursor = Cursor.decode(ledger.cursor_raw(f"{fake.pod_uid(POD)}/traefik"))
    assert cursor.t_ns == at(10, 8, 1, 250_000_000)


class _Mangled:
    """The fake API's pod and log, with the stamp of some lines written in a form no
    kubelet writes (an offset without its colon)."""

    def __init__(self, source: LogSource, marker: bytes) -> None:
        self.source = source
        self.namespace = source.namespace
        self.marker = marker

    def get_pod(self, name, deadline=None):
        return self.source.get_pod(name, deadline)

    def stream_log(self, *args, **kwargs):
        body = b"".join(self.source.stream_log(*args, **kwargs))
        out = []
        for line in body.split(b"\n"):
            if self.marker in line:
                stamp, _, text = line.partition(b" ")
                line = stamp[:19] + b".5+0800 " + text
            out.append(line)
        yield b"\n".join(out)


def test_unreadable_stamps_are_counted_once_and_warned_about_once(fake, ledger, caplog, tmp_path):
    source = LogSource("traefik", "app.kubernetes.io/name=traefik", 5)
    fetcher = Fetcher(_Mangled(source, b"mangle"), ledger, domain="t.lum.tools", container="", limit_bytes=1 << 20)
    try:
        fake.write(POD, access("acme", 1, 10), at(10, 10, 1))
        fake.write(POD, b'{"level":"info","msg":"mangle me"}', at(10, 10, 2))
        fake.write(POD, b"no stamp at all: mangle", at(10, 10, 3))
        with caplog.at_level(logging.WARNING):
            fetch(fetcher, fake)
            fake.write(POD, access("acme", 2, 20), at(10, 10, 4))
            fake.write(POD, b"mangle again", at(10, 10, 5))
            fetch(fetcher, fake)
            fetch(fetcher, fake)
    finally:
        source.close()
    assert billed(ledger) == {"acme": [3, 30, 2]}
    stats = ledger.stats()
    assert stats["rejected:bad_timestamp"] == 3  # each unreadable line once, over three reads
    assert stats["pods_with_bad_timestamps"] == 1
    warnings = [r for r in caplog.records if "timestamp prefix that cannot be read" in r.getMessage()]
    assert len(warnings) == 1 and f"traefik/{POD}" in warnings[0].getMessage()
    registry = CollectorRegistry()
    registry.register(LedgerCollector(ledger))
    text = generate_latest(registry).decode()
    served = [line for line in text.splitlines() if 'reason="bad_timestamp"' in line]
    assert served == ['traefik_metrics_scraper_log_lines_total{outcome="rejected",reason="bad_timestamp"} 3.0'], text
    assert "traefik_metrics_scraper_pods_with_bad_timestamps_total 1.0" in text


# ------------------------------------------------ the read's deadline (FETCH_TIME_LIMIT)
# A fetch worker on the thread pool has no Celery time limit: the read enforces its own.


def test_a_read_answered_after_its_deadline_stops_at_the_deadline(fake, fetcher, ledger):
    fake.write(POD, access("acme", 1, 10), at(10, 10, 1))
    fake.delay(3)  # the answer comes 3 s after the request; the read has 1 s
    began = time.monotonic()
    try:
        with pytest.raises(FetchTimeLimitExceeded):
            fetcher.fetch(POD, fake.pod_uid(POD), began + 1)
    finally:
        fake.delay(0)
    assert time.monotonic() - began < 2.5  # the read timeout was cut to the time left, not the 5 s configured
    assert ledger.cursors() == {} and billed(ledger) == {}  # nothing committed
    fetch(fetcher, fake)  # the next read takes it all, once
    assert billed(ledger) == {"acme": [1, 10, 1]}


def test_a_stream_is_stopped_between_chunks_once_its_deadline_passed(fake):
    line = access("acme", 1, 10)
    fake.write_many(POD, [line] * (3 * CHUNK // len(line)), at(10, 10, 1))  # several chunks
    source = LogSource("traefik", "app.kubernetes.io/name=traefik", 5)
    try:
        deadline = time.monotonic() + 2
        chunks = source.stream_log(POD, "traefik", None, 1 << 30, deadline=deadline)
        assert len(next(chunks)) > 0  # within the deadline
        wait_until(lambda: time.monotonic() > deadline, 5, interval=0.05, what="the deadline")
        with pytest.raises(FetchTimeLimitExceeded):
            next(chunks)
        # Without a deadline the same stream is read to its end.
        assert sum(map(len, source.stream_log(POD, "traefik", None, 1 << 30))) > 2 * CHUNK
    finally:
        source.close()


def test_a_deadline_already_passed_sends_no_request(fake):
    source = LogSource("traefik", "app.kubernetes.io/name=traefik", 5)
    try:
        before = len(fake.requests)
        with pytest.raises(FetchTimeLimitExceeded):
            next(source.stream_log(POD, "traefik", None, 1 << 20, deadline=time.monotonic() - 0.1))
        assert len(fake.requests) == before
    finally:
        source.close()


def test_a_dropped_connection_is_retried_and_a_timed_out_answer_is_not(fake, tmp_path, monkeypatch):
    """The Kubernetes client's retries: a connection closed after the request went out,
    with no answer (an apiserver restart, a kept-alive connection closed as it is reused),
    is tried again on a new one; an answer that timed out is not (four read timeouts
    would outlast FETCH_TIME_LIMIT)."""
    upstream = fake.url.split("//")[1].split(":")
    accepted = []
    drop = threading.Event()
    drop.set()

    def pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def serve(listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            if drop.is_set():
                drop.clear()
                conn.recv(65536)  # the request arrives, and the connection closes unanswered
                conn.close()
                continue
            up = socket.create_connection((upstream[0], int(upstream[1])))
            threading.Thread(target=pump, args=(conn, up), daemon=True).start()
            threading.Thread(target=pump, args=(up, conn), daemon=True).start()

    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    real_url = fake.url
    fake.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.setenv("KUBECONFIG", fake.write_kubeconfig(tmp_path / "through-proxy"))
    fake.url = real_url
    source = LogSource("traefik", "app.kubernetes.io/name=traefik", 1)
    try:
        assert source.get_pod(POD).name == POD
        assert len(accepted) == 2  # the dropped connection, then the retry
        fake.delay(3)  # an answer 3 s late against a 1 s read timeout
        began = time.monotonic()
        with pytest.raises(KubeUnavailable, match="ReadTimeo"):
            b"".join(source.stream_log(POD, "traefik", None, 1 << 20))
        assert time.monotonic() - began < 2.5  # one read timeout, not four
    finally:
        fake.delay(0)
        source.close()
        listener.close()


def test_the_check_after_the_read_is_bounded_by_the_deadline(fake, ledger):
    """The pod is fetched again after its log was read (did the container change?): that
    call keeps to the read's deadline too, and past it nothing is committed."""
    fake.write(POD, access("acme", 1, 10), at(10, 10, 1))
    source = LogSource("traefik", "app.kubernetes.io/name=traefik", 5)
    gets = []

    class SlowSecondGet:
        namespace = source.namespace

        def get_pod(self, name, deadline=None):
            gets.append(deadline)
            if len(gets) == 2:  # the check after the read: the apiserver is slow to answer
                wait_until(lambda: time.monotonic() > deadline, 10, interval=0.05, what="the deadline")
            return source.get_pod(name, deadline)

        def stream_log(self, *args, **kwargs):
            return source.stream_log(*args, **kwargs)

    fetcher = Fetcher(SlowSecondGet(), ledger, domain="t.lum.tools", container="", limit_bytes=1 << 20)
    try:
        with pytest.raises(FetchTimeLimitExceeded):
            fetcher.fetch(POD, fake.pod_uid(POD), time.monotonic() + 1)
        assert len(gets) == 2 and gets[0] == gets[1] is not None
        assert ledger.cursors() == {} and billed(ledger) == {}
        fetch(fetcher, fake)
        assert billed(ledger) == {"acme": [1, 10, 1]}
    finally:
        source.close()


# The read's deadline across joined chunks --------------------------------------------


def test_the_deadline_is_checked_after_the_last_joined_chunk(fake):
    """``stream_log`` joins the server's chunks up to ``CHUNK``. A log smaller than that:
    one (joined) chunk; the consumer's time on it passes the deadline, and the next
    ``next()`` raises (a check after the last chunk too; the fifth review of the follower
    found it missing)."""
    line = access("acme", 1, 10)
    fake.write_many(POD, [line] * 100, at(10, 10, 1))
    source = LogSource("traefik", "app.kubernetes.io/name=traefik", 5)
    try:
        deadline = time.monotonic() + 1.5
        chunks = source.stream_log(POD, "traefik", None, 1 << 30, deadline=deadline)
        assert 0 < len(next(chunks)) < CHUNK
        wait_until(lambda: time.monotonic() > deadline, 5, interval=0.05, what="the deadline")
        with pytest.raises(FetchTimeLimitExceeded):
            next(chunks)
    finally:
        source.close()


@pytest.mark.parametrize("lines", [100, 3 * CHUNK // 150])
def test_a_fetch_whose_last_chunk_outlasts_the_deadline_commits_nothing(fake, ledger, lines):
    """The whole fetch: the deadline passes while consume() is on the last chunk. The
    check of the pod after the read (get_pod with the deadline) raises: nothing
    committed."""
    line = access("acme", 1, 10)
    fake.write_many(POD, [line] * lines, at(10, 10, 1))
    source = LogSource("traefik", "app.kubernetes.io/name=traefik", 5)
    box = {}

    class SlowConsumer:
        namespace = source.namespace

        def get_pod(self, name, deadline=None):
            return source.get_pod(name, deadline)

        def stream_log(self, *args, **kwargs):
            inner = list(source.stream_log(*args, **{**kwargs, "deadline": None}))  # all of it, then replay
            box["n"] = len(inner)
            deadline = kwargs["deadline"]
            gen = source.stream_log(*args, **kwargs)
            for i, c in enumerate(gen):
                yield c
                if i == len(inner) - 1:  # the consumer's time on the last chunk
                    wait_until(lambda: time.monotonic() > deadline, 10, interval=0.05, what="the deadline")

    fetcher = Fetcher(SlowConsumer(), ledger, domain="t.lum.tools", container="", limit_bytes=1 << 30)
    try:
        with pytest.raises(FetchTimeLimitExceeded):
            fetcher.fetch(POD, fake.pod_uid(POD), time.monotonic() + 2)
        assert ledger.cursors() == {} and billed(ledger) == {}
    finally:
        source.close()


def test_a_ledger_started_inside_a_second_bills_a_pods_first_lines_once(fake, r):
    # A review: the first read asks sinceTime at the start's second (10:10:05) and ends at
    # 05.6; with the floor at H - the window (04.6) the second read asked from 10:10:04,
    # took 04.7 (never seen) for a new line, and every line after it: billed twice.
    ledger = Ledger(r, "start-inside", 3600)
    ledger.initialise(at(10, 10, 5, 437_000_000))  # START_AT, or "now" at the automatic initialisation
    source = LogSource("traefik", "app.kubernetes.io/name=traefik", 5)
    fetcher = Fetcher(source, ledger, domain="t.lum.tools", container="", limit_bytes=1 << 20)
    try:
        fake.write(POD, access("x", 1, 1), at(10, 10, 4, 700_000_000))  # before the start: not billed
        fake.write(POD, access("x", 2, 2), at(10, 10, 5, 200_000_000))  # before the start, in its second
        fake.write(POD, access("acme", 10, 100), at(10, 10, 5, 500_000_000))
        fake.write(POD, access("acme", 20, 200), at(10, 10, 5, 600_000_000))
        fetch(fetcher, fake)
        assert billed(ledger) == {"acme": [30, 300, 2]}
        fetch(fetcher, fake)
        assert billed(ledger) == {"acme": [30, 300, 2]}
        assert ledger.gaps() == []
    finally:
        source.close()
