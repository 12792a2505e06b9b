"""``kube.LogSource.stream_log`` joins the server's chunks up to ``CHUNK``; a deadline that
passes during the read still raises ``FetchTimeLimitExceeded``, after the last chunk
too, with nothing committed. Written by the fifth review of the follower."""

from __future__ import annotations

import time

import pytest

from app.errors import FetchTimeLimitExceeded
from app.fetching import Fetcher
from app.kube import CHUNK, LogSource
from app.ledger import Ledger
from sim.fake_kube import FakeKube, ManualClock
from sim.procs import wait_until
from tests.integration.test_fetch_streams import POD, access, at, billed


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


def test_the_deadline_is_checked_after_the_last_joined_chunk(fake):
    """A log smaller than CHUNK: one (joined) chunk. The consumer's time on it passes the
    deadline. Before dbc242a the next ``next()`` raised (time_left after each yield); the
    trailing ``yield b"".join(pending)`` is not followed by a check."""
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
