"""``make chaos``: the real pipeline under every fault at once, then an exact reconciliation.

Starts, as separate processes, a redis-server (AOF, ``appendfsync always``), two or more
Celery workers on both queues and one beat, each under a small supervisor that restarts
a process that exits (like the kubelet restarts a container: our own kills come back
after the 1-3 s the schedule says, any other exit after the kubelet's back-off of 10 s,
doubling) and counts exits. In this process: the simulated Kubernetes API with three or
more Traefik pods writing realistic access logs (tunnel traffic in every host spelling the
counting rule accepts, other hosts, Traefik's own lines, and lines the parser rejects), a
ground truth of what the counting rule must count, and the platform stub.

Faults, all in one run, on a schedule derived from ``--seed``:

- platform: 20 % of requests answered 500/502/503, 5 % recorded and then the connection
  dropped (the answer is lost), 3 % answered only after twice the client's read timeout
  (the client gives up; the stub records the answer as lost), a window where half the
  requests are that slow, and a full outage of 20 s (the server is down: connections are
  refused) every five minutes;
- Kubernetes API: 10 % of requests answered 500/503, windows of slow log reads (some
  slower than ``KUBE_REQUEST_TIMEOUT``);
- a worker's whole process group SIGKILLed about every 40 s (down 1-3 s), beat SIGKILLed,
  redis-server SIGKILLed and restarted from its AOF (down 1-4 s), a Traefik container
  restarted, a Traefik pod replaced (terminated with a 30 s grace period: it serves until
  the scraper has read it or the grace period ends, then a new pod takes its name).

After the traffic stops it waits, with a bound, until everything is delivered, then checks:
per tunnel and in total, bytes in, bytes out and requests at the platform (deduplicated by
Idempotency-Key) equal the truth; no report is undelivered or dead-lettered; every
interval is merged; every key under the prefix is one of docs/design.md's "Redis key
schema", and every ``rep:``, ``iv:``, ``lock:``, ``round:`` key has a TTL or is referenced
from ``open``, ``sealed``, ``due`` or ``dead``; at most one request per report was on the
wire at once (a request whose client had hung up does not count) and none went out after
the ledger recorded the report delivered; every report a fault delayed was delivered within
60 s + REPORT_INTERVAL of the fault's end (a killed process runs again, Redis answers again,
the platform answers its first request with success after the outage), each wait between
that, the report's own attempts the platform then failed at random, and its delivery
within the same bound; after each Redis
restart every worker processes a task within 30 s.

``--dedupe off`` runs the platform without deduplication: every duplicate it bills must
follow an attempt whose answer was lost (the stub knows: a drop, a client that had hung
up, a failed write; or an answer handed to a worker process SIGKILLed right after), and
the summary says how many bytes a platform ignoring Idempotency-Key double-counts.

The last line is the summary; the exit status is 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import redis

from app.ledger import Ledger
from app.model import Cursor, ReportKey, ReportState
from app.reporting import idempotency_key
from sim.fake_kube import FakeKube, PodNotFound
from sim.platform_stub import PlatformStub
from sim.procs import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = "t.lum.tools"
TUNNELS = ("alpha", "bravo-2", "charlie", "delta-echo", "x1", "foxtrot", "golf-7")
PREFIX = "tms"
SCRAPER_ID = "chaos"
# Variables of this process's environment that must not reach the pipeline's processes.
_OWN = ("CELERY_", "REDIS_", "PLATFORM_", "FETCH_", "REPORT_", "TRAEFIK_", "START_AT", "SCRAPER_ID", "KUBECONFIG",
        "VISIBILITY_", "MAX_WAITING", "KUBE_", "INTERVAL_")
RECOVERY_SLACK = 60.0  # a delayed report is delivered within this + REPORT_INTERVAL of its fault's end
# (each stretch between that, its own random failures after it, and its delivery: Run._recovery)
CONSUME_WITHIN = 30.0  # after Redis answers again, every worker processes a task within this
GRACE_SECONDS = 30.0  # terminationGracePeriodSeconds of a replaced Traefik pod
BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_RESET = 10.0, 300.0, 600.0  # the kubelet's restart back-off


def pipeline_env(report_interval: int) -> dict[str, str]:
    """The scraper's settings in this run: short intervals and timeouts; the leases,
    retry caps and time limits keep their production defaults."""
    return {
        "REPORT_INTERVAL": str(report_interval),
        "FETCH_INTERVAL": "1",
        "PLATFORM_CONNECT_TIMEOUT": "2",
        "PLATFORM_READ_TIMEOUT": "3",
        "KUBE_REQUEST_TIMEOUT": "4",
        "SCRAPER_ID": SCRAPER_ID,
        "REDIS_KEY_PREFIX": PREFIX,
        "LOG_LEVEL": "INFO",
    }


def now() -> float:
    return time.time()


# Traffic and ground truth -----------------------------------------------------------


class LineMaker:
    """Traefik v3 access-log lines for one pod, and what the counting rule must count.

    About 78 % tunnel lines (lower, upper and mixed case, a trailing dot, now and then a
    size field left out: it counts as 0), 8 % other hosts and lookalikes, 1 % without a
    host, 6 % Traefik's own lines, and 7 % lines the parser rejects (truncated JSON, not an
    object, sizes of the wrong type, negative or too large, a host that is not a string,
    invalid UTF-8) or ignores (CLF). ``truth`` changes only through ``count``: the writer
    counts a line once it is in the log."""

    OTHER_HOSTS = ("example.com", "api.lum.tools", "evilt.lum.tools", "x.t.lum.tools.evil.com",
                   "a.b.t.lum.tools", "t.lum.tools", "-x.t.lum.tools")

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seq = 0
        self.truth: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        self.kinds: Counter[str] = Counter()
        self.lines = 0

    def make(self) -> tuple[bytes, str, str | None, int, int]:
        """(line, kind, tunnel or None, bytes in, bytes out) of one new line."""
        rng = self.rng
        self.seq += 1
        roll = rng.random()
        if roll < 0.78:
            sub = rng.choice(TUNNELS)
            host = f"{sub}.{DOMAIN}"
            spell = rng.random()
            if spell < 0.1:
                host = host.upper()
            elif spell < 0.2:
                host = "".join(c.upper() if rng.random() < 0.5 else c for c in host)
            elif spell < 0.3:
                host += "."
            bi = rng.choice((0, 0, 0, rng.randrange(1, 50_000)))
            bo = rng.choice((0, rng.randrange(1, 2_000), rng.randrange(1, 1_100_000)))
            entry = self._entry(host, bi, bo)
            if rng.random() < 0.02:
                del entry[rng.choice(("RequestContentSize", "DownstreamContentSize"))]
                bi = entry.get("RequestContentSize", 0)
                bo = entry.get("DownstreamContentSize", 0)
            return self._dump(entry), "tunnel", sub, bi, bo
        if roll < 0.86:
            return self._dump(self._entry(rng.choice(self.OTHER_HOSTS), 10, 20)), "other_host", None, 0, 0
        if roll < 0.87:
            entry = self._entry("", 5, 5)
            del entry["RequestHost"]
            return self._dump(entry), "no_host", None, 0, 0
        if roll < 0.93:
            own = rng.choice((
                b"\x1b[90m2026-11-24T01:50:22Z\x1b[0m \x1b[32mINF\x1b[0m Starting provider *file.Provider",
                b'{"level":"info","msg":"Configuration loaded from flags.","time":"2026-11-24T01:50:22Z"}',
                b"\x1b[90m2026-11-24T01:50:23Z\x1b[0m \x1b[31mERR\x1b[0m error=\"accept tcp: use of closed network connection\"",
                b"    goroutine 1 [running]:",
            ))
            return own, "traefik_own", None, 0, 0
        return self._odd(rng.choice(TUNNELS)), "odd", None, 0, 0

    def count(self, sub: str | None, bi: int, bo: int) -> None:
        self.lines += 1
        if sub is not None:
            t = self.truth[sub]
            t[0] += bi
            t[1] += bo
            t[2] += 1

    def _odd(self, sub: str) -> bytes:
        rng = self.rng
        host = f"{sub}.{DOMAIN}"
        kind = rng.randrange(10)
        if kind == 0:
            full = self._dump(self._entry(host, 100, 200))
            return full[: rng.randrange(10, len(full) - 1)]  # truncated
        if kind == 1:
            return rng.choice((b"[1,2,3]", b'"RequestHost"', b"42", b"null"))
        if kind == 2:
            return self._dump(self._entry(host, rng.choice(("123", 1.0, None, True, [1])), 5))
        if kind == 3:
            return self._dump(self._entry(host, 5, -rng.randrange(1, 1000)))
        if kind == 4:
            return self._dump(self._entry(host, 2**64 + 1, 5))
        if kind == 5:
            return self._dump(self._entry(rng.choice((None, 123, ["x"])), 5, 5))  # type: ignore[arg-type]
        if kind == 6:
            return self._dump(self._entry(host, 5, 5)).replace(b"POST", b"P\xffST").replace(b"GET", b"G\xfeT")
        if kind == 7:
            return (b'10.0.0.7 - - [24/Nov/2026:01:50:22 +0000] "GET /x HTTP/1.1" 200 512 "-" "curl/8" 7 '
                    b'"tunnels@file" "http://10.0.1.2:8080" 1ms')
        if kind == 8:
            return b"{not json at all"
        return self._dump(self._entry(host, 5, 5))[:-1] + b',"RequestContentSize":}'

    def _entry(self, host: object, bi: object, bo: object) -> dict:
        seq = self.seq
        return {
            "ClientAddr": "10.0.0.7:51234", "ClientHost": "10.0.0.7", "ClientPort": "51234", "ClientUsername": "-",
            "DownstreamContentSize": bo, "DownstreamStatus": 200, "Duration": 1_200_000,
            "OriginContentSize": bo, "OriginDuration": 1_000_000, "OriginStatus": 200, "Overhead": 200_000,
            "RequestAddr": host, "RequestContentSize": bi, "RequestCount": seq, "RequestHost": host,
            "RequestMethod": "POST" if bi else "GET", "RequestPath": f"/p/{seq}?q={'x' * self.rng.randrange(0, 300)}",
            "RequestPort": "-", "RequestProtocol": "HTTP/1.1", "RequestScheme": "http", "RetryAttempts": 0,
            "RouterName": "tunnels@file", "ServiceAddr": "10.0.1.2:8080", "ServiceName": "tunnels@file",
            "ServiceURL": "http://10.0.1.2:8080", "StartLocal": "2026-11-24T01:50:22.123456789Z",
            "StartUTC": "2026-11-24T01:50:22.123456789Z", "entryPointName": "web", "level": "info",
            "msg": "", "time": "2026-11-24T01:50:22Z",
        }

    @staticmethod
    def _dump(entry: dict) -> bytes:
        return json.dumps(entry, separators=(",", ":"), sort_keys=True).encode()


class PodWriter:
    """Writes one pod's access log at ``rate`` lines a second (batches every 50 ms, one
    kubelet timestamp per batch) until stopped; ``paused`` while the pod is replaced."""

    def __init__(self, kube: FakeKube, name: str, rate: float, seed: int) -> None:
        self.kube = kube
        self.name = name
        self.rate = rate
        self.maker = LineMaker(seed)
        self.lock = threading.Lock()
        self.paused = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"writer-{name}", daemon=True)

    def _run(self) -> None:
        step = 0.05
        rng = random.Random(self.maker.rng.random())
        owed = 0.0
        next_at = time.monotonic()
        while not self.stop.is_set():
            next_at += step
            self.stop.wait(max(0.0, next_at - time.monotonic()))
            owed += self.rate * step * rng.uniform(0.5, 1.5)
            n = int(owed)
            owed -= n
            if n == 0:
                continue
            with self.lock:
                if self.paused or self.stop.is_set():
                    continue
                made = [self.maker.make() for _ in range(n)]
                try:
                    self.kube.write_many(self.name, [m[0] for m in made])
                except PodNotFound:
                    continue
                for _line, kind, sub, bi, bo in made:
                    self.maker.count(sub, bi, bo)
                    self.maker.kinds[kind] += 1


# Processes ----------------------------------------------------------------------------


@dataclass
class Exit:
    at: float
    code: int | None
    planned: bool


class Supervised:
    """A process restarted whenever it exits, like a container under the kubelet: after a
    kill of ours once the delay we asked for passed, after any other exit with the
    kubelet's back-off (10 s, doubling up to 300 s, reset after 10 minutes up). Its output
    goes to ``log_path`` with the time of each line; lines that show it consuming are
    timed (``received``, ``succeeded``)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, t0: float) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.t0 = t0
        self.proc: subprocess.Popen | None = None
        self.spawns: list[float] = []
        self.exits: list[Exit] = []
        self.ready: list[float] = []
        self.received: list[float] = []
        self.succeeded: list[float] = []
        self.crash_lines: list[str] = []
        self._stop = threading.Event()
        self._planned: float | None = None  # delay before the restart of a kill of ours
        self._backoff = BACKOFF_FIRST
        self.ports_to = 0  # a port whose connections ``kill`` notes (the platform's)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name=f"supervise-{name}", daemon=True)

    def start(self) -> Supervised:
        self._spawn()
        self._watcher.start()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self) -> None:
        proc = subprocess.Popen(self.argv, env=self.env, cwd=str(ROOT), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.proc = proc
        self.spawns.append(now())
        threading.Thread(target=self._read, args=(proc,), name=f"read-{self.name}", daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        stopping = False  # once the process is on its way out, its pool's last lines do not count
        for raw in iter(proc.stdout.readline, b""):
            t = now()
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._log_lock:
                self._log.write(f"{t - self.t0:9.3f} [{proc.pid}] {line}\n".encode())
                self._log.flush()
            if "Unrecoverable error" in line or "CRITICAL" in line:
                self.crash_lines.append(line[:300])
            if "Unrecoverable error" in line or "Warm shutdown" in line or "Cold shutdown" in line:
                stopping = True
            if stopping:
                continue
            if "] received" in line:
                self.received.append(t)
            elif "] succeeded in" in line:
                self.succeeded.append(t)
            elif " ready." in line or "beat: Starting" in line:
                self.ready.append(t)

    def _watch(self) -> None:
        while not self._stop.is_set():
            assert self.proc is not None
            code = self.proc.wait()
            planned, self._planned = self._planned, None
            self.exits.append(Exit(now(), code, planned is not None))
            if self._stop.is_set():
                return
            if planned is not None:
                delay = planned
            else:
                up = now() - self.spawns[-1]
                if up >= BACKOFF_RESET:
                    self._backoff = BACKOFF_FIRST
                delay, self._backoff = self._backoff, min(BACKOFF_MAX, self._backoff * 2)
            if self._stop.wait(delay):
                return
            self._spawn()

    def kill(self, down: float) -> tuple[float, set[int]]:
        """SIGKILL the whole process group; it runs again ``down`` seconds later. Returns
        the time and the local ports of its TCP connections to port ``ports_to``."""
        assert self.proc is not None
        ports = tcp_ports_of(process_group(self.proc.pid), self.ports_to) if self.ports_to else set()
        self._planned = down
        t = now()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            self._planned = None
        return t, ports

    def stop(self, timeout: float = 20) -> None:
        self._stop.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        self._watcher.join(5)
        with self._log_lock:
            self._log.close()

    def unplanned_exits(self) -> list[Exit]:
        return [e for e in self.exits if not e.planned]


def process_group(pgid: int) -> list[int]:
    """PIDs whose process group is ``pgid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            out.append(int(entry.name))
    return out


def tcp_ports_of(pids: list[int], remote_port: int) -> set[int]:
    """Local ports of the TCP connections these processes hold to 127.0.0.1:remote_port."""
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 10 or cols[9] not in inodes:
                continue
            local, remote = cols[1], cols[2]
            if int(remote.rsplit(":", 1)[1], 16) == remote_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


class ChaosRedis:
    """redis-server as the ledger must run (AOF, ``appendfsync always``, noeviction) on a
    fixed port, so that it can be SIGKILLed and started again from its AOF."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run 'make chaos' (it installs Debian's redis-server)")
        self.binary = binary
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> float:
        """Start and wait until it answers PING with its data loaded; returns that time."""
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction",
             "--save", "", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, start_new_session=True,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                return bool(client.ping())
            except redis.RedisError:  # refused, or still loading its AOF
                return False

        try:
            wait_until(up, 30, interval=0.02, what="redis-server to answer PING")
        finally:
            client.close()
        return now()

    def kill(self) -> float:
        assert self.proc is not None
        t = now()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return t

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class KubeErrors:
    """Makes about ``rate`` of the fake API's requests fail with 500 or 503 (through its
    ``fail_next``: each new request seen arms a failure for a following one with that
    probability)."""

    def __init__(self, kube: FakeKube, rate: float, seed: int) -> None:
        self.kube = kube
        self.rate = rate
        self.rng = random.Random(seed)
        self.injected = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="kube-errors", daemon=True)

    def _run(self) -> None:
        seen = len(self.kube.requests)
        while not self.stop.wait(0.01):
            n = len(self.kube.requests)
            for _ in range(n - seen):
                if self.rng.random() < self.rate:
                    self.kube.fail_next(1, status=self.rng.choice((500, 503)))
                    self.injected += 1
            seen = n


