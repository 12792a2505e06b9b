"""LOG_FORMAT=json on a real worker (``celery -A app --quiet worker``): every line it writes
is a JSON object, Celery's own records included, the report lines carry their structured
fields, and no secret appears."""

from __future__ import annotations

import json
import subprocess
import sys

from sim.procs import CeleryProcess, wait_until
from tests.traffic import Traffic


class QuietWorker(CeleryProcess):
    """``celery -A app --quiet worker``: --quiet (a global option) drops the banner, which
    Celery prints rather than logs."""

    def start(self) -> QuietWorker:
        cmd = [sys.executable, "-m", "celery", "-A", "app", "--quiet", "worker", *self.args]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.cwd,
                                     start_new_session=True)
        return self


def test_a_json_worker_writes_json_only_and_no_secret(pipeline, kube, platform):
    pods = ["traefik-a", "traefik-b"]
    for p in pods:
        kube.add_pod(p)
    platform.fail_next(1, status=500)  # one retry: a WARNING with its fields
    pipeline.init_ledger()
    env = {**pipeline.env, "LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"}
    args = ["-Q", "fetch,report", "-c", "2", "-n", "json@%h", "--without-mingle", "--without-gossip", "-l", "DEBUG"]
    worker = QuietWorker("worker", env, args, log_path=pipeline.dir / "json-worker.log").start()
    pipeline.procs.append(worker)
    worker.wait_ready()
    pipeline.beat()
    traffic = Traffic(seed=5)
    for p in pods:
        kube.write_many(p, traffic.lines(20))
    pipeline.wait_quiescent(pods)
    assert pipeline.delivered() == traffic.expected()

    # A report's log line follows its ledger record (app/reporting.py): the ledger can say
    # delivered an instant before the worker has written the line.
    def read_records() -> list[dict]:
        # json.loads raises on any line that is not JSON (a banner, a print)
        return [json.loads(line) for line in worker.output().splitlines() if line.strip()]

    wait_until(lambda: {r["tunnel"] for r in read_records() if r.get("outcome") == "delivered"} >= set(traffic.expected()),
               timeout=10, what="a delivered log line for every tunnel")
    output = worker.output()
    assert platform.secret not in output
    records = read_records()
    loggers = {r["logger"] for r in records}
    assert any(name.startswith("celery.") for name in loggers), loggers  # Celery's own records
    assert any(r["message"].endswith(" ready.") for r in records)
    delivered = [r for r in records if r.get("outcome") == "delivered"]
    assert {r["tunnel"] for r in delivered} == set(traffic.expected())
    for r in delivered:
        assert r["message"].startswith(f"✅ {r['tunnel']}: ↓") and r["interval"].endswith("Z")
        assert r["task"] == "workers.report.report" and r["task_id"]
    assert any(r.get("outcome") == "retry" and r["level"] == "WARNING" for r in records)
    assert any(r.get("outcome") == "sealed" and "interval" in r for r in records)
