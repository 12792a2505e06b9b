"""Shared fixtures: a real redis-server for the session, a fake Kubernetes API and a
platform stub per test, and a pipeline harness that runs real Celery workers."""

from __future__ import annotations

import os

import pytest
import redis
from hypothesis import HealthCheck, settings

from sim.fake_kube import FakeKube
from sim.platform_stub import PlatformStub
from sim.procs import RedisServer

settings.register_profile(
    "ci", max_examples=200, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def r(redis_url):
    """A client of the test redis-server, flushed for this test."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def kube(tmp_path):
    fake = FakeKube()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def platform():
    stub = PlatformStub(secret="s3cret-value")
    stub.start()
    yield stub
    stub.stop()


@pytest.fixture
def pipeline(tmp_path, redis_url, kube, platform):
    from tests.pipeline import Pipeline

    p = Pipeline(tmp_path, redis_url, kube, platform)
    yield p
    p.stop()
