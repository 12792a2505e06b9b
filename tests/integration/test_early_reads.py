"""Reads between rounds (app/pace.py, workers/fetch.py) on a real Celery worker, no beat:
a read cut at limitBytes is followed at once until the pod's backlog is read, each line
counted once, and the pod's pending mark is gone afterwards."""

from __future__ import annotations

import time

from celery import Celery

from sim.cluster import LocalPipeline
from sim.procs import wait_until
from tests.traffic import Traffic

LIMIT = 64 * 1024  # FETCH_MAX_BYTES of this test: the backlog is about 20 reads


def test_a_cut_read_is_followed_at_once_until_the_backlog_is_read(tmp_path, redis_url, kube, platform):
    kube.add_pod("traefik-0")
    traffic = Traffic(seed=9, tunnels=7)
    lines = 0
    ts = time.time_ns() - 100 * 10**9
    while lines < 1500:  # ~1.2 MB in 75 s of log: a read's first two seconds fit in LIMIT
        kube.write_many("traefik-0", traffic.lines(20), ts_ns=ts)
        lines += 20
        ts += 10**9
    # FOLLOW_MAX_PODS=0: the pace's chain of reads, as for a pod no follower has room for
    # (with following on, the second read hands the pod to the follower: test_follow.py).
    pipeline = LocalPipeline(tmp_path, redis_url, kube, platform, "pace", REPORT_INTERVAL="60", FETCH_INTERVAL="60",
                             FETCH_MAX_BYTES=str(LIMIT), LOG_LINE_MAX_BYTES="4096", SCRAPER_ID="test", LOG_LEVEL="INFO",
                             FOLLOW_MAX_PODS="0")
    try:
        pipeline.ledger.initialise(0)
        pipeline.worker(queues="fetch", concurrency=2)
        # One fetch, as a round sends it; no beat: only the follow-ups can read the rest.
        client = Celery(broker=redis_url)
        client.send_task("workers.fetch.fetch", args=("traefik-0", kube.pod_uid("traefik-0")), queue="fetch")
        try:
            wait_until(lambda: pipeline.at_end(["traefik-0"]), 60, interval=0.2, what="the backlog read")
        except TimeoutError as e:
            raise AssertionError(f"{e}\nstats={pipeline.ledger.stats()}\n{pipeline.logs()}") from None
        stats = pipeline.ledger.stats()
        assert stats["lines_read"] == lines  # each line once (some are not tunnel lines: lines_counted is less)
        fetches = int(pipeline.ledger.pod_fetches()[kube.pod_uid("traefik-0")]["fetches"])
        served = sum(len(line) + 31 for _, line in kube.log_lines("traefik-0"))  # with the stamps
        assert fetches >= served // LIMIT  # one read per FETCH_MAX_BYTES at least
        # The chain ends: the last early read found nothing new and sent no other.
        mark = pipeline.ledger.k("pace", kube.pod_uid("traefik-0"), "next")
        wait_until(lambda: not pipeline.r.exists(mark), 10, interval=0.1, what="the pending mark to go")
    finally:
        pipeline.stop()
