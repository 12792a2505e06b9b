"""A busy pod whose log the kubelet rotates, on real Celery workers with the default
fetch settings (FETCH_INTERVAL 10 s, FETCH_MIN_INTERVAL 1 s, FOLLOW_MAX_PODS 16;
REPORT_INTERVAL 10 s only so that intervals are delivered soon).

The fake API rotates as the kubelet does (sim/fake_kube.py: a running container's file
of 10 Mi or more is renamed away at a check every 10 s, and a read without ``follow``
sees only the current file), and serves ``follow=true`` streams across rotations as the
kubelet's ``waitLogs`` does. The pace measures the pod's growth on its second read and
the fetch worker follows it from then on (app/follow.py): the platform receives exactly
what was written, no line is left unserved in a renamed file, and no gap is recorded.
"""

from __future__ import annotations

import time

from sim.cluster import LocalPipeline
from sim.procs import wait_until
from tests.traffic import Traffic

RATE = 2000  # lines per second
SECONDS = 32  # of traffic at least (a 10 Mi file fills in about 6 s at this rate)
ROTATIONS = 3
# The kubelet's checks run every 10 s from the fake API's start, not from the traffic's:
# depending on where they fall, 32 s of traffic sees two or three rotations (a check just
# before a file reaches 10 Mi waits 10 s more). Traffic goes on until the third, within
# this bound.
MAX_SECONDS = SECONDS + 30


def test_a_followed_pod_at_2000_lines_per_second_loses_nothing_to_rotation(tmp_path, redis_url, kube, platform):
    kube.rotate_bytes = 10 * 1024 * 1024  # containerLogMaxSize's default; checked every 10 s
    kube.add_pod("traefik-0")
    pipeline = LocalPipeline(tmp_path, redis_url, kube, platform, "rot", REPORT_INTERVAL="10", SCRAPER_ID="test",
                             FETCH_TIME_LIMIT="30", LOG_LEVEL="INFO")
    try:
        pipeline.ledger.initialise(0)
        pipeline.worker()
        traffic = Traffic(seed=6, tunnels=20)
        kube.write_many("traefik-0", traffic.lines(100))  # the pod has a log when first read
        pipeline.beat()
        # Traffic starts with the first read (beat sends the first round one FETCH_INTERVAL
        # after it starts): a file rotated before any read is not the follower's to save.
        wait_until(lambda: pipeline.ledger.cursors(), 30, interval=0.05, what="the first read")
        tick = 0.05
        start = next_tick = time.monotonic()
        written = 0
        while time.monotonic() < start + SECONDS or (
                kube.rotations < ROTATIONS and time.monotonic() < start + MAX_SECONDS):
            n = int((time.monotonic() - start + tick) * RATE) - written
            kube.write_many("traefik-0", traffic.lines(n))
            written += n
            next_tick += tick
            time.sleep(max(0.0, next_tick - time.monotonic()))

        try:
            wait_until(lambda: pipeline.delivered() == traffic.expected(), 90, interval=0.5, what="delivery")
        except TimeoutError as e:
            raise AssertionError(f"{e}\nunserved={len(kube.unserved('traefik-0'))} stats={pipeline.ledger.stats()}\n"
                                 f"{pipeline.logs()}") from None
        assert kube.rotations >= ROTATIONS
        assert kube.unserved("traefik-0") == []
        assert pipeline.ledger.gaps() == []
        stats = pipeline.ledger.stats()
        assert stats.get("gaps", 0) == 0
        assert stats.get("follow_started", 0) >= 1, stats
        assert "following the log of pod traefik-0" in pipeline.logs(tail=10**7)
    finally:
        pipeline.stop()
