"""Target 3: a fetch streams in bounded memory, and what each process kind takes.

The fake Kubernetes API holds one pod with a 1 GB log and one with a 100 MB log
(realistic access lines, 2,000 lines a second of stamps); the fetch worker, started with
docker-compose.yml's command and ``FETCH_MAX_BYTES`` raised to 1 GiB, reads each in one
go (one fetch task each). Its memory is the sum of the PSS of its processes
(/proc/<pid>/smaps_rollup), sampled every 50 ms: idle, and the peak during each fetch.
The report worker, beat and the metrics exporter (``traefik-metrics-scraper metrics``,
scraped ten times) are measured idle the same way; the report worker's peak under load
is the delivery benchmark's. Goal: the fetch worker peaks at or under 128 MiB for the
1 GB log, about as for 100 MB. The baseline's process kinds are measured idle too.

``python bench/fetch_memory.py [--quick] [--json out.json]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from celery import Celery  # noqa: E402
from harness import (  # noqa: E402
    LINE,
    Proc,
    Stack,
    Tree,
    add_tree_options,
    baseline,
    chosen_project,
    emit,
    free_port,
    process_tree,
    pss_kb,
    row,
    tunnel_name,
)

from sim.procs import wait_until  # noqa: E402

MIB = 1024 * 1024
LINES_PER_SECOND = 2000


def fill(stack: Stack, pod: str, size: int, start_ns: int) -> int:
    """Append about ``size`` bytes of access lines to ``pod``'s log; returns the lines."""
    pool = []
    for i in range(4999):  # distinct lines, cycled (the fake keeps references, not copies)
        sub = tunnel_name(i % 5000).encode()
        pool.append(LINE % (i % 250, i // 250, i % 250, i // 250, 1000 + i, 1000 + i, sub, i % 4000, i, sub, i))
    avg = sum(len(x) for x in pool) / len(pool) + 41  # + the CRI prefix the fake counts
    total = int(size / avg)
    batch = 20  # lines a stamp: 2,000 lines a second
    step = batch * 1_000_000_000 // LINES_PER_SECOND
    ts = start_ns
    for n in range(0, total, batch):
        lines = [pool[(n + j) % len(pool)] for j in range(min(batch, total - n))]
        stack.kube.write_many(pod, lines, ts_ns=ts)
        ts += step
    return total


def measure_fetch(stack: Stack, client: Celery, pod: str, timeout: float) -> dict:
    pid = stack.procs["worker-fetch"].pid
    pids = process_tree(pid)
    idle = sum(pss_kb(p) for p in pids)
    stack.sampler.reset_peaks()
    began = time.monotonic()
    res = client.send_task("workers.fetch.fetch", args=(pod, stack.kube.pod_uid(pod)), queue="fetch")
    out = res.get(timeout=timeout)
    seconds = time.monotonic() - began
    peak = stack.sampler.peak_kb["worker-fetch"]
    return {"pod": pod, "result": out, "seconds": seconds, "idle_mib": idle / 1024, "peak_mib": peak / 1024}


def exporter(stack: Stack, tree: Tree) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "app", "metrics", "--port", str(port)]
    proc = Proc("metrics", cmd, stack.env, tree.path, stack.dir / "metrics.log").start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def up() -> bool:
            try:
                return urllib.request.urlopen(url, timeout=2).status == 200
            except OSError:
                return False

        wait_until(up, 60, interval=0.2, what="the exporter")
        idle = sum(pss_kb(p) for p in process_tree(proc.pid))
        peak = idle
        for _ in range(10):
            urllib.request.urlopen(url, timeout=10).read()
            peak = max(peak, sum(pss_kb(p) for p in process_tree(proc.pid)))
        return {"idle_mib": idle / 1024, "peak_mib": peak / 1024}
    finally:
        proc.stop()


def idle_kinds(tree: Tree) -> dict:
    env = {"REPORT_INTERVAL": "3600", "FETCH_INTERVAL": "3600"}
    with Stack(tree, pods=1, env=env) as stack:
        time.sleep(8)
        out = {svc: sum(pss_kb(p) for p in process_tree(proc.pid)) / 1024 for svc, proc in stack.procs.items()}
        out["metrics"] = exporter(stack, tree)["idle_mib"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--big", type=int, default=1000, help="MB of the big log")
    ap.add_argument("--small", type=int, default=100, help="MB of the small log")
    ap.add_argument("--quick", action="store_true", help="300 MB and 30 MB")
    add_tree_options(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.big, args.small = 300, 30
    env = {"REPORT_INTERVAL": "3600", "FETCH_INTERVAL": "3600", "FETCH_MAX_BYTES": str(1 << 30),
           "FETCH_TIME_LIMIT": "1200", "VISIBILITY_TIMEOUT": "7200", "LOG_LEVEL": "INFO"}
    results = []
    tree = chosen_project(args)
    with Stack(tree, pods=0, env=env, sample_every=0.05) as stack:
        stack.sampling()
        stack.r.hset(f"{stack.prefix}:init", "start_at_ns", "0")  # count every line
        start_ns = (time.time_ns() // 1_000_000_000 - 7 * 86400) * 1_000_000_000
        sizes = {}
        for pod, mb in (("small", args.small), ("big", args.big)):
            stack.kube.add_pod(pod)
            began = time.monotonic()
            sizes[pod] = fill(stack, pod, mb * 1_000_000, start_ns)
            print(f"  {pod}: {sizes[pod]:,} lines ({mb} MB) written in {time.monotonic() - began:.0f} s", flush=True)
        client = Celery(broker=stack.redis.url, backend=stack.redis.url)
        client.conf.task_create_missing_queues = True
        time.sleep(3)
        fetches = {}
        for pod in ("small", "big"):
            fetches[pod] = res = measure_fetch(stack, client, pod, timeout=1800)
            res["lines_per_s"] = sizes[pod] / res["seconds"]
            print(f"  fetch {pod}: {res}", flush=True)
        report_idle = sum(pss_kb(p) for p in process_tree(stack.procs["worker-report"].pid)) / 1024
        beat_idle = sum(pss_kb(p) for p in process_tree(stack.procs["beat"].pid)) / 1024
        metrics = exporter(stack, tree)
    big, small = fetches["big"], fetches["small"]
    ok = big["peak_mib"] <= 128 and big["result"].get("consumed") == sizes["big"]
    results.append(row(
        f"3 fetch worker peak PSS, {args.big} MB log",
        f"peak {big['peak_mib']:.0f} MiB for {args.big} MB, {small['peak_mib']:.0f} MiB for {args.small} MB "
        f"(idle {small['idle_mib']:.0f} before the first read, {big['idle_mib']:.0f} after); "
        f"{big['lines_per_s']:,.0f} lines/s",
        "<= 128 MiB, and 1 GB within 16 MiB of 100 MB", ok and big["peak_mib"] - small["peak_mib"] < 16,
        ratio=f"{big['peak_mib'] / small['peak_mib']:.2f}x of {args.small} MB"))
    base = idle_kinds(baseline())
    print(f"  baseline idle: {base}", flush=True)
    results.append(row(
        "3 idle PSS per process kind",
        f"fetch {small['idle_mib']:.0f} ({big['idle_mib']:.0f} after a read), report {report_idle:.0f}, "
        f"beat {beat_idle:.0f}, exporter "
        f"{metrics['idle_mib']:.0f} (peak {metrics['peak_mib']:.0f}) MiB",
        "vs the original 64 Mi request / 128 Mi limit", None,
        baseline=f"fetch {base['worker-fetch']:.0f}, report {base['worker-report']:.0f}, beat {base['beat']:.0f}, "
                 f"exporter {base['metrics']:.0f} MiB"))
    emit("fetch_memory", results, args.json, quick=args.quick,
         details={"fetches": fetches, "baseline_idle": base})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
