"""What the pipeline benchmarks share: the tree under test and the baseline, a private
redis-server, the fake Kubernetes API, the platform stub in its own process, the workers
and beat started with the compose file's own commands, synthetic traffic with ground
truth, and per-process CPU and memory readings from /proc.

Every benchmark measures the project (this working tree) and, where a baseline applies,
the commit before the performance work (``BASELINE_COMMIT``, checked out once with
``git worktree add`` under ``/tmp``), in the same run, on the same devices: the simulators
always come from this tree, only the scraper's own processes change.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import redis
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim import fake_kube  # noqa: E402
from sim.fake_kube import FakeKube  # noqa: E402
from sim.procs import RedisServer, free_port, stop_group, wait_for_output  # noqa: E402

# The fake Kubernetes API answers a JSON request in two writes (headers, then body) and a
# log read in many (chunked): without TCP_NODELAY, Nagle's algorithm holds a small write
# back until the client ACKs the previous one, and the client delays that ACK (up to
# 40 ms on Linux), so every kept-alive request would stall and the benchmark would measure
# the simulator. socketserver.StreamRequestHandler.setup() sets TCP_NODELAY when
# ``disable_nagle_algorithm`` is true (Lib/socketserver.py). sim/fake_kube.py does not set
# it (its owner is told); every benchmark's FakeKube comes through this module.
fake_kube._Handler.disable_nagle_algorithm = True

BASELINE_COMMIT = "ee732a8"  # the HEAD before the performance issue
BASELINE_DIR = Path(os.environ.get("TMS_BASELINE_DIR", "/tmp/tms-baseline"))
SECRET = "bench-secret"
DOMAIN = "t.lum.tools"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# --------------------------------------------------------------------------- trees


@dataclass(frozen=True)
class Tree:
    """A checkout of the scraper whose processes are started."""

    name: str  # "project" or "baseline"
    path: Path

    def compose_commands(self) -> dict[str, list[str]]:
        """The services' commands from this tree's docker-compose.yml; ``worker-fetch``
        is the one that reads pod logs (``worker-fetch-kubernetes`` where the compose
        file reads files by default)."""
        doc = yaml.safe_load((self.path / "docker-compose.yml").read_text())
        out = {name: list(svc["command"]) for name, svc in doc["services"].items() if "command" in svc}
        if "worker-fetch-kubernetes" in out:
            out["worker-fetch"] = out["worker-fetch-kubernetes"]
        return out


def project() -> Tree:
    return Tree("project", ROOT)


def add_tree_options(ap: argparse.ArgumentParser) -> None:
    """The options every end-to-end benchmark takes: ``--json`` and ``--project-tree``."""
    ap.add_argument("--json", default=None, help="also write the rows and details to this file")
    ap.add_argument("--project-tree", default=None,
                    help="measure this checkout as the project (e.g. a git worktree of a commit) instead of this tree")


def chosen_project(args: argparse.Namespace) -> Tree:
    """The tree measured as the project: ``--project-tree`` or this checkout."""
    return Tree("project", Path(args.project_tree).resolve()) if args.project_tree else project()


def baseline() -> Tree:
    """The baseline checkout, created at first use (``git worktree add``)."""
    if not (BASELINE_DIR / "app" / "celery.py").exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(BASELINE_DIR), BASELINE_COMMIT],
                       check=True, capture_output=True)
    return Tree("baseline", BASELINE_DIR)


# --------------------------------------------------------------------------- /proc


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children(p)
    return pids


def pss_kb(pid: int) -> int:
    """Proportional set size of one process (smaps_rollup), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Sampler:
    """Samples, every ``every`` seconds, the summed PSS of each named process tree and
    keeps the peak; CPU seconds are read at ``mark()``/``cpu()``."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        self.roots: dict[str, int] = {}
        self.peak_kb: dict[str, int] = defaultdict(int)
        self.last_kb: dict[str, int] = {}
        self._pids: dict[str, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._single: set[str] = set()

    def watch(self, name: str, pid: int, tree: bool = True) -> None:
        """Sample ``pid`` and (``tree``) its descendants under ``name``."""
        self.roots[name] = pid
        if not tree:
            self._single.add(name)
        self._pids[name] = self._tree(name)

    def _tree(self, name: str) -> list[int]:
        root = self.roots[name]
        return [root] if name in self._single else process_tree(root)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def reset_peaks(self) -> None:
        self.peak_kb.clear()

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.every):
            n += 1
            for name in list(self.roots):
                if n % 20 == 0:  # pool children may be replaced
                    self._pids[name] = self._tree(name)
                kb = sum(pss_kb(p) for p in self._pids[name])
                self.last_kb[name] = kb
                self.peak_kb[name] = max(self.peak_kb[name], kb)

    def cpu(self, name: str) -> float:
        return sum(cpu_seconds(p) for p in self._tree(name))


# --------------------------------------------------------------------------- stub


class StubProcess:
    """The platform stub (sim/platform_stub.py) in its own process, so its CPU is not the
    scraper's and its GIL not the benchmark's. Every accepted report is one JSON line in
    ``records``: received time, Idempotency-Key, subdomain, sizes and status."""

    def __init__(self, workdir: Path, delay: float) -> None:
        self.records_path = workdir / "platform-records.jsonl"
        self.stats_path = workdir / "platform-stats.json"
        self.delay = delay
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._offset = 0
        self._partial = b""
        self.records: list[dict] = []

    def start(self) -> StubProcess:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("stub.py")), str(self.port), str(self.delay),
             str(self.records_path), str(self.stats_path), SECRET],
            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        line = self.proc.stdout.readline()
        if b"listening" not in line:
            raise RuntimeError(f"platform stub did not start: {line!r}")
        return self

    def poll(self) -> list[dict]:
        """Records appended since the last poll."""
        if not self.records_path.exists():
            return []
        with open(self.records_path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        new = [json.loads(x) for x in lines if x]
        self.records += new
        return new

    def stats(self) -> dict:
        """The stub's counters, written when it stops."""
        return json.loads(self.stats_path.read_text()) if self.stats_path.exists() else {}

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.poll()


