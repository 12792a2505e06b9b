"""The metering pipeline end to end on real Celery workers and a real redis-server,
against the fake Kubernetes API and the platform stub. Every test compares what the
platform received with generated ground truth, exactly."""

from __future__ import annotations

import time

from tests.traffic import TRAEFIK_TEXT, Traffic


def test_three_pods_over_several_intervals(pipeline, kube):
    pods = ["traefik-a", "traefik-b", "traefik-c"]
    for p in pods:
        kube.add_pod(p)
    kube.add_pod("other", labels={"app": "nginx"})
    traffic = Traffic(seed=3)
    unread = Traffic(seed=4)
    pipeline.init_ledger()
    pipeline.worker()
    pipeline.beat()
    end = time.monotonic() + 7  # spans at least three 2 s report intervals
    while time.monotonic() < end:
        for p in pods:
            kube.write_many(p, traffic.lines(20))
            kube.write(p, TRAEFIK_TEXT)
        kube.write("other", unread.line())  # not a Traefik pod: never read
        time.sleep(0.1)
    pipeline.wait_quiescent(pods)
    assert pipeline.delivered() == traffic.expected()
    assert len({r.timestamp for r in pipeline.platform.records}) >= 3
    assert pipeline.ledger.stats()["ignored:not_access_log"] > 0