# The schedule ---------------------------------------------------------------------------


@dataclass
class Fault:
    """One fault of the run. ``end``: when it is over (the killed process runs again,
    Redis answers again, the platform answers with success, reads are quick again)."""

    kind: str
    at: float  # seconds after the traffic started (planned)
    args: dict = field(default_factory=dict)
    start: float = 0.0  # wall clock
    end: float | None = None
    note: str = ""


def make_schedule(seed: int, seconds: float, workers: int, pods: list[str]) -> list[Fault]:
    """Every fault of the run, from ``seed``: about one worker kill per 40 s, and per five
    minutes (at least once) a beat kill, a Redis kill, a 20 s platform outage, a window of
    slow platform answers, a window of slow log reads, a container restart and a pod
    replacement, each at a random time."""
    rng = random.Random(seed)
    horizon = max(30.0, seconds - 10)
    faults: list[Fault] = []
    for _ in range(max(3, round(seconds / 40))):
        faults.append(Fault("kill_worker", rng.uniform(5, horizon), {"worker": rng.randrange(workers),
                                                                     "down": round(rng.uniform(1, 3), 2)}))
    segments = max(1, round(seconds / 300))
    length = seconds / segments
    for k in range(segments):
        lo, hi = k * length + 8, max(k * length + 9, (k + 1) * length - 25)

        def when(lo: float = lo, hi: float = hi) -> float:
            return rng.uniform(lo, hi)

        faults.append(Fault("kill_beat", when(), {"down": round(rng.uniform(1, 3), 2)}))
        faults.append(Fault("kill_redis", when(), {"down": round(rng.uniform(1, 4), 2)}))
        faults.append(Fault("platform_outage", when(), {"seconds": 20.0}))
        faults.append(Fault("slow_platform", when(), {"seconds": 10.0, "rate": 0.5}))
        faults.append(Fault("slow_reads", when(), {"seconds": 15.0, "delay": rng.choice((2.0, 6.0))}))
        faults.append(Fault("pod_restart", when(), {"pod": rng.choice(pods)}))
        faults.append(Fault("pod_replace", when(), {"pod": rng.choice(pods)}))
    faults.sort(key=lambda f: f.at)
    return faults


