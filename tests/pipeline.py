"""The test harness: the local pipeline with short intervals and quick retries, plus
helpers to send tasks by name."""

from __future__ import annotations

import uuid
from pathlib import Path

from celery import Celery

from sim.cluster import LocalPipeline
from sim.fake_kube import FakeKube
from sim.platform_stub import PlatformStub

TEST_ENV = {
    "REPORT_INTERVAL": "2",
    "FETCH_INTERVAL": "1",
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


class Pipeline(LocalPipeline):
    def __init__(self, tmp_path: Path, redis_url: str, kube: FakeKube, platform: PlatformStub) -> None:
        super().__init__(tmp_path, redis_url, kube, platform, "t" + uuid.uuid4().hex[:8], **TEST_ENV)
        self.tmp = tmp_path
        self.client = Celery(broker=redis_url, backend=redis_url)
        self.client.conf.task_create_missing_queues = True

    def init_ledger(self, start_at_ns: int = 0) -> None:
        self.ledger.initialise(start_at_ns)

    def send(self, task: str, *args: object, queue: str = "fetch") -> None:
        self.client.send_task(task, args=args, queue=queue)

    def fetch(self, pod: str) -> None:
        self.send("workers.fetch.fetch", pod, self.kube.pod_uid(pod))
