"""Target 2: Redis memory that fits. At 10,000 tunnels a minute, does the shipped Redis
(``maxmemory 256mb``, noeviction, k8s/base/redis.yaml) hold a week of history?

1. Retained bytes per report, project and baseline side by side: each pipeline (the
   compose file's workers and beat) runs ``--intervals`` short intervals of ``--tunnels``
   tunnels (well within the baseline's delivery rate), then waits until everything is
   delivered and two sweeps have run. What Redis keeps (``used_memory`` over the empty
   start) per report delivered, and what that becomes at 10,000 reports a minute with
   each tree's retention (the baseline keeps a report's hash and its interval's counts
   for INTERVAL_RETENTION, 7 days; the project keeps a compact record REPORT_RETENTION,
   1 h, and one history line per interval for 7 days).
2. The project's steady state, built for real in a fresh Redis: REPORT_RETENTION's worth
   of intervals of 10,000 tunnels each sealed, claimed and delivered through the
   ledger's own scripts (seal, claim, begin, finish) and compacted by the sweep's
   ``expire_intervals``, the rest of a week as history lines, plus the working set of
   one interval in flight (its counts, its pending reports, their queued messages):
   ``used_memory`` against 256 MB, and per interval.

``python bench/redis_memory.py [--quick] [--json out.json]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis  # noqa: E402
from harness import Stack, Tree, Writer, baseline, delivered_totals, emit, project, row, tunnel_name  # noqa: E402

from sim.procs import RedisServer  # noqa: E402

MAXMEMORY = 256 * 1024 * 1024  # k8s/base/redis.yaml
PER_MINUTE = 10_000
WEEK_MIN = 7 * 24 * 60


def used(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def retained_per_report(tree: Tree, tunnels: int, intervals: int) -> dict:
    env = {"REPORT_INTERVAL": "10", "FETCH_INTERVAL": "5", "LOG_LEVEL": "INFO"}  # INFO: the harness waits for "ready."
    with Stack(tree, delay=0.0, pods=20, env=env) as stack:
        stack.r.execute_command("MEMORY", "PURGE")
        time.sleep(2)
        base = used(stack.r)
        writer = Writer(stack.kube, stack.pods, seed=3)
        names = [tunnel_name(i) for i in range(tunnels)]
        for _ in range(intervals):
            for i, pod in enumerate(stack.pods):
                writer.write(pod, names[i::len(stack.pods)])
            time.sleep(10)
        expected = writer.expected()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and delivered_totals(stack.stub.records) != expected:
            stack.stub.poll()
            time.sleep(1)
        reports = len(stack.stub.records)
        time.sleep(35)  # two sweeps (every 3 x FETCH_INTERVAL): the project compacts
        stack.r.execute_command("MEMORY", "PURGE")
        after = used(stack.r)
        keys = {k.decode().split(":")[1] if k.startswith(b"tms:") else k.decode().split("-")[0]
                for k in stack.r.scan_iter(count=1000)}
    per = (after - base) / reports
    return {"tree": tree.name, "reports": reports, "bytes": after - base, "per_report": per, "kinds": sorted(keys)}


def steady_state(minutes_detail: int, quick: bool) -> dict:
    """The project's ledger at 10,000 tunnels a minute after a week, built for real."""
    os.environ.setdefault("PLATFORM_INTERNAL_SECRET", "x")
    sys.path.insert(0, str(project().path))
    from app.ledger import Ledger
    from app.model import ReportKey, ReportState

    server = RedisServer()
    server.start()
    try:
        r = redis.Redis.from_url(server.url)
        led = Ledger(r, "tms", 60)
        led.initialise(0)
        empty = used(r)
        now = int(led.now()) // 60 * 60
        tunnels = [tunnel_name(i) for i in range(PER_MINUTE)]
        first = now - (minutes_detail + 3) * 60
        for n in range(minutes_detail):
            start = first + n * 60
            with r.pipeline(transaction=False) as pipe:
                for i, sub in enumerate(tunnels):
                    pipe.hset(led.k("iv", start), mapping={f"{sub}:i": 1000 + i, f"{sub}:o": 50_000 + 7 * i, f"{sub}:r": 3})
                pipe.zadd(led.k("open"), {str(start): start})
                pipe.execute()
            subs = led.seal(start)
            keys = led.claim([ReportKey(start, s) for s in subs], 600)
            with r.pipeline(transaction=False) as pipe:
                for key in keys:  # begin.lua, then finish.lua, as a delivery does
                    led._begin(keys=led.begin_keys(key), args=["t", 60, key.subdomain, str(led.ri), "bench"],
                               client=pipe)
                    led._finish(keys=led.finish_keys(key),
                                args=[str(key), key.subdomain, ReportState.DELIVERED.value, "0123456789ab", 3600, "t"],
                                client=pipe)
                pipe.execute()
            led.expire_intervals(start + 60 + 1)
        detail_mb = (used(r) - empty) / 1e6
        # The rest of the week: one history line per interval (what expire_intervals writes).
        lines = [*led.r.zrange(led.k("history"), 0, 0)]
        sample = lines[0].decode().split()
        hist_first = first - (WEEK_MIN - minutes_detail) * 60
        with r.pipeline(transaction=False) as pipe:
            for n in range(WEEK_MIN - minutes_detail):
                start = hist_first + n * 60
                pipe.zadd(led.k("history"), {" ".join([str(start), *sample[1:]]): start})
            pipe.execute()
        week_mb = (used(r) - empty) / 1e6
        # One interval in flight: its counts, its reports pending and claimed, their messages.
        start = now - 60
        with r.pipeline(transaction=False) as pipe:
            for sub in tunnels:
                pipe.hset(led.k("iv", start), mapping={f"{sub}:i": 1234, f"{sub}:o": 56789, f"{sub}:r": 3})
            pipe.hset(led.k("iv", now), mapping={f"{sub}:{k}": 1 for sub in tunnels for k in "ior"})
            pipe.zadd(led.k("open"), {str(start): start})
            pipe.execute()
        keys = led.claim([ReportKey(start, s) for s in led.seal(start)], 600)
        message = b"x" * 988  # a report task message as kombu stores it (measured)
        with r.pipeline(transaction=False) as pipe:
            for _ in keys:
                pipe.lpush("report", message)
            pipe.execute()
        total = used(r)
        history = r.zcard(led.k("history"))
        done = sum(r.hlen(k) for k in r.scan_iter(match=led.k("done", "*")))
    finally:
        server.stop()
    return {"detail_intervals": minutes_detail, "done_reports": done, "history_lines": history,
            "detail_mb": detail_mb, "week_mb": week_mb, "total_mb": (total - empty) / 1e6,
            "per_interval_detail_kb": detail_mb * 1000 / minutes_detail}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tunnels", type=int, default=300, help="per 10 s interval, for the per-report figure")
    ap.add_argument("--intervals", type=int, default=6)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    results = []
    per = {}
    for tree in (project(), baseline()):
        per[tree.name] = res = retained_per_report(tree, args.tunnels, 3 if args.quick else args.intervals)
        print(f"  retained {tree.name}: {res}", flush=True)
    # At 10,000 reports a minute: the baseline keeps everything 7 days; how long until 256 MB?
    base_min = MAXMEMORY / (per["baseline"]["per_report"] * PER_MINUTE)
    proj = per["project"]["per_report"]
    results.append(row(
        "2 Redis bytes kept per report",
        f"{proj:,.0f} B per delivered report (kept REPORT_RETENTION)",
        "a week of history in 256 MB", None,
        baseline=f"{per['baseline']['per_report']:,.0f} B (kept 7 d): fills 256 MB in {base_min:.0f} min at 10k/min",
        ratio=f"{proj / per['baseline']['per_report']:.2f}x"))
    st = steady_state(15 if args.quick else 60, args.quick)
    print(f"  steady state: {st}", flush=True)
    scale = 60 / st["detail_intervals"]  # the quick run builds a quarter of the hour
    steady_mb = st["total_mb"] + st["detail_mb"] * (scale - 1)
    base_week_mb = per["baseline"]["per_report"] * PER_MINUTE * WEEK_MIN / 1e6
    results.append(row(
        "2 Redis steady state, 10k tunnels/min, 7 d",
        f"{steady_mb:.0f} MB of 256 ({100 * steady_mb * 1e6 / MAXMEMORY:.0f} %): detail "
        f"{st['per_interval_detail_kb']:.0f} kB/interval x 60, history {st['week_mb'] - st['detail_mb']:.1f} MB, "
        f"1 interval in flight {st['total_mb'] - st['week_mb']:.0f} MB",
        "<= 80 % of maxmemory 256 MB (noeviction)", steady_mb * 1e6 < MAXMEMORY * 0.8,
        baseline=f"{base_week_mb:,.0f} MB (reports kept 7 d)", ratio=f"{steady_mb / base_week_mb:.4f}x"))
    emit("redis_memory", results, args.json, quick=args.quick, details={"retained": per, "steady": st})
    return 0


if __name__ == "__main__":
    sys.exit(main())
