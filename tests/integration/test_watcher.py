"""The pod watcher (``traefik-metrics-scraper watch``) with real Celery workers, beat and
the simulated Kubernetes API: rolling updates whose old pods write lines right up to
their container's exit, after the last round, are counted exactly; a pod that vanishes
before its last lines were read gets a gap record with its span; one watcher leads.
"""

from __future__ import annotations

import random
import time

import pytest
import redis

from app import health
from app.ledger import Ledger
from app.model import Cursor
from app.watch import LIVE_FILE, Lease
from sim.fake_kube import PodNotFound
from sim.procs import wait_until
from tests.traffic import TRAEFIK_TEXT, Traffic

NS = 1_000_000_000
# Rounds every 10 s: the last lines of a pod whose container exits are written after
# the last round, and its object (with its log) is gone a second after the exit.
SLOW_ROUNDS = {"FETCH_INTERVAL": "10", "REPORT_INTERVAL": "10"}


def gone(kube, name: str) -> bool:
    try:
        kube.pod_uid(name)
    except PodNotFound:
        return True
    return False


def cursor_of(pipeline, kube, name: str) -> Cursor:
    return Cursor.decode(pipeline.ledger.cursors()[f"{kube.pod_uid(name)}/traefik"])


def wait_read(pipeline, pods, timeout=30):
    wait_until(lambda: pipeline.at_end(pods), timeout, interval=0.1, what=f"cursors at the end of {pods}")


def test_two_rolling_updates_count_every_line(pipeline, kube):
    """Two rolling updates on nodes that stamp in +08:00, with Traefik's own log busy on
    stderr (stamped up to 0.3 s off the access lines around it)."""
    traffic = Traffic(seed=41)
    rng = random.Random(41)
    running = ["traefik-a-0", "traefik-a-1"]

    def add(name: str) -> None:
        kube.add_pod(name)
        kube.configure_log(name, zone="+08:00", skew={"stderr": lambda: rng.uniform(-0.3, 0.3)})

    def stderr(name: str) -> None:
        for _ in range(rng.randrange(1, 3)):
            kube.append_now(name, TRAEFIK_TEXT, stream="stderr")

    for name in running:
        add(name)
    pipeline.report_interval = int(SLOW_ROUNDS["REPORT_INTERVAL"])
    pipeline.ledger = Ledger(pipeline.r, pipeline.prefix, pipeline.report_interval)  # the interval it records
    pipeline.init_ledger()
    pipeline.worker(**SLOW_ROUNDS)
    pipeline.beat(**SLOW_ROUNDS)
    w = pipeline.watcher(**SLOW_ROUNDS)
    for name in running:
        kube.write_many(name, traffic.lines(10))
    old_gen = "a"
    for gen in ("b", "c"):  # two rolling updates: maxSurge 1, maxUnavailable 0
        for i in (0, 1):
            old, new = f"traefik-{old_gen}-{i}", f"traefik-{gen}-{i}"
            add(new)
            running.append(new)
            kube.terminate(old, grace_seconds=30)
            running.remove(old)
            for _ in range(3):  # in-flight requests finishing while Traefik drains
                kube.write_many(old, traffic.lines(5))
                stderr(old)
                for name in running:
                    kube.write_many(name, traffic.lines(3))
                    stderr(name)
                time.sleep(0.4)
            kube.write_many(old, traffic.lines(7))  # the very last lines...
            kube.exit_container(old)  # ...then the container exits at once
            wait_until(lambda o=old: gone(kube, o), 10, what=f"{old} to be removed")
        old_gen = gen
    for name in running:
        kube.write_many(name, traffic.lines(10))
    pipeline.wait_quiescent(running, timeout=90)
    assert pipeline.delivered() == traffic.expected()
    assert pipeline.ledger.gaps() == []
    assert not any("timestamp" in key for key in pipeline.ledger.stats())  # every +08:00 stamp was read
    out = w.output()
    assert out.count("read to the end after its container terminated") == 4, out[-4000:]
    assert out.count("its log was read to the end") == 4


def test_force_deleted_pod_gets_a_gap_with_its_span(pipeline, kube):
    """Deleted at once (grace 0: a forced delete, a lost node's pods cleaned up): no
    read can follow, so the lines after the cursor are a gap."""
    pod = "traefik-0"
    kube.add_pod(pod)
    read, lost = Traffic(seed=42), Traffic(seed=43)
    pipeline.init_ledger()
    pipeline.worker()
    w = pipeline.watcher()
    kube.write_many(pod, read.lines(20))
    pipeline.fetch(pod)
    wait_read(pipeline, [pod])
    cursor_t = cursor_of(pipeline, kube, pod).t_ns
    time.sleep(0.01)
    last_lost = kube.write_many(pod, lost.lines(10))
    before = time.time_ns()
    kube.delete(pod)
    wait_until(lambda: pipeline.ledger.gaps(), 10, what="the gap record")
    (gap,) = pipeline.ledger.gaps()
    assert (gap["pod"], gap["container"], gap["namespace"]) == (pod, "traefik", "traefik")
    assert gap["from_ns"] == cursor_t
    assert last_lost < gap["to_ns"] and before <= gap["to_ns"] <= time.time_ns()
    assert "it was deleted" in gap["reason"]
    assert f"GAP in the log of pod traefik/{pod}" in w.output()
    pipeline.beat()
    pipeline.wait_quiescent([])
    assert pipeline.delivered() == read.expected()
    assert pipeline.ledger.stats()["gaps"] == 1


