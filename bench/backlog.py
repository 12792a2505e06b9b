"""Target 4: end-to-end backlog throughput. 1 M access lines wait in 3 pods of the
simulated Kubernetes API; the scraper (worker-fetch, worker-report and beat started with
docker-compose.yml's commands) reads, merges and reports them to the platform stub.

Measured, for the project and the baseline in the same run:

- the time from the first round (beat sends it one ``FETCH_INTERVAL`` after it starts)
  until the platform has received everything, and the lines/s that makes;
- the fetch side: the time until every line is committed to the ledger (its counter
  ``lines_counted`` reaches the total), as lines/s against the parser's single-core rate
  on the same lines (``app.parser.Aggregator.feed_lines``, timed here on one core with
  ``time.process_time``); the target is >= 50 % of it;
- CPU seconds per million lines for each process kind (worker-fetch, worker-report,
  beat, redis, the platform stub, and this process, which serves the fake API);
- exact totals: what the platform received per tunnel equals what was written.

The backlog is synthetic (a kubelet keeps about 10 MiB per container): the lines are
stamped 2,000 a second per pod, ending now, so that no second of log holds more than
``FETCH_MAX_BYTES`` (a read from such a second could not get past it). The baseline
reads ``FETCH_MAX_BYTES`` per pod per round (``FETCH_INTERVAL``); the project follows a
read cut at ``limitBytes`` at once (app/pace.py).

``python bench/backlog.py [--quick] [--lines N] [--json out.json]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.parser import Aggregator  # noqa: E402
from bench.harness import (  # noqa: E402
    DOMAIN,
    Stack,
    Tree,
    Writer,
    add_tree_options,
    baseline,
    chosen_project,
    delivered_totals,
    emit,
    row,
    tunnel_name,
)
from sim.procs import wait_until  # noqa: E402

PODS = 3
TUNNELS = 100
PER_POD_RATE = 2000  # lines a second per pod, for the stamps
BATCH = 100  # lines per stamp
ENV = {"REPORT_INTERVAL": "10", "LOG_LEVEL": "INFO"}  # INFO: the harness waits for "ready."


def write_backlog(stack: Stack, writer: Writer, total: int) -> list[bytes]:
    """``total`` lines spread over the pods, stamped PER_POD_RATE a second per pod and
    ending now; the ledger's start moved before the first stamp. Returns a sample of the
    lines (without stamps) for the parser's rate."""
    per_pod = total // PODS
    seconds = per_pod / PER_POD_RATE
    now = time.time_ns()
    first = now - int(seconds * 1e9) - 1_000_000_000
    stack.r.hset(f"{stack.prefix}:init", "start_at_ns", str(first - 1_000_000_000))
    names = [tunnel_name(i) for i in range(TUNNELS)]
    sample: list[bytes] = []
    step = int(1e9 * BATCH / PER_POD_RATE)
    for p, pod in enumerate(stack.pods):
        n = per_pod + (total - per_pod * PODS if p == 0 else 0)
        ts = first
        for start in range(0, n, BATCH):
            lines = [writer.line(names[(start + i) % TUNNELS]) for i in range(min(BATCH, n - start))]
            stack.kube.write_many(pod, lines, ts_ns=ts)
            writer.truth.lines += len(lines)
            if len(sample) < 200_000:
                sample += lines
            ts += step
    return sample


def parser_rate(sample: list[bytes]) -> float:
    """Lines per CPU second of the parser on one core (best of 3)."""
    best = float("inf")
    for _ in range(3):
        agg = Aggregator(DOMAIN)
        t0 = time.process_time()
        for i in range(0, len(sample), 2048):
            agg.feed_lines(sample[i:i + 2048])
        best = min(best, time.process_time() - t0)
    return len(sample) / best


