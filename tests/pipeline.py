"""A harness for pipeline tests: real Celery workers (and beat) in subprocesses, wired
to a real redis-server, the fake Kubernetes API and the platform stub."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import redis
from celery import Celery

from app.ledger import Cursor, Ledger
from app.sim.fake_kube import FakeKube
from app.sim.platform_stub import PlatformStub
from app.sim.procs import CeleryProcess, wait_until

REPORT_INTERVAL = 2
FETCH_INTERVAL = 1


class Pipeline:
    def __init__(self, tmp_path: Path, redis_url: str, kube: FakeKube, platform: PlatformStub) -> None:
        self.tmp = tmp_path
        self.redis_url = redis_url
        self.kube = kube
        self.platform = platform
        self.prefix = "t" + uuid.uuid4().hex[:8]
        self.kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "REDIS_", "PLATFORM_", "FETCH_", "REPORT_"))},
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "KUBECONFIG": self.kubeconfig,
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": self.prefix,
            "PLATFORM_API_URL": platform.url,
            "PLATFORM_INTERNAL_SECRET": platform.secret,
            "REPORT_INTERVAL": str(REPORT_INTERVAL),
            "FETCH_INTERVAL": str(FETCH_INTERVAL),
            "FETCH_TIME_LIMIT": "10",
            "REPORT_RETRY_MAX_DELAY": "1",
            "REPORT_DUE_MAX_DELAY": "2",
            "REPORT_AUTO_RETRIES": "3",
            "REPORT_LEASE": "6",
            "PLATFORM_CONNECT_TIMEOUT": "2",
            "PLATFORM_READ_TIMEOUT": "2",
            "KUBE_REQUEST_TIMEOUT": "5",
            "SCRAPER_ID": "test",
            "LOG_LEVEL": "INFO",
        }
        self.r = redis.Redis.from_url(redis_url)
        self.ledger = Ledger(self.r, self.prefix, REPORT_INTERVAL)
        self.client = Celery(broker=redis_url, backend=redis_url)
        self.client.conf.task_create_missing_queues = True
        self.procs: list[CeleryProcess] = []

    # Processes ------------------------------------------------------------------

    def worker(self, queues: str = "fetch,report", concurrency: int = 2, name: str | None = None, **env: str) -> CeleryProcess:
        name = name or f"w{len(self.procs)}"
        args = ["worker", "-Q", queues, "-c", str(concurrency), "-n", f"{name}@%h", "--without-mingle",
                "--without-gossip", "--loglevel", "INFO"]
        proc = CeleryProcess("worker", {**self.env, **env}, args[1:], log_path=self.tmp / f"{name}.log")
        proc.start()
        self.procs.append(proc)
        proc.wait_ready()
        return proc

    def beat(self, **env: str) -> CeleryProcess:
        args = ["--schedule", str(self.tmp / "beat-schedule"), "--loglevel", "INFO"]
        proc = CeleryProcess("beat", {**self.env, **env}, args, log_path=self.tmp / "beat.log")
        proc.start()
        self.procs.append(proc)
        proc.wait_ready()
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        self.r.close()

    def logs(self) -> str:
        return "\n".join(f"==== {p.log_path.name}\n{p.output()[-6000:]}" for p in self.procs)

    # Driving ----------------------------------------------------------------------

    def init_ledger(self, start_at_ns: int = 0) -> None:
        self.ledger.initialise(start_at_ns)

    def send(self, task: str, *args: object, queue: str = "fetch") -> None:
        self.client.send_task(task, args=args, queue=queue)

    def fetch(self, pod: str) -> None:
        self.send("workers.fetch.fetch", pod, self.kube.pod_uid(pod))

    # Waiting ------------------------------------------------------------------------

    def at_end(self, pods: list[str]) -> bool:
        """Every listed pod's cursor stands at the last line of its current log."""
        cursors = self.ledger.cursors()
        for name in pods:
            lines = self.kube.log_lines(name)
            if not lines:
                continue
            last = lines[-1][0]
            n = sum(1 for ts, _ in lines if ts == last)
            want = Cursor(self.kube.container_id(name), last, n).encode()
            if cursors.get(f"{self.kube.pod_uid(name)}/traefik") != want:
                return False
        return True

    def settled(self) -> bool:
        """Nothing open, nothing due or in flight."""
        return self.r.zcard(f"{self.prefix}:open") == 0 and self.r.zcard(f"{self.prefix}:due") == 0

    def wait_quiescent(self, pods: list[str], timeout: float = 60) -> None:
        try:
            wait_until(lambda: self.at_end(pods) and self.settled(), timeout, interval=0.2, what="quiescence")
        except TimeoutError as e:
            raise AssertionError(f"{e}\nstats={self.ledger.stats()}\n{self.logs()}") from None

    def delivered(self) -> dict[str, dict[str, int]]:
        """What the platform stub logged, per subdomain, without the report count."""
        return {s: {k: v[k] for k in ("bytes_in", "bytes_out", "requests")} for s, v in self.platform.totals().items()}