def test_pod_vanishing_during_its_last_read_gets_a_gap_with_its_span(pipeline, kube):
    """The last read answers 404: the pod went (a second after its container exited)
    while the read waited. Span: the cursor to the end of the exit's second."""
    pod = "traefik-0"
    kube.add_pod(pod)
    read, lost = Traffic(seed=44), Traffic(seed=45)
    pipeline.init_ledger()
    pipeline.worker()
    w = pipeline.watcher()
    kube.write_many(pod, read.lines(20))
    kube.terminate(pod, grace_seconds=30)  # the watcher reads it at once
    wait_read(pipeline, [pod])
    cursor_t = cursor_of(pipeline, kube, pod).t_ns
    kube.delay(3.0)  # from now on every log read answers after the pod is gone
    time.sleep(0.01)
    kube.write_many(pod, lost.lines(10))
    exited = kube.exit_container(pod)
    wait_until(lambda: pipeline.ledger.gaps(), 20, what="the gap record")
    kube.delay(0)
    (gap,) = pipeline.ledger.gaps()
    assert gap["pod"] == pod and gap["from_ns"] == cursor_t
    assert gap["to_ns"] == (exited // NS + 1) * NS  # finishedAt has whole seconds
    assert "its container terminated" in gap["reason"]
    assert "GAP in the log of pod" in w.output()
    assert pipeline.ledger.stats().get("gaps") == 1
    pipeline.beat()
    pipeline.wait_quiescent([])
    assert pipeline.delivered() == read.expected()


def test_one_watcher_leads_and_another_takes_over(pipeline, kube):
    kube.add_pod("traefik-0")
    traffic = Traffic(seed=46)
    pipeline.init_ledger()
    pipeline.worker()
    first = pipeline.watcher(name="watcher-1")
    second = pipeline.watcher(name="watcher-2", ready="another replica leads")
    assert "this replica leads" in first.output() and "this replica leads" not in second.output()
    # Both keep their liveness file valid, the waiting replica too (app/health.py's format).
    for name in ("watcher-1", "watcher-2"):
        wait_until(lambda n=name: health.valid(str(pipeline.dir / f"{n}-health"), LIVE_FILE), 10,
                   what=f"{name}'s liveness file")
    first.stop()  # SIGTERM: it releases the lease
    wait_until(lambda: "this replica leads" in second.output() and "; watching" in second.output(), 20,
               what="the second watcher to lead")
    kube.write_many("traefik-0", traffic.lines(10))
    kube.terminate("traefik-0", grace_seconds=30)
    kube.write_many("traefik-0", traffic.lines(10))
    kube.exit_container("traefik-0")
    wait_until(lambda: gone(kube, "traefik-0"), 10, what="the pod to go")
    wait_until(lambda: "its log was read to the end" in second.output(), 10, what="the final read")
    pipeline.beat()
    pipeline.wait_quiescent([])
    assert pipeline.delivered() == traffic.expected()
    assert pipeline.ledger.gaps() == []


# ------------------------------------------------------------------ the lease


@pytest.fixture
def lease_key(r) -> str:
    return "tms-test:watcher:leader"


def test_lease_one_holder_renews_and_releases(r, lease_key):
    a = Lease(r, lease_key, seconds=2, token="a")
    b = Lease(r, lease_key, seconds=2, token="b")
    assert a.acquire() and not b.acquire()
    assert a.held() and not b.held()
    assert a.renew() and not b.renew()
    assert 1000 < r.pttl(lease_key) <= 2000
    b.release()  # not b's: nothing happens
    assert r.get(lease_key) == b"a"
    a.release()
    assert r.get(lease_key) is None and b.acquire()


def test_lease_lost_when_it_ran_out(r, lease_key):
    a = Lease(r, lease_key, seconds=0.2, token="a")
    b = Lease(r, lease_key, seconds=5, token="b")
    assert a.acquire()
    time.sleep(0.3)
    assert not a.held() and b.acquire()
    assert not a.renew()  # another holds it now: a must step down


def test_the_lease_does_not_count_as_ledger_data(r):
    from app.ledger import Ledger

    ledger = Ledger(r, "tms-test", 60)
    assert not ledger.has_data()
    assert Lease(r, ledger.k("watcher", "leader")).acquire()
    assert not ledger.has_data()  # a watcher started first must not block the first initialisation


def test_lease_renew_survives_a_redis_client_error(r, lease_key):
    a = Lease(r, lease_key, seconds=5, token="a")
    assert a.acquire()
    broken = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    a.r, a._renew = broken, broken.register_script("return 1")
    with pytest.raises(redis.RedisError):
        a.renew()
    assert a.held()  # still valid by time: the caller decides when to step down