def run(tree: Tree, total: int, timeout: float) -> dict:
    with Stack(tree, delay=0.02, pods=PODS, env=ENV, services=()) as stack:
        writer = Writer(stack.kube, stack.pods, seed=4)
        t_w = time.monotonic()
        sample = write_backlog(stack, writer, total)
        print(f"  {tree.name}: {total:,} lines written in {time.monotonic() - t_w:.1f} s", flush=True)
        rate = parser_rate(sample)
        del sample
        commands = tree.compose_commands()
        for svc in ("worker-fetch", "worker-report"):
            stack.start_service(svc, commands[svc])
        stack.start_service("beat", commands["beat"])
        # Beat sends its first round one FETCH_INTERVAL after it starts: the clock starts
        # with that round (its round:<n> key), so both trees are timed from their first read.
        wait_until(lambda: bool(stack.r.keys(f"{stack.prefix}:round:*")), 60, interval=0.02, what="the first round")
        t0 = time.monotonic()
        cpu0 = {k: stack.sampler.cpu(k) for k in stack.sampler.roots}
        expected = writer.expected()
        fetched_at = delivered_at = None
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if fetched_at is None and stack.r.hget(f"{stack.prefix}:stats", "lines_counted") is not None \
                    and int(stack.r.hget(f"{stack.prefix}:stats", "lines_counted")) >= total:
                fetched_at = time.monotonic()
            stack.stub.poll()
            if delivered_totals(stack.stub.records) == expected:
                delivered_at = time.monotonic()
                break
            time.sleep(0.25)
        cpu1 = {k: stack.sampler.cpu(k) for k in stack.sampler.roots}
        got = delivered_totals(stack.stub.records)
        counted = int(stack.r.hget(f"{stack.prefix}:stats", "lines_counted") or 0)
        stats = {k.decode(): v.decode() for k, v in stack.r.hgetall(f"{stack.prefix}:stats").items()}
    exact = delivered_at is not None
    if fetched_at is None and exact:
        fetched_at = delivered_at
    over = {s: (got.get(s), expected[s]) for s in expected if got.get(s) != expected[s]}
    res = {
        "tree": tree.name, "lines": total, "exact": exact, "counted": counted,
        "delivered_s": (delivered_at - t0) if exact else None,
        "fetched_s": (fetched_at - t0) if fetched_at else None,
        "cpu_s_per_million": {k: (cpu1[k] - cpu0.get(k, 0.0)) * 1e6 / total for k in cpu1},
        "parser_rate": rate, "mismatched_tunnels": len(over),
        "stats": {k: v for k, v in stats.items() if k in ("lines_counted", "lines_read", "no_progress", "fetch_conflicts", "gaps")},
    }
    res["lines_per_s"] = total / res["delivered_s"] if exact else None
    res["fetch_lines_per_s"] = total / res["fetched_s"] if res["fetched_s"] else None
    cpu_fetch = cpu1.get("worker-fetch", 0.0) - cpu0.get("worker-fetch", 0.0)
    res["fetch_lines_per_cpu_s"] = total / cpu_fetch if cpu_fetch > 0 else None
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="200,000 lines")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per tree")
    add_tree_options(ap)
    args = ap.parse_args(argv)
    tree = chosen_project(args)
    total = 200_000 if args.quick else args.lines
    proj = run(tree, total, args.timeout)
    print(f"  project: {proj}", flush=True)
    base = run(baseline(), total, args.timeout)
    print(f"  baseline: {base}", flush=True)

    def fmt(x: float | None, unit: str = "") -> str:
        return "did not finish" if x is None else f"{x:,.0f}{unit}"

    def secs(x: float | None) -> str:
        return "did not finish" if x is None else f"{x:.1f} s"

    q = " (quick)" if args.quick else ""
    ratio = (proj["lines_per_s"] / base["lines_per_s"]) if proj["lines_per_s"] and base["lines_per_s"] else None
    rows = [
        row(f"4 backlog end to end{q}",
            f"{total:,} lines in {PODS} pods delivered in {secs(proj['delivered_s'])}: {fmt(proj['lines_per_s'], ' lines/s')}"
            f"{'' if proj['exact'] else ' (NOT exact)'}",
            "everything delivered, exact", proj["exact"],
            baseline=f"{secs(base['delivered_s'])}: {fmt(base['lines_per_s'], ' lines/s')}"
                     f"{'' if base['exact'] else ' (NOT exact)'}",
            ratio=f"{ratio:.1f}x" if ratio else None),
    ]
    half = proj["parser_rate"] / 2
    share = proj["fetch_lines_per_s"] / proj["parser_rate"] if proj["fetch_lines_per_s"] else 0.0
    rows.append(row(
        f"4 backlog fetch side{q}",
        f"{fmt(proj['fetch_lines_per_s'], ' lines/s')} committed ({share:.0%} of the parser's {proj['parser_rate']:,.0f} "
        f"lines/s on one core; {fmt(proj['fetch_lines_per_cpu_s'])} lines per fetch-worker CPU s)",
        ">= 50 % of the parser's single-core rate", proj["fetch_lines_per_s"] is not None and proj["fetch_lines_per_s"] >= half,
        baseline=f"{fmt(base['fetch_lines_per_s'], ' lines/s')} committed",
        ratio=(f"{proj['fetch_lines_per_s'] / base['fetch_lines_per_s']:.1f}x"
               if proj["fetch_lines_per_s"] and base["fetch_lines_per_s"] else None)))
    kinds = ("worker-fetch", "worker-report", "beat", "redis", "stub", "bench")
    rows.append(row(
        f"4 backlog CPU s per million lines{q}",
        ", ".join(f"{k} {proj['cpu_s_per_million'].get(k, 0):.1f}" for k in kinds) + " (bench = the fake API)",
        "(where the time goes)", None,
        baseline=", ".join(f"{k} {base['cpu_s_per_million'].get(k, 0):.1f}" for k in kinds)))
    emit("backlog", rows, args.json, quick=args.quick, details={"project": proj, "baseline": base})
    return 0


if __name__ == "__main__":
    sys.exit(main())