# The run ----------------------------------------------------------------------------------


@dataclass
class Options:
    seed: int
    seconds: float
    pods: int = 3
    rate: float = 60.0
    report_interval: int = 5
    workers: int = 2
    concurrency: int = 2
    dedupe: bool = True
    drain: float = 240.0
    workdir: Path | None = None
    keep: bool = False


class Run:
    def __init__(self, opt: Options) -> None:
        self.opt = opt
        self.dir = opt.workdir or Path(tempfile.mkdtemp(prefix="tms-chaos-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ri = opt.report_interval
        self.t0 = now()
        self.pods = [f"traefik-{i}" for i in range(opt.pods)]
        self.redis = ChaosRedis(self.dir / "redis")
        self.kube = FakeKube()
        self.platform = PlatformStub(secret="chaos-" + str(opt.seed), dedupe=opt.dedupe, seed=opt.seed)
        self.writers: list[PodWriter] = []
        self.workers: list[Supervised] = []
        self.beat: Supervised | None = None
        self.kube_errors: KubeErrors | None = None
        self.faults = make_schedule(opt.seed, opt.seconds, opt.workers, self.pods)
        self.kills: list[tuple[float, set[int]]] = []  # worker kills: time, its connections to the platform
        self.redis_up: list[float] = []
        self.lock = threading.Lock()
        self.problems: list[str] = []
        self.r: redis.Redis | None = None
        self.ledger: Ledger | None = None
        self.traffic_end = 0.0
        self.replacing: set[str] = set()

    def say(self, text: str) -> None:
        print(f"[{now() - self.t0:7.1f}s] {text}", flush=True)

    # Start and stop -------------------------------------------------------------------

    def start(self) -> None:
        opt = self.opt
        self.say(f"chaos: seed {opt.seed}, {opt.seconds:g} s of traffic, {opt.pods} pods at {opt.rate:g} lines/s, "
                 f"REPORT_INTERVAL={self.ri}, {opt.workers} workers -c {opt.concurrency}, platform dedup "
                 f"{'on' if opt.dedupe else 'off'}; files in {self.dir}")
        self.redis_up.append(self.redis.start())
        self.r = redis.Redis.from_url(self.redis.url, socket_timeout=5, socket_connect_timeout=2)
        self.ledger = Ledger(self.r, PREFIX, self.ri)
        self.ledger.initialise(0)  # fresh pods: every line of their logs counts
        self.kube.start()
        platform_url = self.platform.start()
        self.platform.port = int(platform_url.rsplit(":", 1)[1])  # the same port after an outage
        self.platform.error_rate = 0.20
        self.platform.drop_after_commit = 0.05
        self.platform.slow(0.03, 6.0)  # twice PLATFORM_READ_TIMEOUT
        for i, name in enumerate(self.pods):
            self.kube.add_pod(name)
            self.writers.append(PodWriter(self.kube, name, opt.rate, seed=opt.seed * 1000 + i))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(_OWN)},
            "PYTHONPATH": str(ROOT),
            "KUBECONFIG": self.kube.write_kubeconfig(self.dir / "kubeconfig"),
            "REDIS_URL": self.redis.url,
            "PLATFORM_API_URL": platform_url,
            "PLATFORM_INTERNAL_SECRET": self.platform.secret,
            **pipeline_env(self.ri),
        }
        celery = [sys.executable, "-m", "celery", "-A", "app"]
        for i in range(opt.workers):
            name = f"w{i + 1}"
            w = Supervised(name, [*celery, "worker", "-Q", "fetch,report", "-c", str(opt.concurrency), "-n",
                                  f"{name}@%h", "--without-mingle", "--without-gossip", "--loglevel", "INFO"],
                           env, self.dir / f"{name}.log", self.t0)
            w.ports_to = self.platform.port
            self.workers.append(w.start())
        self.beat = Supervised("beat", [*celery, "beat", "--schedule", str(self.dir / "beat-schedule"),
                                        "--loglevel", "INFO"], env, self.dir / "beat.log", self.t0).start()
        for w in self.workers:
            wait_until(lambda w=w: w.ready, 120, interval=0.1, what=f"worker {w.name} to be ready")
        wait_until(lambda: self.beat.ready, 60, interval=0.1, what="beat to start")
        self.kube_errors = KubeErrors(self.kube, 0.10, opt.seed)
        self.kube_errors.thread.start()
        self.say(f"chaos: pipeline up (redis {self.redis.url}, platform {platform_url}, kube {self.kube.url})")

    def stop(self) -> None:
        for w in self.writers:
            w.stop.set()
        if self.kube_errors is not None:
            self.kube_errors.stop.set()
        for p in [*self.workers, *([self.beat] if self.beat else [])]:
            p.stop()
        self.platform.stop()
        self.kube.stop()
        if self.r is not None:
            self.r.close()
        self.redis.stop()
        if not self.opt.keep and not self.problems:
            shutil.rmtree(self.dir, ignore_errors=True)

    # Faults ----------------------------------------------------------------------------------

    def run_schedule(self) -> None:
        start = now()
        for w in self.writers:
            w.thread.start()
        threads = []
        for fault in self.faults:
            delay = start + fault.at - now()
            if delay > 0:
                time.sleep(delay)
            t = threading.Thread(target=self._apply, args=(fault,), name=f"fault-{fault.kind}", daemon=True)
            t.start()
            threads.append(t)
        rest = start + self.opt.seconds - now()
        if rest > 0:
            time.sleep(rest)
        for w in self.writers:
            with w.lock:
                w.stop.set()
        self.traffic_end = now()
        self.say(f"chaos: traffic stopped ({sum(w.maker.lines for w in self.writers):,} lines)")
        for t in threads:
            t.join(GRACE_SECONDS + 120)

    def _apply(self, f: Fault) -> None:
        try:
            getattr(self, "_f_" + f.kind)(f)
        except Exception as e:  # noqa: BLE001 - a fault that could not be applied is a failed run
            self.problem(f"fault {f.kind} at {f.at:.0f}s could not be applied: {type(e).__name__}: {e}")
        with self.lock:
            if f.end is None:
                f.end = now()
        self.say(f"fault {f.kind} {f.args} over after {f.end - f.start:.1f}s {f.note}")

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)
        self.say("PROBLEM: " + text)

    def _kill(self, proc: Supervised, f: Fault, down: float) -> None:
        # A process already down (killed or crashed) is killed once it runs again.
        wait_until(lambda: proc.running, 120, interval=0.05, what=f"{proc.name} to run again")
        spawns = len(proc.spawns)
        f.start, ports = proc.kill(down)
        if proc is not self.beat:
            self.kills.append((f.start, ports))
        wait_until(lambda: len(proc.spawns) > spawns, down + BACKOFF_MAX + 10, interval=0.02,
                   what=f"{proc.name} to run again")
        f.end = proc.spawns[spawns]

    def _f_kill_worker(self, f: Fault) -> None:
        self._kill(self.workers[f.args["worker"]], f, f.args["down"])

    def _f_kill_beat(self, f: Fault) -> None:
        assert self.beat is not None
        self._kill(self.beat, f, f.args["down"])

    def _f_kill_redis(self, f: Fault) -> None:
        f.start = self.redis.kill()
        time.sleep(f.args["down"])
        up = self.redis.start()
        f.end = up
        with self.lock:
            self.redis_up.append(up)
        # Probe tasks so that every worker has work to take while we watch it come back.
        probe = threading.Thread(target=self._probe, args=(up,), daemon=True)
        probe.start()

    def _probe(self, since: float) -> None:
        from celery import Celery

        client = Celery(broker=self.redis.url)
        client.conf.task_create_missing_queues = True
        try:
            while now() < since + CONSUME_WITHIN + 5:
                try:
                    client.send_task("workers.maintenance.merge", queue="fetch")
                except Exception:  # noqa: BLE001 - a probe that cannot be sent is retried
                    time.sleep(0.5)
                time.sleep(0.5)
        finally:
            client.close()

    def _f_platform_outage(self, f: Fault) -> None:
        f.start = now()
        self.platform.stop()
        time.sleep(f.args["seconds"])
        self.platform.start()
        back = now()
        if not self.platform.wait_for(lambda: any(a.received_at >= back and a.status in (200, 201)
                                                  and a.answered_at for a in self.platform.attempts), 300):
            self.problem("the platform never answered with success after its outage")
            return
        f.end = min(a.answered_at for a in self.platform.attempts
                    if a.received_at >= back and a.status in (200, 201) and a.answered_at)
        f.note = f"(first success {f.end - back:.1f}s after it came back)"

    def _f_slow_platform(self, f: Fault) -> None:
        f.start = now()
        self.platform.slow(f.args["rate"], 6.0)
        time.sleep(f.args["seconds"])
        self.platform.slow(0.03, 6.0)
        f.end = now()

    def _f_slow_reads(self, f: Fault) -> None:
        f.start = now()
        self.kube.delay(f.args["delay"])
        time.sleep(f.args["seconds"])
        self.kube.delay(0)
        f.end = now()

    def _f_pod_restart(self, f: Fault) -> None:
        name = f.args["pod"]
        wait_until(lambda: name not in self.replacing, 120, interval=0.1, what=f"{name} to be replaced")
        f.start = now()
        self.kube.restart(name)

    def _f_pod_replace(self, f: Fault) -> None:
        """A rolling update: the pod terminates with a grace period (out of the endpoints at
        once, so no new traffic; Traefik exits once drained, here once the scraper has read
        its log, and at the latest when the grace period ends), its object goes a second
        after the container exited, and a new pod with the same name and a new uid starts."""
        name = f.args["pod"]
        writer = next(w for w in self.writers if w.name == name)
        with writer.lock:
            writer.paused = True
            self.replacing.add(name)
        f.start = now()
        uid, cid = self.kube.pod_uid(name), self.kube.container_id(name)
        lines = self.kube.log_lines(name)
        self.kube.terminate(name, GRACE_SECONDS)
        drained = True
        if lines:
            try:
                wait_until(lambda: covers(self._cursor(f"{uid}/traefik"), cid, lines), GRACE_SECONDS, interval=0.1)
            except TimeoutError:
                drained = False
        try:
            self.kube.exit_container(name)
        except (ValueError, PodNotFound):
            pass  # the grace period ended: the kubelet killed it
        wait_until(lambda: self._gone(name, uid), 30, interval=0.1, what=f"{name} to be removed")
        self.kube.replace_pod(name)
        with writer.lock:
            writer.paused = False
            self.replacing.discard(name)
        f.end = now()
        f.note = "(read to its end before it went)" if drained else "(NOT read to its end within the grace period)"

    def _cursor(self, field_name: str) -> str:
        try:
            assert self.ledger is not None
            return self.ledger.cursor_raw(field_name)
        except redis.RedisError:
            return ""

    def _gone(self, name: str, uid: str) -> bool:
        try:
            return self.kube.pod_uid(name) != uid
        except PodNotFound:
            return True

    # Drain -----------------------------------------------------------------------------------

    def at_end(self) -> bool:
        assert self.ledger is not None
        cursors = self.ledger.cursors()
        for name in self.pods:
            try:
                lines = self.kube.log_lines(name)
                uid, cid = self.kube.pod_uid(name), self.kube.container_id(name)
            except PodNotFound:
                continue
            if lines and not covers(cursors.get(f"{uid}/traefik", ""), cid, lines):
                return False
        return True

    def settled(self) -> bool:
        assert self.ledger is not None and self.r is not None
        try:
            return (self.at_end() and self.r.zcard(self.ledger.k("open")) == 0
                    and self.r.zcard(self.ledger.k("due")) == 0 and not self.platform.pending_keys)
        except redis.RedisError:
            return False

    def drain(self) -> float:
        """Wait until everything is read, sealed and delivered, at most ``--drain`` seconds
        after the traffic and the last fault ended. Returns how long it took."""
        last_fault = max((f.end or now() for f in self.faults), default=now())
        deadline = max(self.traffic_end, last_fault) + self.opt.drain
        while now() < deadline:
            if self.settled():
                break
            time.sleep(0.5)
        took = now() - self.traffic_end
        if not self.settled():
            self.problem(f"not settled {took:.0f}s after the traffic stopped (bound: {self.opt.drain:g}s after the "
                         f"last fault ended)")
        return took

    # Checks ----------------------------------------------------------------------------------

    def truth(self) -> dict[str, dict[str, int]]:
        total: dict[str, dict[str, int]] = {}
        for w in self.writers:
            for sub, (bi, bo, rq) in w.maker.truth.items():
                t = total.setdefault(sub, {"bytes_in": 0, "bytes_out": 0, "requests": 0})
                t["bytes_in"] += bi
                t["bytes_out"] += bo
                t["requests"] += rq
        return total

    def reports(self) -> dict[ReportKey, dict[str, str]]:
        """Every report's state and delivery time, through the ledger's own reads (a
        report's record may be a hash of its own or kept elsewhere once delivered)."""
        assert self.ledger is not None and self.r is not None
        out = {}
        for key in self.ledger.report_keys():
            rep = self.ledger.report(key)
            raw = {k.decode(): v.decode() for k, v in self.r.hgetall(self.ledger.rep_key(key)).items()}
            state = str(rep.state) if rep is not None else raw.get("state", "")
            at = getattr(rep, "delivered_at", None) or raw.get("delivered_at")
            out[key] = {"state": state, **({"delivered_at": f"{float(at):.3f}"} if at else {})}
        return out

    def _explain(self, key: ReportKey) -> None:
        """Say what is known of an undelivered report: its ledger record (attempts, next
        attempt, reason), its place in the due set, and every attempt the platform saw for
        its Idempotency-Key, so a failed run can be read without its files."""
        assert self.ledger is not None and self.r is not None
        raw = {k.decode(): v.decode() for k, v in self.r.hgetall(self.ledger.rep_key(key)).items()}
        score = self.r.zscore(self.ledger.k("due"), str(key))
        t = {name: f"{float(raw[name]) - self.t0:.1f}s" for name in ("next_at", "sealed_at", "dead_at") if raw.get(name)}
        fields = {k: v for k, v in raw.items() if k not in t and k not in ("bytes_in", "bytes_out", "requests")}
        due = f"{score - self.t0:.1f}s" if score is not None else "not in due"
        self.say(f"  {key}: record {fields} times {t}; due at {due}")
        idem = idempotency_key(SCRAPER_ID, key.start, self.ri, key.name)
        seen = [a for a in self.platform.attempts if a.key == idem]
        self.say(f"    the platform saw {len(seen)} attempt(s) with key {idem}")
        for a in seen:
            self.say(f"    platform {a.received_at - self.t0:7.1f}s {a.outcome} {a.status}")

    def check(self) -> dict:
        """Every check; problems go to ``self.problems``. Returns the figures."""
        assert self.ledger is not None and self.r is not None
        truth = self.truth()
        platform = self.platform
        records = platform.records + platform.skipped
        firsts: dict[str | None, object] = {}
        dupes = []
        for rec in sorted(records, key=lambda r: r.received_at):
            if rec.key in firsts:
                dupes.append(rec)
            else:
                firsts[rec.key] = rec
        billed = _sums(firsts.values())
        figures: dict = {"truth": truth, "billed": billed}
        diff = _diff(truth, billed)
        figures["lost"] = sum(max(0, d["requests"]) for d in diff.values() if d["requests"] > 0)
        figures["double"] = sum(-d["requests"] for d in diff.values() if d["requests"] < 0)
        if diff:
            rows = ", ".join(f"{s}: truth {truth.get(s)} platform {billed.get(s)}" for s in sorted(diff))
            self.problem(f"tunnels differ: {rows}")
        if None in firsts:
            self.problem("a report came without an Idempotency-Key")

        # Duplicates: deduplicated by key (dedup on), or billed (dedup off) and then each one
        # must follow an attempt whose answer was lost.
        figures["deduped"] = platform.duplicates_deduped
        figures["in_flight_409"] = sum(1 for a in platform.attempts if a.outcome == "in_flight")
        figures["dup_reports"] = len(dupes)
        figures["dup_bytes"] = sum(r.bytes_in + r.bytes_out for r in dupes)
        if dupes and platform.dedupe:
            self.problem(f"{len(dupes)} reports billed twice by a deduplicating platform")
        unexplained = self._unexplained_duplicates(dupes)
        if unexplained:
            self.problem(f"{len(unexplained)} duplicate(s) not preceded by a lost answer: {unexplained[:5]}")
        figures["hypothetical_dup_bytes"] = self._bytes_a_non_deduplicating_platform_bills_twice()

        # The ledger: nothing undelivered, dead, open; every key documented and bounded.
        reps = self.reports()
        figures["intervals"] = len({k.start for k in reps})
        figures["reports"] = len(reps)
        states = Counter(r.get("state") for r in reps.values())
        figures["states"] = dict(states)
        undelivered = {k: r.get("state") for k, r in reps.items() if r.get("state") != ReportState.DELIVERED}
        if undelivered:
            self.problem(f"{len(undelivered)} report(s) not delivered: {sorted(undelivered.items())[:8]}")
            for key in sorted(undelivered)[:8]:
                self._explain(key)
        for name in ("due", "dead", "open"):
            n = self.r.zcard(self.ledger.k(name))
            if n:
                self.problem(f"{n} member(s) left in {name}")
        self._check_keys()
        stats = self.ledger.stats()
        figures["stats"] = stats
        if stats.get("gaps"):
            self.problem(f"{stats['gaps']} gap(s) recorded in the ledger: {self.ledger.gaps()[:3]}")

        # The wire: one live attempt per report at a time; none after a recorded delivery.
        self._check_wire(reps)

        # Recovery.
        figures["recovery"] = self._recovery(reps)
        figures["consume"] = self._consumption()
        figures["platform_faults"] = sum(1 for a in platform.attempts if a.outcome in ("fault", "dropped", "aborted")
                                         or a.slow)
        figures["lines"] = sum(w.maker.lines for w in self.writers)
        figures["kinds"] = sum((w.maker.kinds for w in self.writers), Counter())
        return figures

    def _unexplained_duplicates(self, dupes: list) -> list[str]:
        """Duplicates (a key recorded more than once) not preceded by a lost answer."""
        if not dupes:
            return []
        by_key: dict[str | None, list] = defaultdict(list)
        for a in self.platform.attempts:
            if a.outcome in ("logged", "skipped", "dropped"):
                by_key[a.key].append(a)
        out = []
        for rec in dupes:
            earlier = [a for a in by_key[rec.key] if a.received_at < rec.received_at]
            if not any(a.lost or self._answered_to_killed(a) for a in earlier):
                out.append(rec.key)
        return out

    def _answered_to_killed(self, attempt) -> bool:
        """The answer went to a worker process SIGKILLed before it could record it: its
        connection was one of the killed group's, and the kill came within 2 s."""
        if attempt.answered_at is None:
            return False
        return any(attempt.peer in ports and 0 <= t - attempt.answered_at <= 2.0 for t, ports in self.kills)

    def _bytes_a_non_deduplicating_platform_bills_twice(self) -> int:
        """Bytes of the requests a platform ignoring Idempotency-Key would have recorded
        again: replays and in-flight 409s of a key already accepted (dedup on), or the
        duplicates it did record (dedup off)."""
        accepted: dict[str | None, object] = {}
        for r in self.platform.records + self.platform.skipped:
            accepted.setdefault(r.key, r)
        extra = 0
        for a in self.platform.attempts:
            if a.outcome in ("replayed", "in_flight") and a.key in accepted:
                rec = accepted[a.key]
                extra += rec.bytes_in + rec.bytes_out  # type: ignore[attr-defined]
        if not self.platform.dedupe:
            firsts: set[str | None] = set()
            for r in sorted(self.platform.records + self.platform.skipped, key=lambda r: r.received_at):
                if r.key in firsts:
                    extra += r.bytes_in + r.bytes_out
                firsts.add(r.key)
        return extra

    def _check_keys(self) -> None:
        assert self.ledger is not None and self.r is not None
        patterns = documented_key_patterns()
        refs = {name: {m.decode() for m in self.r.zrange(self.ledger.k(name), 0, -1)}
                for name in ("open", "sealed", "due", "dead")}
        head = PREFIX + ":"
        for raw in self.r.scan_iter(match=head + "*", count=1000):
            key = raw.decode()[len(head):]
            if not any(p.fullmatch(key) for p in patterns):
                self.problem(f"key {head}{key} is not in docs/design.md's Redis key schema")
                continue
            kind, _, rest = key.partition(":")
            if kind not in ("rep", "iv", "lock", "round"):
                continue
            ttl = self.r.ttl(raw)
            if ttl >= 0 or ttl == -2:  # -2: it expired since the scan (a round marker does, often)
                continue
            referenced = (kind == "iv" and (rest in refs["open"] or rest in refs["sealed"])) or (
                kind == "rep" and (rest in refs["due"] or rest in refs["dead"]))
            if not referenced:
                self.problem(f"key {head}{key} has no TTL and nothing refers to it")

    def _check_wire(self, reps: dict[ReportKey, dict[str, str]]) -> None:
        by_key: dict[str | None, list] = defaultdict(list)
        for a in self.platform.attempts:
            if a.key is not None:
                by_key[a.key].append(a)
        delivered_at = {}
        for k, r in reps.items():
            if r.get("delivered_at"):
                delivered_at[idempotency_key(SCRAPER_ID, k.start, self.ri, k.subdomain)] = float(r["delivered_at"])
        overlaps, after = [], []
        for key, atts in by_key.items():
            atts.sort(key=lambda a: a.received_at)
            for i, a in enumerate(atts):
                # a live attempt: its client was still waiting when it was answered
                if a.answered_at is not None and not a.lost:
                    if any(b.received_at < a.answered_at - 0.001 for b in atts[i + 1:] if b.received_at > a.received_at):
                        overlaps.append(key)
                when = delivered_at.get(key)
                if when is not None and a.received_at > when + 0.05:
                    after.append((key, round(a.received_at - when, 3)))
        if overlaps:
            self.problem(f"{len(overlaps)} report(s) had two attempts on the wire at once: {overlaps[:5]}")
        if after:
            self.problem(f"{len(after)} attempt(s) sent after the ledger recorded the delivery: {after[:5]}")

    def _recovery(self, reps: dict[ReportKey, dict[str, str]]) -> dict:
        """Per report delayed by a fault: the longest wait, from the end of the last fault
        that ended before it was delivered (or the interval's end, if later), through each
        of the report's own attempts the platform then failed at random, to its delivery.
        The platform's background failures (``error_rate``, drops, an answer the client
        gave up on) go on after a fault ends; a report that fails again is retried with
        its backoff from that failure, which the fault did not cause. So each stretch
        between those points must be within the bound: a long wait before a random
        failure still counts (a review: measuring only from the last failure hid it)."""
        windows = [(f.start, f.end, f.kind) for f in self.faults if f.start and f.end]
        windows += [(e.at - 0.001, s, "crash") for p in [*self.workers, *([self.beat] if self.beat else [])]
                    for e, s in _crash_windows(p)]
        # The failures the platform made up (an error drawn, or no answer the client got:
        # dropped after commit, or too slow), not the ones this side could cause (a 409 for
        # a second copy on the wire, a 422 for a changed body: those restart no clock).
        failed: dict[str, list[float]] = defaultdict(list)
        for a in self.platform.attempts:
            if a.key is not None and (a.outcome == "fault" or a.lost):
                failed[a.key].append(a.ended_at or a.received_at)
        delayed, latency, worst = [], [], None
        checked = now()
        for key, r in reps.items():
            ready = key.start + self.ri
            # an undelivered report counts as delivered now: later than any bound it missed
            done = float(r["delivered_at"]) if r.get("delivered_at") else checked
            latency.append(done - ready)
            hit = [(s, e, k) for s, e, k in windows if s < done and e > ready]
            if not hit:
                continue
            ended = [e for _, e, _ in hit if e <= done]
            base = max([ready, *ended])
            own = sorted(t for t in failed.get(idempotency_key(SCRAPER_ID, key.start, self.ri, key.name), [])
                         if base < t < done)
            points = [base, *own, done]
            rec, since = max((b - a, a) for a, b in zip(points, points[1:], strict=False))
            delayed.append(rec)
            if worst is None or rec > worst[0]:
                cause = [k for _, e, k in hit if e == since] or (["its own failed attempt"] if since in own
                                                                  else ["interval end"])
                worst = (rec, str(key), cause)
        bound = RECOVERY_SLACK + self.ri
        late = [x for x in delayed if x > bound]
        if late:
            self.problem(f"{len(late)} fault-delayed report(s) delivered more than {bound:g}s after the fault ended "
                         "(or a random failure of theirs after it) "
                         f"(worst {worst[0]:.1f}s, {worst[1]}, after {worst[2]})" if worst else "")
        return {"delayed": len(delayed), "p99": _pct(delayed, 99), "max": max(delayed, default=0.0),
                "worst": worst, "latency_p50": _pct(latency, 50), "latency_p99": _pct(latency, 99),
                "latency_max": max(latency, default=0.0)}

    def _consumption(self) -> list[tuple[str, float, float]]:
        """After each Redis restart: how long until each worker processed a task (from
        Redis answering again, or from the worker running again if we killed it meanwhile)."""
        out = []
        for up in self.redis_up[1:]:
            for w in self.workers:
                t0 = up
                for f in self.faults:
                    if f.kind == "kill_worker" and self.workers[f.args["worker"]] is w and f.start and up <= f.start \
                            and f.start <= _first_after(w.succeeded, up, math.inf):
                        t0 = max(t0, f.end or t0)
                first = _first_after(w.succeeded, t0, math.inf)
                out.append((w.name, up - self.t0, first - t0))
                if first - t0 > CONSUME_WITHIN:
                    self.problem(f"worker {w.name} processed no task within {CONSUME_WITHIN:g}s after Redis came back "
                                 f"({'never' if first == math.inf else f'{first - t0:.1f}s'})")
        return out