# --------------------------------------------------------------------------- scraper processes


class Proc:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.name, self.cmd, self.env, self.cwd, self.log = name, cmd, env, cwd, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Proc:
        self._fh = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=str(self.cwd), stdout=self._fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, marker: str, timeout: float = 60) -> None:
        wait_for_output(self.proc, self.output, marker, timeout, self.name)

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None:
            return
        stop_group(self.proc, timeout)
        self._fh.close()


def celery_command(compose: list[str], node: str, workdir: Path) -> list[str]:
    """A compose service's ``celery ...`` command for this machine: the venv's Python,
    a node name of its own, beat's schedule file in the work folder."""
    if compose[0] != "celery":
        raise ValueError(f"not a celery command: {compose}")
    out = [sys.executable, "-m", "celery"]
    for arg in compose[1:]:
        if arg.startswith("--schedule="):
            arg = f"--schedule={workdir / 'beat-schedule'}"
        out.append(arg)
    if "worker" in compose:
        out += ["-n", f"{node}@%h"]
    return out


_OWN = ("CELERY_", "REDIS_", "PLATFORM_", "FETCH_", "REPORT_", "TRAEFIK_", "START_AT", "SCRAPER_ID", "KUBECONFIG",
        "INTERVAL_", "TASK_", "LOG_")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# A benchmark stopped with SIGTERM (timeout, Ctrl-C) still stops what it started.
signal.signal(signal.SIGTERM, _exit_on_sigterm)


