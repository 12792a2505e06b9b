"""End to end with real Traefik: three Traefik processes behind the fake Kubernetes API,
real HTTP traffic, a restart of one Traefik midway. The platform must receive exactly
the bodies the load generators sent and received, per tunnel."""

from __future__ import annotations

import time

import pytest

from sim.demo import TraefikFleet
from sim.procs import wait_until

pytestmark = [pytest.mark.traefik, pytest.mark.slow]


def test_real_traefik_restart_midway_delivers_exact_totals(pipeline, kube):
    pipeline.init_ledger()
    fleet = TraefikFleet(kube, pods=3, rate=15, seed=7)
    try:
        fleet.start()
        pipeline.worker()
        pipeline.beat()
        wait_until(lambda: sum(load.completed for load in fleet.loads) >= 100, 60, what="traffic")
        fleet.restart("traefik-1")
        done = sum(load.completed for load in fleet.loads)
        wait_until(lambda: sum(load.completed for load in fleet.loads) >= done + 100, 60, what="more traffic")
        fleet.stop_load()
        started = time.monotonic()
        pipeline.wait_quiescent(fleet.names, timeout=90)
        assert time.monotonic() - started < 90
        assert fleet.errors() == 0, "a request failed on the client side: its truth is unknown"
        truth = fleet.truth()
        assert truth and pipeline.delivered() == truth
        assert pipeline.ledger.gaps() == []
        stats = pipeline.ledger.stats()
        assert stats["ignored:other_host"] > 0 and stats["ignored:not_access_log"] > 0
    finally:
        fleet.stop()
