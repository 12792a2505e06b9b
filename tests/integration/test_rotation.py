"""A busy pod whose log the kubelet rotates, on real Celery workers with the default
fetch settings (FETCH_INTERVAL 10 s, FETCH_MIN_INTERVAL 1 s; REPORT_INTERVAL 10 s only
so that intervals are delivered soon).

The fake API rotates as the kubelet does (sim/fake_kube.py: a running container's file
of 10 Mi or more is renamed away at a check every 10 s, and only the current file is
served). The lines written after a pod's last read before a rotation are then
unreachable through the API whatever the scraper does (``FakeKube.unserved``); the pace
(app/pace.py) keeps that to about FETCH_MIN_INTERVAL of lines. What is checked exactly:
the platform receives everything written except those lines, each rotation that made
lines unreachable is recorded as exactly one gap, and every unreachable line lies in
the span of a recorded gap.
"""

from __future__ import annotations

import time

from app.parser import Aggregator
from sim.cluster import LocalPipeline
from sim.procs import wait_until
from tests.traffic import Traffic

RATE = 2000  # lines per second
SECONDS = 32  # three rotations at least (a 10 Mi file fills in about 6 s at this rate)


def test_a_pod_at_2000_lines_per_second_loses_only_what_rotation_made_unreachable(tmp_path, redis_url, kube, platform):
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
        # after it starts): a file rotated before any read leaves no cursor to see a gap by.
        wait_until(lambda: pipeline.ledger.cursors(), 30, interval=0.05, what="the first read")
        tick = 0.05
        start = next_tick = time.monotonic()
        written = 0
        while time.monotonic() < start + SECONDS:
            n = int((time.monotonic() - start + tick) * RATE) - written
            kube.write_many("traefik-0", traffic.lines(n))
            written += n
            next_tick += tick
            time.sleep(max(0.0, next_tick - time.monotonic()))

        def expected() -> dict[str, dict[str, int]]:
            lost = Aggregator("t.lum.tools")
            lost.feed_lines([line for _, line in kube.unserved("traefik-0")])
            out = traffic.expected()
            for sub, (bi, bo, rq) in lost.subdomains.items():
                out[sub] = {"bytes_in": out[sub]["bytes_in"] - bi, "bytes_out": out[sub]["bytes_out"] - bo,
                            "requests": out[sub]["requests"] - rq}
            return {s: v for s, v in out.items() if v["requests"]}

        try:
            wait_until(lambda: pipeline.delivered() == expected(), 90, interval=0.5, what="delivery")
        except TimeoutError as e:
            raise AssertionError(f"{e}\nstats={pipeline.ledger.stats()}\n{pipeline.logs()}") from None
        assert kube.rotations >= 3
        files = kube.unserved_files("traefik-0")
        gaps = pipeline.ledger.gaps()
        assert pipeline.ledger.stats().get("gaps", 0) == len(gaps)
        # Every file that lost lines is covered by a gap.
        for lost in files:
            first, last = lost[0][0], lost[-1][0]
            assert any(g["from_ns"] <= first and last <= g["to_ns"] for g in gaps), (first, last, gaps)
        # Every gap spans a rotation of its own. A rotation just after a read that took the
        # whole file also records one (nothing was lost, but Traefik's lines carry no
        # sequence number: the next read cannot tell it from a rotation that lost lines),
        # so there may be more gaps than files with lost lines, never more than rotations.
        instants = kube.rotation_instants("traefik-0")
        for g in sorted(gaps, key=lambda g: g["from_ns"]):
            at = next((t for t in instants if g["from_ns"] <= t <= g["to_ns"]), None)
            assert at is not None, ("a gap with no rotation in its span", g, instants)
            instants.remove(at)
        assert len(files) <= len(gaps), (gaps, [len(f) for f in files])
        assert "GAP in the log of pod traefik/traefik-0" in pipeline.logs(tail=10**7)
        # The pace read the pod between rounds: far fewer lines lost than the ten seconds
        # of lines a read per FETCH_INTERVAL would leave in a file at each rotation.
        lost_lines = sum(len(f) for f in files)
        assert lost_lines < kube.rotations * RATE * 5, (lost_lines, kube.rotations)
    finally:
        pipeline.stop()