class Stack:
    """redis-server + fake Kubernetes API + platform stub + the tree's workers and beat."""

    def __init__(self, tree: Tree, *, delay: float = 0.02, pods: int = 20, env: dict[str, str] | None = None,
                 rotate_bytes: int | None = None, workdir: Path | None = None,
                 services: tuple[str, ...] = ("worker-fetch", "worker-report", "beat"), sample_every: float = 0.2) -> None:
        self.tree = tree
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=f"tms-bench-{tree.name}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(str(self.dir / "redis"))
        self.kube = FakeKube(rotate_bytes=rotate_bytes)
        self.stub = StubProcess(self.dir, delay)
        self.pods = [f"traefik-{i}" for i in range(pods)]
        self.services = services
        self.extra_env = dict(env or {})
        self.procs: dict[str, Proc] = {}
        self.sampler = Sampler(sample_every)
        self.prefix = "tms"

    def start(self) -> Stack:
        self.redis.start()
        self.r = redis.Redis.from_url(self.redis.url)
        self.kube.start()
        for p in self.pods:
            self.kube.add_pod(p)
        self.stub.start()
        kubeconfig = self.kube.write_kubeconfig(self.dir / "kubeconfig")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(_OWN)},
            "PYTHONPATH": str(self.tree.path),
            "KUBECONFIG": kubeconfig,
            "REDIS_URL": self.redis.url,
            "PLATFORM_API_URL": self.stub.url,
            "PLATFORM_INTERNAL_SECRET": SECRET,
            "SCRAPER_ID": "bench",
            "HEALTH_DIR": str(self.dir / "health"),
            **self.extra_env,
        }
        # The ledger starts now (what an automatic first start does).
        now_ns = time.time_ns()
        self.r.hset(f"{self.prefix}:init", mapping={"start_at_ns": str(now_ns - 10**9), "created_at": f"{now_ns / 1e9:.3f}"})
        commands = self.tree.compose_commands()
        for svc in self.services:
            self.start_service(svc, commands[svc])
        # The devices, for where the machine's CPU goes (not the scraper's).
        self.sampler.watch("redis", self.redis.proc.pid)
        self.sampler.watch("stub", self.stub.proc.pid)
        self.sampler.watch("bench", os.getpid(), tree=False)
        return self

    def start_service(self, svc: str, compose: list[str]) -> Proc:
        cmd = celery_command(compose, svc, self.dir)
        proc = Proc(svc, cmd, self.env, self.tree.path, self.dir / f"{svc}.log").start()
        proc.wait_for("ready." if "worker" in compose else "beat: Starting")
        self.procs[svc] = proc
        self.sampler.watch(svc, proc.pid)
        return proc

    def sampling(self) -> Stack:
        self.sampler.start()
        return self

    def stop(self) -> None:
        self.sampler.stop()
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        self.stub.stop()
        self.kube.stop()
        self.redis.stop()

    def keep_logs(self) -> bool:
        return bool(os.environ.get("BENCH_KEEP"))

    def cleanup(self) -> None:
        if not self.keep_logs():
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if exc[0] is not None:
            print(f"  (logs kept in {self.dir})", flush=True)
        else:
            self.cleanup()

    # Redis ------------------------------------------------------------------------

    def commandstats(self) -> dict[str, int]:
        """Calls per command since start (INFO commandstats; scripts' inner calls included)."""
        out = {}
        for name, st in self.r.info("commandstats").items():
            out[name.removeprefix("cmdstat_")] = int(st["calls"])
        return out

    def sealed(self) -> dict[int, float]:
        return {int(m): s for m, s in self.r.zrange(f"{self.prefix}:sealed", 0, -1, withscores=True)}


MANIFESTS = {"worker-fetch": "k8s/base/worker-fetch.yaml", "worker-report": "k8s/base/worker-report.yaml",
             "beat": "k8s/base/beat.yaml", "metrics": "k8s/components/metrics/deployment.yaml"}


