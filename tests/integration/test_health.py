"""The probes mean something (app/health.py), shown with real processes: a redis-server
of this test's own (it is stopped and started again), real ``celery -A app worker`` and
``celery -A app beat``, and the probe commands the manifests run, in ``sh``.

- A worker that stays up but stops consuming fails liveness, not readiness.
- A worker cut off from the broker fails readiness, not liveness, and takes pings again
  once Redis is back.
- A stalled beat (SIGSTOP) fails liveness; it passes again once beat runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis
from celery import Celery

from app import health
from sim.procs import CeleryProcess, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
INTERVAL = 1  # HEALTH_INTERVAL
FETCH_TIME_LIMIT = 5
KUBE_REQUEST_TIMEOUT = 2
# health.live_budget: 2 x interval + the longest fetch (FETCH_TIME_LIMIT + KUBE_REQUEST_TIMEOUT + 10) + 10
LIVE_BUDGET = 2 * INTERVAL + FETCH_TIME_LIMIT + KUBE_REQUEST_TIMEOUT + 10 + 10
FETCH_INTERVAL = 1
BEAT_BUDGET = 3 * FETCH_INTERVAL + 15


class OwnRedis:
    """A redis-server on a fixed port, stopped and started again by the test."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(up, 20, what="redis-server")
        client.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path):
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def _env(redis_url: str, health_dir: Path) -> dict[str, str]:
    names = ("CELERY_", "REDIS_", "PLATFORM_", "FETCH_", "REPORT_", "HEALTH_", "LOG_", "KUBECONFIG")
    env = {k: v for k, v in os.environ.items() if not k.startswith(names)}
    env.update({
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": "h" + uuid.uuid4().hex[:8],
        "HEALTH_DIR": str(health_dir),
        "HEALTH_INTERVAL": str(INTERVAL),
        "FETCH_TIME_LIMIT": str(FETCH_TIME_LIMIT),
        "KUBE_REQUEST_TIMEOUT": str(KUBE_REQUEST_TIMEOUT),
        "REPORT_INTERVAL": "2",
        "FETCH_INTERVAL": str(FETCH_INTERVAL),
        # A Kubernetes API that is not there: the rounds fail at once (a fetch worker of the
        # Kubernetes source with no config at all does not start).
        "KUBECONFIG": _unreachable_kubeconfig(health_dir.parent / "kubeconfig"),
    })
    return env


def _unreachable_kubeconfig(path: Path) -> str:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "none",
        "clusters": [{"name": "none", "cluster": {"server": "http://127.0.0.1:9"}}],  # discard: refused
        "users": [{"name": "none", "user": {"token": "none"}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
    }))
    return str(path)


def probe(health_dir: Path, name: str) -> bool:
    """Run the probe the manifests run (app.health.probe_command), in sh."""
    return subprocess.run(["sh", "-c", health.probe_command(str(health_dir), name)],
                          capture_output=True, timeout=10).returncode == 0


def _worker(tmp_path: Path, redis_url: str, name: str) -> tuple[CeleryProcess, Path]:
    health_dir = tmp_path / f"health-{name}"
    # The fetch worker as compose and the manifests run it: one thread.
    args = ["-Q", "fetch", "--pool=threads", "-c", "1", "-n", f"{name}@%h", "--without-gossip", "--without-mingle",
            "-l", "INFO"]
    proc = CeleryProcess("worker", _env(redis_url, health_dir), args, log_path=tmp_path / f"{name}.log")
    proc.start()
    proc.wait_ready()
    return proc, health_dir


def _nodename(proc: CeleryProcess) -> str:
    line = next(x for x in proc.output().splitlines() if x.endswith(" ready."))
    return line.split()[-2]


def test_a_worker_that_stops_consuming_fails_liveness_not_readiness(tmp_path, own_redis):
    worker, hdir = _worker(tmp_path, own_redis.url, "stopper")
    try:
        wait_until(lambda: probe(hdir, health.LIVE) and probe(hdir, health.READY), 30, what="live and ready")
        node = _nodename(worker)
        control = Celery(broker=own_redis.url)
        # The worker stays up but consumes nothing: every queue it reads is cancelled,
        # its own direct queue included (what celery/celery#10205 leaves behind).
        for queue in ("fetch", f"{node}.dq2"):
            replies = control.control.cancel_consumer(queue, destination=[node], reply=True, timeout=5)
            assert replies and "ok" in next(iter(replies[0].values())), replies
        started = time.monotonic()
        wait_until(lambda: not probe(hdir, health.LIVE), LIVE_BUDGET + 10, interval=0.5, what="liveness to fail")
        took = time.monotonic() - started
        assert took > 2 * INTERVAL, "liveness failed before any ping could have been missed"
        assert worker.proc.poll() is None, "the worker is still running"
        assert probe(hdir, health.READY), "the broker is fine: still ready"
        control.close()
    finally:
        worker.stop()


def test_a_broker_outage_fails_readiness_not_liveness(tmp_path, own_redis):
    worker, hdir = _worker(tmp_path, own_redis.url, "outage")
    try:
        wait_until(lambda: probe(hdir, health.LIVE) and probe(hdir, health.READY), 30, what="live and ready")
        own_redis.stop()
        wait_until(lambda: not probe(hdir, health.READY), 10, interval=0.2, what="readiness to fail")
        # Longer than the liveness budget: a worker that only waited for pings would fail.
        deadline = time.monotonic() + LIVE_BUDGET + 5
        while time.monotonic() < deadline:
            assert probe(hdir, health.LIVE), "liveness failed during a broker outage"
            assert not probe(hdir, health.READY)
            time.sleep(1)
        own_redis.start()
        wait_until(lambda: probe(hdir, health.READY), 20, what="readiness once Redis is back")
        # From now on only consumed pings extend liveness: it must hold past its budget.
        back = time.monotonic()
        while time.monotonic() - back < LIVE_BUDGET + 5:
            assert worker.proc.poll() is None, f"the worker died:\n{worker.output()[-3000:]}"
            assert probe(hdir, health.LIVE), f"no ping consumed after the outage:\n{worker.output()[-3000:]}"
            time.sleep(1)
    finally:
        worker.stop()


def test_a_stalled_beat_fails_liveness(tmp_path, own_redis):
    hdir = tmp_path / "health-beat"
    beat = CeleryProcess("beat", _env(own_redis.url, hdir), ["--schedule", str(tmp_path / "schedule"), "-l", "INFO"],
                         log_path=tmp_path / "beat.log")
    beat.start()
    try:
        beat.wait_ready()
        wait_until(lambda: probe(hdir, health.BEAT), 30, what="beat's liveness")
        # beat_init writes a longer first deadline (budget + 60 s, for loading the schedule), so
        # the first pass of the loop writes a smaller one: wait for a deadline a pass wrote.
        wait_until(lambda: int((hdir / health.BEAT).read_text()) <= time.time() + BEAT_BUDGET + 1, 30,
                   what="beat's first pass")
        first = int((hdir / health.BEAT).read_text())
        wait_until(lambda: int((hdir / health.BEAT).read_text()) > first, 10, what="beat to extend it")
        os.kill(beat.proc.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: not probe(hdir, health.BEAT), BEAT_BUDGET + 10, interval=0.5, what="beat's liveness to fail")
        finally:
            os.kill(beat.proc.pid, signal.SIGCONT)
        wait_until(lambda: probe(hdir, health.BEAT), 15, what="beat's liveness once it runs again")
    finally:
        beat.stop()
