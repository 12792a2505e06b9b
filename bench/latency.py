"""Target 5: latency. Steady traffic into 3 pods of the simulated Kubernetes API, the
scraper (worker-fetch, worker-report and beat started with docker-compose.yml's commands)
with ``REPORT_INTERVAL=10`` and ``FETCH_INTERVAL=5``, the platform answering in 20 ms.

For every report the platform received: (time it was received - time of the newest line
it covers). Each tunnel writes into one pod only, so its lines are committed in the order
they were written, and the k-th report of a tunnel (in interval order) covers its lines
from the sum of the requests of the reports before it up to that plus its own requests:
the newest of them is known whichever way the scraper assigns lines to intervals. The
first interval (warm-up) is left out. Also checked: the platform received exactly what
was written, per tunnel.

Target: p99 <= REPORT_INTERVAL + FETCH_INTERVAL + 5 s = 20 s. The project and the
baseline are measured in the same run.

``python bench/latency.py [--quick] [--intervals N] [--json out.json]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (  # noqa: E402
    Stack,
    Tree,
    Writer,
    add_tree_options,
    baseline,
    chosen_project,
    delivered_totals,
    emit,
    interval_of_key,
    row,
    tunnel_name,
)

PODS = 3
TUNNELS_PER_POD = 40
LINES_PER_S = 100  # per pod
TICK = 0.25
REPORT_INTERVAL, FETCH_INTERVAL = 10, 5
ENV = {"REPORT_INTERVAL": str(REPORT_INTERVAL), "FETCH_INTERVAL": str(FETCH_INTERVAL), "LOG_LEVEL": "INFO"}
GOAL = REPORT_INTERVAL + FETCH_INTERVAL + 5


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def latencies(records: list[dict], times: dict[str, list[float]], warm_until: float) -> list[float]:
    """One sample per report received (see the module's docstring)."""
    by_sub: dict[str, list[dict]] = {}
    for rec in records:
        if rec["status"] == 201:
            by_sub.setdefault(rec["sub"], []).append(rec)
    out = []
    for sub, recs in by_sub.items():
        recs.sort(key=lambda r: (interval_of_key(r["key"]), r["t"]))
        covered = 0
        for rec in recs:
            covered += rec["rq"]
            newest = times[sub][covered - 1]
            if newest >= warm_until:
                out.append(rec["t"] - newest)
    return out


def run(tree: Tree, intervals: int) -> dict:
    with Stack(tree, delay=0.02, pods=PODS, env=ENV) as stack:
        stack.sampling()
        writer = Writer(stack.kube, stack.pods, seed=5, keep_times=True)
        subs = {pod: [tunnel_name(p * TUNNELS_PER_POD + i) for i in range(TUNNELS_PER_POD)]
                for p, pod in enumerate(stack.pods)}
        now = time.time()
        begin = (now // REPORT_INTERVAL + 1) * REPORT_INTERVAL  # whole intervals
        time.sleep(begin - now)
        end = begin + intervals * REPORT_INTERVAL
        per_tick = LINES_PER_S * TICK
        owed, pos, next_tick = 0.0, 0, begin
        while time.time() < end:
            owed += per_tick
            n = int(owed)
            owed -= n
            for pod in stack.pods:
                writer.write(pod, [subs[pod][(pos + i) % TUNNELS_PER_POD] for i in range(n)])
            pos += n
            next_tick += TICK
            time.sleep(max(0.0, next_tick - time.time()))
        expected = writer.expected()
        deadline = time.monotonic() + 120
        exact = False
        while time.monotonic() < deadline:
            stack.stub.poll()
            if delivered_totals(stack.stub.records) == expected:
                exact = True
                break
            time.sleep(0.25)
        stack.stub.poll()
        records = list(stack.stub.records)
    lat = latencies(records, writer.truth.times, begin + REPORT_INTERVAL)
    return {"tree": tree.name, "exact": exact, "samples": len(lat), "lines": writer.truth.lines,
            "p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat, default=float("nan")),
            "mean": statistics.fmean(lat) if lat else float("nan")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--intervals", type=int, default=12, help="of steady traffic, the first a warm-up")
    ap.add_argument("--quick", action="store_true", help="5 intervals")
    add_tree_options(ap)
    args = ap.parse_args(argv)
    tree = chosen_project(args)
    intervals = 5 if args.quick else args.intervals
    head = subprocess.run(["git", "-C", str(tree.path), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(tree.path), "status", "--porcelain", "--untracked-files=no", "--", "app",
                            "workers"], capture_output=True, text=True).stdout.strip()
    head += " + uncommitted changes in app/ or workers/" if dirty else " (clean)"
    proj = run(tree, intervals)
    print(f"  project at {head}: {proj}", flush=True)
    base = run(baseline(), intervals)
    print(f"  baseline: {base}", flush=True)
    q = " (quick)" if args.quick else ""

    def fig(r: dict) -> str:
        return (f"p99 {r['p99']:.1f} s (p50 {r['p50']:.1f} s, max {r['max']:.1f} s; {r['samples']} reports)"
                f"{'' if r['exact'] else ' NOT exact'}")

    rows = [row(f"5 latency p99{q}", f"{fig(proj)} at {head}", f"p99 <= {GOAL} s (REPORT_INTERVAL {REPORT_INTERVAL} + FETCH_INTERVAL "
                f"{FETCH_INTERVAL} + 5)", proj["p99"] <= GOAL and proj["exact"], baseline=fig(base),
                ratio=f"{proj['p99'] / base['p99']:.2f}x" if base["p99"] else None)]
    emit("latency", rows, args.json, quick=args.quick, details={"project": proj, "baseline": base, "head": head})
    return 0


if __name__ == "__main__":
    sys.exit(main())