def _quantity(value: str) -> float:
    """A Kubernetes quantity: CPU in cores ("250m", "1"), memory in MiB ("96Mi", "1Gi")."""
    value = str(value)
    for suffix, scale in (("m", 1e-3), ("Ki", 1 / 1024), ("Mi", 1.0), ("Gi", 1024.0)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * scale
    return float(value)


def manifest_resources(tree: Tree | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Each process kind's container resources in the tree's k8s manifests:
    ``{kind: {"requests"|"limits": {"cpu": cores, "memory": MiB}}}``."""
    root = (tree or project()).path
    out = {}
    for kind, rel in MANIFESTS.items():
        for doc in yaml.safe_load_all((root / rel).read_text()):
            if doc and doc.get("kind") == "Deployment":
                (ctr,) = doc["spec"]["template"]["spec"]["containers"]
                out[kind] = {k: {r: _quantity(v) for r, v in vals.items()} for k, vals in ctr["resources"].items()}
    return out


def diff_counts(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


# --------------------------------------------------------------------------- traffic


LINE = (
    b'{"ClientAddr":"10.0.%d.%d:51234","ClientHost":"10.0.%d.%d","ClientPort":"51234","ClientUsername":"-",'
    b'"DownstreamContentSize":%d,"DownstreamStatus":200,"Duration":1200000,"OriginContentSize":%d,'
    b'"OriginDuration":1000000,"OriginStatus":200,"Overhead":200000,"RequestAddr":"%s.' + DOMAIN.encode() + b'",'
    b'"RequestContentSize":%d,"RequestCount":%d,"RequestHost":"%s.' + DOMAIN.encode() + b'","RequestMethod":"GET",'
    b'"RequestPath":"/api/v1/items/%d?page=3","RequestPort":"-","RequestProtocol":"HTTP/1.1","RequestScheme":"https",'
    b'"RetryAttempts":0,"RouterName":"tunnels-websecure@kubernetescrd","ServiceAddr":"10.42.1.7:8080",'
    b'"ServiceName":"tunnels-tunnel-gateway-80@kubernetescrd","ServiceURL":"http://10.42.1.7:8080",'
    b'"StartLocal":"2026-11-24T01:50:22.123456789Z","StartUTC":"2026-11-24T01:50:22.123456789Z",'
    b'"TLSCipher":"TLS_AES_128_GCM_SHA256","TLSVersion":"1.3","downstream_Content-Type":"application/json",'
    b'"entryPointName":"websecure","level":"info","msg":"","request_User-Agent":"Mozilla/5.0 (X11; Linux x86_64) '
    b'AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36","time":"2026-11-24T01:50:22Z"}'
)


def tunnel_name(i: int) -> str:
    return f"tun{i:06d}"


@dataclass
class Truth:
    """What was written, per tunnel: bytes in, bytes out, requests; and per tunnel the
    write time of each of its lines, in order (for latency)."""

    sums: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))
    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    lines: int = 0
    keep_times: bool = False


class Writer:
    """Writes access lines for tunnels into the fake pods' logs."""

    def __init__(self, kube: FakeKube, pods: list[str], seed: int = 1, keep_times: bool = False) -> None:
        self.kube = kube
        self.pods = pods
        self.rng = random.Random(seed)
        self.truth = Truth(keep_times=keep_times)
        self.seq = 0

    def line(self, sub: str) -> bytes:
        rng = self.rng
        self.seq += 1
        bi = rng.choice((0, 0, rng.randrange(1, 5000)))
        bo = rng.randrange(0, 100_000)
        t = self.truth.sums[sub]
        t[0] += bi
        t[1] += bo
        t[2] += 1
        a, b = self.seq % 250, self.seq // 250 % 250
        return LINE % (a, b, a, b, bo, bo, sub.encode(), bi, self.seq, sub.encode(), self.seq)

    def write(self, pod: str, subs: list[str]) -> None:
        lines = [self.line(s) for s in subs]
        now = time.time()
        self.kube.write_many(pod, lines)
        self.truth.lines += len(lines)
        if self.truth.keep_times:
            for s in subs:
                self.truth.times[s].append(now)

    def expected(self) -> dict[str, dict[str, int]]:
        return {s: {"bytes_in": v[0], "bytes_out": v[1], "requests": v[2]} for s, v in self.truth.sums.items()}


def delivered_totals(records: list[dict]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for rec in records:
        if rec["status"] != 201:
            continue
        t = out.setdefault(rec["sub"], {"bytes_in": 0, "bytes_out": 0, "requests": 0})
        t["bytes_in"] += rec["bi"]
        t["bytes_out"] += rec["bo"]
        t["requests"] += rec["rq"]
    return out


def interval_of_key(key: str) -> str:
    """The interval part (``<iso start>/<seconds>``) of an Idempotency-Key."""
    return key.split(":", 1)[1].rsplit(":", 1)[0]


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def row(target: str, figure: str, goal: str, met: bool | None, baseline: str | None = None,
        ratio: str | None = None) -> dict:
    """One table row of the bench contract (bench/run.py): ``target`` starts with the
    issue's target number; ``met`` is None only for a row without a goal."""
    return {"target": target, "figure": figure, "goal": goal, "baseline": baseline, "ratio": ratio,
            "met": None if met is None else bool(met)}


def emit(bench: str, rows: list[dict], path: str | None, *, quick: bool = False, details: dict | None = None) -> None:
    """Print the benchmark's rows and, with ``path``, write them as the contract's JSON
    (``{"bench", "quick", "rows", "details"}``; see bench/run.py)."""
    for r in rows:
        mark = "n/a" if r["met"] is None else ("met" if r["met"] else "NOT MET")
        base = f" | baseline {r['baseline']}" if r.get("baseline") else ""
        ratio = f" | {r['ratio']}" if r.get("ratio") else ""
        print(f"{r['target']} | {r['figure']} | goal {r['goal']}{base}{ratio} | {mark}", flush=True)
    if path:
        Path(path).write_text(json.dumps({"bench": bench, "quick": quick, "rows": rows, "details": details or {}},
                                         indent=2, default=str))