def covers(raw: str, container_id: str, lines: list[tuple[int, bytes]]) -> bool:
    """The stored cursor ``raw`` has consumed every one of ``lines`` (a container's whole
    log) of container ``container_id``."""
    cursor = Cursor.decode(raw)
    if cursor is None or cursor.container_id != container_id:
        return False
    if hasattr(cursor, "covers"):
        return cursor.covers(lines)
    last = lines[-1][0]
    return raw == Cursor(container_id, last, sum(1 for ts, _ in lines if ts == last)).encode()


def _crash_windows(p: Supervised) -> list[tuple[Exit, float]]:
    """(exit, when it ran again) of each exit that was not a kill of ours."""
    out = []
    for e in p.unplanned_exits():
        later = [s for s in p.spawns if s > e.at]
        out.append((e, later[0] if later else now()))
    return out


def _first_after(times: list[float], t: float, default: float) -> float:
    i = bisect.bisect_left(times, t)
    return times[i] if i < len(times) else default


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1)]


def _sums(records) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in records:
        t = out.setdefault(r.subdomain, {"bytes_in": 0, "bytes_out": 0, "requests": 0})
        t["bytes_in"] += r.bytes_in
        t["bytes_out"] += r.bytes_out
        t["requests"] += r.requests
    return out


def _diff(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    zero = {"bytes_in": 0, "bytes_out": 0, "requests": 0}
    out = {}
    for s in set(a) | set(b):
        d = {k: a.get(s, zero)[k] - b.get(s, zero)[k] for k in zero}
        if any(d.values()):
            out[s] = d
    return out


def documented_key_patterns(design: Path = ROOT / "docs" / "design.md") -> list[re.Pattern]:
    """The keys of docs/design.md's "Redis key schema" table, as patterns (``<...>`` is one
    colon-free part)."""
    text = design.read_text()
    section = text.split("## Redis key schema", 1)[1].split("\n## ", 1)[0]
    out = []
    for line in section.splitlines():
        m = re.match(r"\| `([^`]+)` \|", line)
        if m:
            parts = re.split(r"(<[^>]+>)", m.group(1))
            out.append(re.compile("".join("[^:]+" if p.startswith("<") else re.escape(p) for p in parts)))
    return out


def summary(run: Run, figures: dict, drain: float) -> str:
    opt = run.opt
    kills = sum(1 for f in run.faults if f.kind == "kill_worker" and f.start)
    redis_kills = sum(1 for f in run.faults if f.kind == "kill_redis" and f.start)
    exits = sum(len(p.exits) for p in run.workers)
    other = sum(len(p.unplanned_exits()) for p in [*run.workers, *([run.beat] if run.beat else [])])
    rec = figures["recovery"]
    ok = not run.problems
    head = ("exact" if ok else "FAILED") + ("" if opt.dedupe else " (platform dedup off)")
    parts = [
        f"{opt.pods} pods", f"{figures['lines']:,} lines", f"{figures['intervals']:,} intervals",
        f"{kills} worker kills ({exits} worker exits, {other} not ours)",
        f"{redis_kills} redis kill{'s' if redis_kills != 1 else ''}",
        f"{figures['platform_faults']:,} platform faults",
    ]
    if opt.dedupe:
        parts.append(f"{figures['deduped']:,} duplicates deduped")
        parts += [f"recovery p99 {rec['p99']:.0f} s", f"{figures['lost']:,} lost",
                  f"{figures['double']:,} double-counted"]
    else:
        parts += [f"{figures['dup_reports']:,} duplicate reports billed, each after a lost answer: "
                  f"{figures['dup_bytes']:,} bytes double-counted by a platform ignoring Idempotency-Key",
                  f"recovery p99 {rec['p99']:.0f} s",
                  f"first copies: {figures['lost']:,} lost, {figures['double']:,} double-counted"]
    return f"chaos: {head}; " + ", ".join(parts)


def report(run: Run, figures: dict, drain: float) -> None:
    """Detail lines, then the summary line."""
    say = run.say
    truth, billed = figures["truth"], figures["billed"]
    zero = {"bytes_in": 0, "bytes_out": 0, "requests": 0}
    print(f"\n{'TUNNEL':<12} {'TRUTH IN':>12} {'PLATFORM':>12} {'TRUTH OUT':>14} {'PLATFORM':>14} {'REQS':>7} "
          f"{'PLATFORM':>8}")
    for sub in sorted(set(truth) | set(billed)):
        t, b = truth.get(sub, zero), billed.get(sub, zero)
        mark = "" if t == b else "  <-- differs"
        print(f"{sub:<12} {t['bytes_in']:>12,} {b['bytes_in']:>12,} {t['bytes_out']:>14,} {b['bytes_out']:>14,} "
              f"{t['requests']:>7,} {b['requests']:>8,}{mark}")
    print()
    for f in run.faults:
        if f.start:
            end = f"{f.end - run.t0:7.1f}" if f.end else "   open"
            say(f"  {f.kind:<16} {f.start - run.t0:7.1f} -> {end}  {f.args} {f.note}")
    for p in [*run.workers, *([run.beat] if run.beat else [])]:
        unplanned = p.unplanned_exits()
        codes = Counter(e.code for e in unplanned)
        say(f"  {p.name}: {len(p.exits)} exits ({len(p.exits) - len(unplanned)} our kills, {len(unplanned)} other"
            f"{': codes ' + str(dict(codes)) if unplanned else ''}){' ' + p.crash_lines[0] if p.crash_lines else ''}")
    for name, at, took in figures["consume"]:
        say(f"  after the Redis restart at {at:.1f}s, {name} processed a task after {took:.1f}s")
    rec = figures["recovery"]
    say(f"  recovery of {rec['delayed']} fault-delayed reports: p99 {rec['p99']:.1f}s, max {rec['max']:.1f}s"
        f"{' (' + rec['worst'][1] + ' after ' + ','.join(rec['worst'][2]) + ')' if rec['worst'] else ''}; "
        f"latency of all {figures['reports']} reports from interval end: p50 {rec['latency_p50']:.1f}s, "
        f"p99 {rec['latency_p99']:.1f}s, max {rec['latency_max']:.1f}s")
    say(f"  report states {figures['states']}; platform: {figures['deduped']} replays deduped, "
        f"{figures['in_flight_409']} in-flight 409s, {figures['dup_reports']} duplicate(s) billed; a platform "
        f"ignoring Idempotency-Key would double-count {figures['hypothetical_dup_bytes']:,} bytes")
    stats = figures["stats"]
    say(f"  ledger: lines read {stats.get('lines_read', 0):,}, counted {stats.get('lines_counted', 0):,}, "
        f"kube errors {stats.get('fetch_errors:kube', 0)}, conflicts {stats.get('fetch_conflicts', 0)}, "
        f"parked {stats.get('reports_parked', 0)}; lines written by kind {dict(figures['kinds'])}; "
        f"drained {drain:.0f}s after the traffic stopped")
    for p in run.problems:
        print("PROBLEM: " + p)
    print(summary(run, figures, drain), flush=True)


def run_once(opt: Options) -> tuple[bool, str]:
    run = Run(opt)
    figures = None
    try:
        run.start()
        run.run_schedule()
        drain = run.drain()
        figures = run.check()
        report(run, figures, drain)
        line = summary(run, figures, drain)
    except Exception as e:  # noqa: BLE001 - any failure of the run is reported, then re-raised
        run.problem(f"{type(e).__name__}: {e}")
        raise
    finally:
        if run.problems:
            print(f"chaos: files kept in {run.dir}", flush=True)
        run.stop()
    return not run.problems, line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=None, help="seed of the fault schedule and the traffic (default: random)")
    p.add_argument("--seconds", type=float, default=600.0, help="seconds of traffic (default 600)")
    p.add_argument("--pods", type=int, default=3)
    p.add_argument("--rate", type=float, default=60.0, help="lines per second per pod (default 60)")
    p.add_argument("--report-interval", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--dedupe", choices=("on", "off", "both"), default="on",
                   help="platform deduplication by Idempotency-Key; both: a run with it, then the same without")
    p.add_argument("--drain", type=float, default=240.0,
                   help="seconds after the traffic and the last fault ended to wait for delivery (default 240)")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the files of a passing run")
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    if a.pods < 3 or a.workers < 2:
        p.error("at least 3 pods and 2 workers")
    modes = {"on": [True], "off": [False], "both": [False, True]}[a.dedupe]
    results = []
    for dedupe in modes:
        workdir = a.workdir / ("dedup" if dedupe else "nodedup") if a.workdir else None
        opt = Options(seed=seed, seconds=a.seconds, pods=a.pods, rate=a.rate, report_interval=a.report_interval,
                      workers=a.workers, concurrency=a.concurrency, dedupe=dedupe, drain=a.drain, workdir=workdir,
                      keep=a.keep)
        results.append(run_once(opt))
    for _, line in results[:-1]:
        print(line)
    if len(results) > 1:
        print(results[-1][1], flush=True)
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
