"""Fixtures of the fake Kubernetes API on a manual clock (``clock``, ``fake``, its
``kubeconfig`` and an official ``api_client`` of it), for the tests of the fake itself. A
module with a ``fake`` of its own (a started pod, rotation, a wall clock) overrides it.

For the follower's tests, over the module's ``fake``: ``ledger``, ``source``, ``fetcher``
and ``follower`` (4 pods at most, 0.2 s slices)."""

from __future__ import annotations

import pytest
from kubernetes import client, config

from app.follow import Follower
from app.kube import LogSource
from app.ledger import Ledger
from sim.fake_kube import NS_PER_S, FakeKube, ManualClock
from tests.followkit import make_fetcher

T0 = 1_795_000_000 * NS_PER_S  # 2026-11-18T11:06:40Z, a whole second


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def fake(clock: ManualClock):
    fk = FakeKube(clock=clock)
    fk.start()
    yield fk
    fk.stop()


@pytest.fixture
def kubeconfig(fake: FakeKube, tmp_path) -> str:
    return fake.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def api_client(kubeconfig: str) -> client.ApiClient:
    api = config.new_client_from_config(config_file=kubeconfig)
    yield api
    api.close()


@pytest.fixture
def ledger(r):
    led = Ledger(r, "fol", 3600)
    led.initialise(0)
    return led


@pytest.fixture
def source(fake):
    src = LogSource("traefik", "app.kubernetes.io/name=traefik", 5)
    yield src
    src.close()


@pytest.fixture
def fetcher(source, ledger):
    return make_fetcher(source, ledger)


@pytest.fixture
def follower(fetcher):
    f = Follower(fetcher, max_pods=4, min_rate=1.0, slice_seconds=0.2)
    yield f
    f.stop(10)
