"""Helpers of the follower's tests (tests/integration/test_follow*.py): a Fetcher over the
fake API, what the ledger holds, the ground truth of several Traffics, steady writes."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from app.fetching import Fetcher
from app.kube import LogSource
from app.ledger import Ledger
from app.model import FetchStatus
from sim.fake_kube import FakeKube
from sim.procs import wait_until
from tests.traffic import Traffic

POD = "traefik-0"


def make_fetcher(source: LogSource, ledger: Ledger) -> Fetcher:
    return Fetcher(source, ledger, domain="t.lum.tools", container="", limit_bytes=1 << 22)


def committed(ledger: Ledger) -> dict[str, dict[str, int]]:
    """What the ledger holds per tunnel, over every interval."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for start in ledger.open_intervals(float("inf")):
        for sub, (bi, bo, rq) in ledger.interval_totals(start).items():
            t = out[sub]
            t[0] += bi
            t[1] += bo
            t[2] += rq
    return {s: {"bytes_in": v[0], "bytes_out": v[1], "requests": v[2]} for s, v in out.items()}


def plus(*truths: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The sum of several ground truths (``Traffic.expected()``)."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"bytes_in": 0, "bytes_out": 0, "requests": 0})
    for truth in truths:
        for sub, t in truth.items():
            for k, v in t.items():
                out[sub][k] += v
    return dict(out)


def write_steadily(fake: FakeKube, traffic: Traffic, rate: int, seconds: float, pod: str = POD) -> threading.Thread:
    """Write ``rate`` lines a second to ``pod`` for ``seconds``, in a thread (started)."""

    def run() -> None:
        start = time.monotonic()
        written = 0
        while (elapsed := time.monotonic() - start) < seconds:
            n = int(elapsed * rate) - written
            if n > 0:
                fake.write_many(pod, traffic.lines(n))
                written += n
            time.sleep(0.01)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def first_read(fake: FakeKube, fetcher: Fetcher, traffic: Traffic) -> str:
    """50 lines written and read by a fetch (the pod has a cursor); the pod's uid."""
    fake.write_many(POD, traffic.lines(50))
    uid = fake.pod_uid(POD)
    assert fetcher.fetch(POD, uid)["status"] == FetchStatus.OK
    return uid


def followed(fake: FakeKube, fetcher: Fetcher, follower, traffic: Traffic) -> str:
    """``first_read``, then the pod offered to ``follower`` (an ``app.follow.Follower``)
    and its stream open at the fake; the pod's uid."""
    uid = first_read(fake, fetcher, traffic)
    assert follower.offer(POD, uid)
    wait_until(lambda: fake.follow_readers(POD) == 1, 10, interval=0.05, what="the stream open")
    return uid
