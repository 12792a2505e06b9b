"""The pipeline on one machine: Celery worker, beat and Flower processes wired to a
redis-server, a (fake) Kubernetes API and a platform endpoint, plus the checks that
tell when it is quiescent. Used by ``make demo`` and by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import redis

from app.ledger import Ledger
from app.model import Cursor
from sim.fake_kube import FakeKube, PodNotFound
from sim.platform_stub import PlatformStub
from sim.procs import CeleryProcess, ScraperProcess, free_port, wait_until

# Variables of the parent environment that must not leak into the pipeline's processes.
_OWN = ("CELERY_", "REDIS_", "PLATFORM_", "FETCH_", "REPORT_", "TRAEFIK_", "START_AT", "SCRAPER_ID", "KUBECONFIG")


class LocalPipeline:
    """Runs the real processes; ``env`` overrides the scraper's settings."""

    def __init__(self, workdir: Path, redis_url: str, kube: FakeKube, platform: PlatformStub, prefix: str,
                 **env: str) -> None:
        self.dir = Path(workdir)
        self.redis_url = redis_url
        self.kube = kube
        self.platform = platform
        self.prefix = prefix
        self.kubeconfig = kube.write_kubeconfig(self.dir / "kubeconfig")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(_OWN)},
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "KUBECONFIG": self.kubeconfig,
            "REDIS_URL": redis_url,
            "REDIS_KEY_PREFIX": prefix,
            "PLATFORM_API_URL": platform.url,
            "PLATFORM_INTERNAL_SECRET": platform.secret,
            **env,
        }
        self.report_interval = int(self.env.get("REPORT_INTERVAL", "60"))
        self.r = redis.Redis.from_url(redis_url)
        self.ledger = Ledger(self.r, prefix, self.report_interval)
        self.procs: list[CeleryProcess] = []

    # Processes ------------------------------------------------------------------

    def worker(self, queues: str = "fetch,report", concurrency: int = 2, name: str | None = None,
               pool: str | None = None, **env: str) -> CeleryProcess:
        """A Celery worker on ``queues``; ``pool`` by default as compose and the manifests run
        it: threads for a worker of the ``fetch`` queue alone, else prefork."""
        name = name or f"w{len(self.procs)}"
        pool = pool or ("threads" if queues == "fetch" else "prefork")
        args = ["-Q", queues, "-c", str(concurrency), "-n", f"{name}@%h", f"--pool={pool}", "--without-mingle",
                "--without-gossip", "--loglevel", self.env.get("LOG_LEVEL", "INFO")]
        return self._start(CeleryProcess("worker", {**self.env, **env}, args, log_path=self.dir / f"{name}.log"))

    def beat(self, **env: str) -> CeleryProcess:
        args = ["--schedule", str(self.dir / "beat-schedule"), "--loglevel", "INFO"]
        return self._start(CeleryProcess("beat", {**self.env, **env}, args, log_path=self.dir / "beat.log"))

    def watcher(self, name: str = "watcher", ready: str = "; watching", **env: str) -> ScraperProcess:
        """``traefik-metrics-scraper watch`` (the pod watcher); by default ready once it
        leads and has listed the pods. ``ready=""`` for a replica that will wait."""
        env = {"HEALTH_DIR": str(self.dir / f"{name}-health"), **env}
        proc = ScraperProcess("watch", {**self.env, **env}, [], log_path=self.dir / f"{name}.log", ready=ready)
        return self._start(proc)  # type: ignore[return-value]

    def flower(self, user: str, password: str) -> tuple[CeleryProcess, str]:
        """Flower with basic auth (it has none by default); returns it and its URL."""
        port = free_port()
        args = [f"--port={port}", "--address=127.0.0.1", f"--basic-auth={user}:{password}"]
        proc = CeleryProcess("flower", self.env, args, log_path=self.dir / "flower.log").start()
        self.procs.append(proc)
        return proc, f"http://127.0.0.1:{port}"

    def _start(self, proc: CeleryProcess) -> CeleryProcess:
        proc.start()
        self.procs.append(proc)
        proc.wait_ready()
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        self.r.close()

    def logs(self, tail: int = 6000) -> str:
        return "\n".join(f"==== {p.log_path.name}\n{p.output()[-tail:]}" for p in self.procs)

    # Quiescence ---------------------------------------------------------------------

    def at_end(self, pods: list[str]) -> bool:
        """Every listed pod's cursor has consumed every line of its current log."""
        cursors = self.ledger.cursors()
        for name in pods:
            try:
                lines = self.kube.log_lines(name)
                uid, cid = self.kube.pod_uid(name), self.kube.container_id(name)
            except PodNotFound:
                continue
            if not lines:
                continue
            cursor = Cursor.decode(cursors.get(f"{uid}/traefik", ""))
            if cursor is None or cursor.container_id != cid or not cursor.covers(lines):
                return False
        return True

    def settled(self) -> bool:
        """Nothing open, nothing due or in flight."""
        return self.r.zcard(self.ledger.k("open")) == 0 and self.r.zcard(self.ledger.k("due")) == 0

    def wait_quiescent(self, pods: list[str], timeout: float = 60) -> None:
        try:
            wait_until(lambda: self.at_end(pods) and self.settled(), timeout, interval=0.2, what="quiescence")
        except TimeoutError as e:
            raise AssertionError(f"{e}\nstats={self.ledger.stats()}\n{self.logs()}") from None

    def delivered(self) -> dict[str, dict[str, int]]:
        """What the platform logged, per subdomain (without the report count)."""
        return {s: {k: v[k] for k in ("bytes_in", "bytes_out", "requests")} for s, v in self.platform.totals().items()}
