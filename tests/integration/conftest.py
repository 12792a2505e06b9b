"""Fixtures of the fake Kubernetes API on a manual clock (``clock``, ``fake``, its
``kubeconfig`` and an official ``api_client`` of it), for the tests of the fake itself. A
module with a ``fake`` of its own (a started pod, rotation, a wall clock) overrides it."""

from __future__ import annotations

import pytest
from kubernetes import client, config

from sim.fake_kube import NS_PER_S, FakeKube, ManualClock

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
