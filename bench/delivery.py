"""Target 1: delivery keeps up. 20 pods x 10,000 active tunnels per 60 s interval, the
platform answering in 20 ms and in 100 ms, one fetch worker and one report worker started
with docker-compose.yml's commands.

The full scale is the default (``--interval 60``, 10,000 tunnels an interval, 6
intervals, the first a warm-up); ``--quick`` shortens the interval to 10 s and scales the
tunnels with it (1,667 per interval: the same 167 reports/s, but sealing's fixed delay of
about one fetch round then takes most of the next interval, so the quick run is a smoke
test, not the target). Steady runs write every tunnel's lines (3 at 20 ms, 8 at 100 ms)
once per interval for ``--intervals`` intervals, then wait for delivery, and check that

- every interval was delivered before the next one ended (its last report received
  before its end + one interval), and the seal-to-last-delivery time of each;
- the platform got exactly what was written (per tunnel) and one POST per report;
- Redis commands per interval (INFO commandstats over the steady part), which grow with
  pods x tunnels and not with lines: each tunnel writes its lines of an interval as one
  burst into its own pod, so the (pod, tunnel, read) triples are the same in the two
  runs, which write 3 and 8 lines per tunnel per interval;
- CPU used (cores) and peak PSS per process kind against the manifests' limits.

A drain run puts ``--drain`` tunnels in one interval and measures how fast their reports
go out once sealed (the highest sustained rate), for the project and the baseline.

``python bench/delivery.py [--quick] [--json out.json]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Stack,
    Tree,
    Writer,
    baseline,
    delivered_totals,
    diff_counts,
    emit,
    interval_of_key,
    manifest_resources,
    project,
    row,
    tunnel_name,
)

PODS = 20


def wait_delivered(stack: Stack, writer: Writer, timeout: float) -> bool:
    expected = writer.expected()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.stub.poll()
        if delivered_totals(stack.stub.records) == expected:
            return True
        time.sleep(0.5)
    return False


def watch_seals(stack: Stack, seen: dict[int, float], stop: threading.Event) -> None:
    """When each interval was sealed, as seen from here (polled every 50 ms)."""
    while not stop.wait(0.05):
        for start in stack.sealed():
            seen.setdefault(start, time.time())


def steady(tree: Tree, delay: float, interval: int, tunnels: int, lines: int, intervals: int, fetch_every: int) -> dict:
    env = {"REPORT_INTERVAL": str(interval), "FETCH_INTERVAL": str(fetch_every), "LOG_LEVEL": "INFO"}
    with Stack(tree, delay=delay, pods=PODS, env=env) as stack:
        stack.sampling()
        writer = Writer(stack.kube, stack.pods, seed=int(delay * 1000) + lines)
        names = [tunnel_name(i) for i in range(tunnels)]
        seals: dict[int, float] = {}
        stop = threading.Event()
        threading.Thread(target=watch_seals, args=(stack, seals, stop), daemon=True).start()
        tick = 0.25
        # Each tunnel's lines of an interval go out as one burst into one pod (its pod
        # for the whole run), at a random moment of the interval: the (pod, tunnel, read)
        # triples are then the same whatever ``lines`` is, so the Redis commands of two
        # runs with different ``lines`` show whether they grow with lines or not.
        per_tick = max(1, round(tunnels * tick / interval))
        order = list(names)
        home = {n: stack.pods[i % PODS] for i, n in enumerate(names)}
        pos = 0
        # Start writing at an interval boundary (Redis time), so every interval is whole.
        now = time.time()
        begin = (now // interval + 1) * interval
        time.sleep(begin - now)
        end = begin + intervals * interval
        cmd0 = cpu0 = t_cmd0 = None
        next_tick = begin
        while time.time() < end:
            if cmd0 is None and time.time() >= begin + interval:  # the first interval warms up
                cmd0, t_cmd0 = stack.commandstats(), time.time()
                cpu0 = {k: stack.sampler.cpu(k) for k in stack.sampler.roots}
            by_pod: dict[str, list[str]] = {}
            for _ in range(per_tick):
                if pos == 0:
                    writer.rng.shuffle(order)
                by_pod.setdefault(home[order[pos]], []).extend([order[pos]] * lines)
                pos = (pos + 1) % len(order)
            for pod, subs in by_pod.items():
                writer.write(pod, subs)
            next_tick += tick
            time.sleep(max(0.0, next_tick - time.time()))
        cmd1, t_cmd1 = stack.commandstats(), time.time()
        cpu1 = {k: stack.sampler.cpu(k) for k in stack.sampler.roots}
        ok = wait_delivered(stack, writer, timeout=max(120, 20 * interval))
        stop.set()
        stack.stub.stop()
        records = stack.stub.records
        stats = stack.stub.stats()
        peaks = dict(stack.sampler.peak_kb)
        log = stack.procs["worker-report"].output()
        # Report tasks that sent nothing: a copy of a report already final (a lease that
        # ran out while its message waited in the queue) or being sent by another copy.
        wasted = log.count("; nothing sent") + log.count("'action': 'busy'")

    per_iv: dict[str, list[float]] = {}
    for rec in records:
        per_iv.setdefault(interval_of_key(rec["key"]), []).append(rec["t"])
    rows = []
    for start, sealed_at in sorted(seals.items()):
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)) + f"/{interval}"
        times = per_iv.get(iso)
        if not times:
            continue
        rows.append({"start": start, "reports": len(times), "sealed_after_end": sealed_at - (start + interval),
                     "seal_to_last": max(times) - sealed_at, "last_after_end": max(times) - (start + interval),
                     # while this interval's reports went out: reports / (last - first)
                     "rate": len(times) / max(1e-3, max(times) - min(times))})
    # Whole intervals only: written from the first boundary on, ended before writing stopped.
    whole = [r for r in rows if begin <= r["start"] and r["start"] + interval <= end]
    calls = diff_counts(cmd1, cmd0)
    span = t_cmd1 - t_cmd0
    n_iv = span / interval
    cores = {k: (cpu1[k] - cpu0[k]) / span for k in cpu1}
    delivered = len([r for r in records if r["status"] in (200, 201)])
    return {
        "tree": tree.name, "delay": delay, "interval": interval, "tunnels": tunnels, "lines": lines,
        "exact": ok, "reports": delivered, "attempts": stats.get("attempts"), "outcomes": stats.get("outcomes"),
        "tasks_without_post": wasted, "intervals": whole, "kept_up": all(r["last_after_end"] <= interval for r in whole) and len(whole) >= intervals - 1,
        "max_seal_to_last": max((r["seal_to_last"] for r in whole), default=float("nan")),
        "median_seal_to_last": statistics.median([r["seal_to_last"] for r in whole]) if whole else float("nan"),
        "offered": sum(r["reports"] for r in whole) / (len(whole) * interval) if whole else 0.0,
        # delivered per second while delivering: every report over the summed busy spans
        "rate": sum(r["reports"] for r in whole) / sum(r["reports"] / r["rate"] for r in whole) if whole else 0.0,
        "max_sealed_after_end": max((r["sealed_after_end"] for r in whole), default=float("nan")),
        "redis_calls_per_interval": sum(calls.values()) / n_iv,
        "redis_top": dict(sorted(((k, round(v / n_iv)) for k, v in calls.items()), key=lambda kv: -kv[1])[:12]),
        "cores": cores, "peak_pss_mib": {k: v / 1024 for k, v in peaks.items()},
    }


def drain(tree: Tree, delay: float, n: int, interval: int = 10) -> dict:
    """``n`` tunnels in one interval: how fast their reports go once sealed."""
    env = {"REPORT_INTERVAL": str(interval), "FETCH_INTERVAL": str(min(5, interval)), "LOG_LEVEL": "INFO"}
    with Stack(tree, delay=delay, pods=PODS, env=env) as stack:
        stack.sampling()
        writer = Writer(stack.kube, stack.pods, seed=7)
        names = [tunnel_name(i) for i in range(n)]
        now = time.time()
        time.sleep((now // interval + 1) * interval - now + 0.2)  # early in an interval
        for i in range(PODS):
            writer.write(stack.pods[i], names[i::PODS])
        cpu0 = {k: stack.sampler.cpu(k) for k in stack.procs}
        ok = wait_delivered(stack, writer, timeout=max(60, n / 5))
        cpu1 = {k: stack.sampler.cpu(k) for k in stack.procs}
        stack.stub.stop()
        times = sorted(r["t"] for r in stack.stub.records)
        stats = stack.stub.stats()
    # The steady part: from the 5th to the 95th percentile delivery.
    lo, hi = times[len(times) // 20], times[len(times) * 19 // 20]
    rate = (len(times) * 0.9) / (hi - lo) if hi > lo else float("nan")
    return {"tree": tree.name, "delay": delay, "n": n, "exact": ok, "rate": rate, "attempts": stats.get("attempts"),
            "cpu_per_report_ms": {k: 1000 * (cpu1[k] - cpu0[k]) / n for k in cpu1}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interval", type=int, default=60)
    ap.add_argument("--tunnels", type=int, default=None, help="per interval (default 10,000 x interval / 60)")
    ap.add_argument("--intervals", type=int, default=6, help="written, the first one a warm-up")
    ap.add_argument("--drain", type=int, default=6000)
    ap.add_argument("--baseline-drain", type=int, default=800)
    ap.add_argument("--quick", action="store_true", help="fewer intervals and a smaller drain")
    ap.add_argument("--only", choices=("steady", "drain"), default=None)
    ap.add_argument("--delays", default="0.02,0.1", help="platform latencies of the steady runs, seconds")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.interval, args.intervals = 10, 4
    tunnels = args.tunnels or round(10_000 * args.interval / 60)
    intervals = args.intervals
    need = 10_000 / 60
    results = []
    out: dict = {}
    if args.only in (None, "steady"):
        delays = [float(x) for x in args.delays.split(",")]
        for delay, lines in zip(delays, (3, 8, 3, 8), strict=False):
            res = steady(project(), delay, args.interval, tunnels, lines, intervals, min(10, args.interval // 2))
            out[f"steady_{int(delay * 1000)}"] = res
            print(f"  steady {int(delay * 1000)} ms: {res}", flush=True)
            seal = ", ".join(f"{r['seal_to_last']:.1f}" for r in res["intervals"])
            ok = res["kept_up"] and res["exact"] and res["attempts"] == res["reports"]
            res["one_post_per_report"] = res["attempts"] == res["reports"]
            seal_max = max((r["seal_to_last"] for r in res["intervals"]), default=float("nan"))
            results.append(row(
                f"1 delivery keeps up, {int(delay * 1000)} ms platform",
                f"{len(res['intervals'])} intervals x {tunnels:,} tunnels/{args.interval} s x {PODS} pods: "
                f"offered {res['offered']:.0f}/s, delivered at {res['rate']:.0f}/s, sealed <= "
                f"{res['max_sealed_after_end']:.1f} s after end, seal->last max {seal_max:.1f} s ({seal} s)"
                + ("" if res["exact"] else ", NOT EXACT") + ("" if res["one_post_per_report"] else
                                                            f", {res['attempts'] - res['reports']} extra POSTs"),
                f"every interval delivered before the next ends, >= {need:.0f}/s, exact",
                ok and res["offered"] >= need * 0.97))
            per_line = res["redis_calls_per_interval"] / tunnels
            results.append(row(
                f"1 Redis commands/interval, {int(delay * 1000)} ms",
                f"{res['redis_calls_per_interval']:,.0f} = {per_line:.1f} per tunnel at {lines} lines/tunnel",
                "grows with pods x tunnels, not lines", None))
            limits = manifest_resources()
            kinds = ("worker-fetch", "worker-report", "beat")
            cores = ", ".join(f"{k} {res['cores'][k]:.2f}/{limits[k]['limits']['cpu']:.2f}" for k in kinds)
            mem = ", ".join(f"{k} {res['peak_pss_mib'][k]:.0f}/{limits[k]['limits']['memory']:.0f}" for k in kinds)
            results.append(row(
                f"1 CPU and memory vs limits, {int(delay * 1000)} ms",
                f"cores used/limit: {cores}; peak PSS MiB/limit: {mem}",
                "within the manifests' CPU and memory limits",
                all(res["cores"][k] <= limits[k]["limits"]["cpu"] and res["peak_pss_mib"][k] <= limits[k]["limits"]["memory"]
                    for k in kinds)))
    if len(steadies := [v for k, v in out.items() if k.startswith("steady_")]) >= 2:
        a, b = steadies[0], steadies[1]
        pa, pb = a["redis_calls_per_interval"] / a["tunnels"], b["redis_calls_per_interval"] / b["tunnels"]
        results.append(row(
            "1 Redis commands grow with tunnels, not lines",
            f"{pa:.1f} commands/tunnel at {a['lines']} lines/tunnel, {pb:.1f} at {b['lines']} "
            f"({b['lines'] / a['lines']:.1f}x the lines)",
            "per-tunnel commands about equal (< 1.25x) when lines grow", pb / pa < 1.25,
            ratio=f"{pb / pa:.2f}x"))
    if args.only in (None, "drain"):
        n = 2000 if args.quick else args.drain
        proj = drain(project(), 0.02, n)
        print(f"  drain project 20 ms: {proj}", flush=True)
        proj100 = drain(project(), 0.1, n)
        print(f"  drain project 100 ms: {proj100}", flush=True)
        base = drain(baseline(), 0.02, args.baseline_drain)
        print(f"  drain baseline 20 ms: {base}", flush=True)
        out.update(drain_project_20=proj, drain_project_100=proj100, drain_baseline_20=base)
        results.append(row(
            "1 highest sustained rate (drain)",
            f"{proj['rate']:.0f}/s at 20 ms, {proj100['rate']:.0f}/s at 100 ms ({n:,} reports)",
            f">= {need:.0f}/s", min(proj["rate"], proj100["rate"]) >= need and proj["exact"] and proj100["exact"],
            baseline=f"{base['rate']:.0f}/s at 20 ms ({args.baseline_drain:,} reports)",
            ratio=f"{proj['rate'] / base['rate']:.1f}x"))
        results.append(row(
            "1 worker CPU per report (20 ms)",
            ", ".join(f"{k} {v:.2f} ms" for k, v in proj["cpu_per_report_ms"].items()),
            "(where the time goes)", None,
            baseline=", ".join(f"{k} {v:.2f} ms" for k, v in base["cpu_per_report_ms"].items())))
    emit("delivery", results, args.json, quick=args.quick, details=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
