"""Target 6: rotation is outrun. Traffic at a steady rate per pod into the simulated
Kubernetes API, which rotates each container's log as the kubelet does (a running
container's current file is renamed away at a 10 s check once it holds 10 Mi; a read
without ``follow`` sees only the current file, a ``follow=true`` stream reads the renamed
file to its end first: sim/fake_kube.py, ``rotate_bytes``). The scraper runs with
its default fetch settings (worker-fetch, worker-report and beat from
docker-compose.yml; ``REPORT_INTERVAL=10`` only so that intervals are delivered soon).

For each rate, for the project and the baseline in the same run, after a warm-up of
``WARMUP`` seconds of traffic (the pace needs two reads of a pod to measure its growth):

- lines lost: those the fake API renamed away before any read returned them
  (``FakeKube.unserved``), as a share of the lines written and per rotation (in the
  steady part; the warm-up's own losses are in the details);
- the gap counter (``stats.gaps``), the GAP warnings of the fetch worker and its warnings
  of a follow stream behind its log (``follow_behind``), and the pods it followed;
- exactness of the rest: what the platform received per tunnel equals what was written
  minus the lost lines (nothing else lost, nothing counted twice).

The highest supported rate is the highest rate measured at which nothing was lost.

``python bench/rotation.py [--quick] [--rates 1000,2000,4000,8000] [--json out.json]``
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
TUNNELS = 200
ROTATE_BYTES = 10 * 1024 * 1024  # the kubelet's containerLogMaxSize default
ENV = {"REPORT_INTERVAL": "10", "LOG_LEVEL": "INFO"}  # fetch settings: the defaults
TICK = 0.05
WARMUP = 12.0  # seconds of traffic before the steady part is measured


def minus_lost(expected: dict[str, dict[str, int]], lost: list[bytes]) -> dict[str, dict[str, int]]:
    """``expected`` less the per-tunnel sums of the ``lost`` lines (the product's parser)."""
    agg = Aggregator(DOMAIN)
    agg.feed_lines(lost)
    out = {s: dict(v) for s, v in expected.items()}
    for sub, (bi, bo, rq) in agg.subdomains.items():
        t = out[sub]
        t["bytes_in"] -= bi
        t["bytes_out"] -= bo
        t["requests"] -= rq
    return {s: v for s, v in out.items() if v["requests"]}


def run(tree: Tree, rate: int, seconds: float) -> dict:
    with Stack(tree, delay=0.02, pods=PODS, env=ENV, rotate_bytes=ROTATE_BYTES) as stack:
        stack.sampling()
        writer = Writer(stack.kube, stack.pods, seed=rate)
        names = [tunnel_name(i) for i in range(TUNNELS)]
        # Traffic starts with the scraper's first round (beat sends it one FETCH_INTERVAL
        # after it starts): lines written before any read are not the pace's to save.
        wait_until(lambda: bool(stack.r.keys(f"{stack.prefix}:round:*")), 60, interval=0.02, what="the first round")
        per_tick = rate * TICK
        owed = 0.0
        pos = 0
        t_warm = time.monotonic() + WARMUP
        t_end = t_warm + seconds
        next_tick = time.monotonic()
        cpu0 = warm = None
        while time.monotonic() < t_end:
            if warm is None and time.monotonic() >= t_warm:
                # The steady part starts: the pace has measured each pod's growth.
                warm = (time.time_ns(), stack.kube.rotations, writer.truth.lines)
                cpu0 = {k: stack.sampler.cpu(k) for k in stack.sampler.roots}
            owed += per_tick
            n = int(owed)
            owed -= n
            for pod in stack.pods:
                writer.write(pod, [names[(pos + i) % TUNNELS] for i in range(n)])
            pos += n
            next_tick += TICK
            time.sleep(max(0.0, next_tick - time.monotonic()))
        span = seconds
        cpu1 = {k: stack.sampler.cpu(k) for k in stack.sampler.roots}
        # Everything still in the current files is read by the next rounds; the checks go
        # on, so wait for delivery to settle on what was not renamed away.
        deadline = time.monotonic() + 90
        exact = False
        while time.monotonic() < deadline:
            lost = [line for _, line in stack.kube.unserved()]
            expected = minus_lost(writer.expected(), lost)
            stack.stub.poll()
            if delivered_totals(stack.stub.records) == expected:
                exact = True
                break
            time.sleep(0.5)
        lost_all = stack.kube.unserved()
        lost = [line for _, line in lost_all]
        lost_steady = [ts for ts, _ in lost_all if ts >= warm[0]]
        got = delivered_totals(stack.stub.records)
        stats = {k.decode(): int(v) for k, v in stack.r.hgetall(f"{stack.prefix}:stats").items()}
        out = stack.procs["worker-fetch"].output().splitlines()
        gap_lines = [x for x in out if "GAP in the log" in x or "behind its log" in x]
        followed = sum(1 for x in out if "following the log of pod" in x)
        rotations = stack.kube.rotations
    written = writer.truth.lines - warm[2]
    steady_rotations = rotations - warm[1]
    return {
        "tree": tree.name, "rate": rate, "pods": PODS, "written": written, "lost": len(lost_steady),
        "lost_share": len(lost_steady) / written if written else 0.0, "rotations": steady_rotations,
        "lost_per_rotation": len(lost_steady) / steady_rotations if steady_rotations else 0.0,
        "lost_in_warmup": len(lost) - len(lost_steady), "written_in_warmup": warm[2], "rotations_in_warmup": warm[1],
        "gaps": stats.get("gaps", 0), "exact_rest": exact, "delivered_requests": sum(v["requests"] for v in got.values()),
        "gap_warning": gap_lines[0][:400] if gap_lines else "", "follow_started": stats.get("follow_started", 0),
        "follow_behind": stats.get("follow_behind", 0), "followed_logged": followed,
        "cores": {k: (cpu1[k] - cpu0[k]) / span for k in cpu1},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="500,1000,2000,4000,8000", help="lines/s per pod")
    ap.add_argument("--baseline-rates", default="2000")
    ap.add_argument("--seconds", type=float, default=40.0, help="of traffic per run")
    ap.add_argument("--quick", action="store_true", help="2,000 lines/s only, 25 s")
    add_tree_options(ap)
    args = ap.parse_args(argv)
    tree = chosen_project(args)
    rates = [int(x) for x in args.rates.split(",")]
    base_rates = [int(x) for x in args.baseline_rates.split(",") if x]
    seconds = args.seconds
    if args.quick:
        rates, base_rates, seconds = [2000], [2000], 25.0
    proj = {}
    for rate in rates:
        proj[rate] = run(tree, rate, seconds)
        print(f"  project {rate}/s: {proj[rate]}", flush=True)
    base = {}
    for rate in base_rates:
        base[rate] = run(baseline(), rate, seconds)
        print(f"  baseline {rate}/s: {base[rate]}", flush=True)

    def fig(r: dict) -> str:
        follows = f", pods followed {r['follow_started']}" if r.get("follow_started") else ""
        behind = f", behind warnings {r['follow_behind']}" if r.get("follow_behind") else ""
        return (f"{r['lost']:,} of {r['written']:,} lines lost ({r['lost_share']:.2%}; {r['lost_per_rotation']:,.0f} per "
                f"rotation, {r['rotations']} rotations), gaps {r['gaps']} (with the warm-up's "
                f"{r['rotations_in_warmup']} rotations){follows}{behind}, rest {'exact' if r['exact_rest'] else 'NOT exact'}")

    q = " (quick)" if args.quick else ""
    rows = []
    for rate, r in proj.items():
        b = base.get(rate)
        ratio = None
        if b and b["lost"]:
            ratio = f"{r['lost'] / b['lost']:.2f}x the baseline's loss"
        rows.append(row(f"6 rotation {rate:,} lines/s/pod{q}", fig(r), "nothing lost (2,000 lines/s/pod)" if rate == 2000
                        else "(informational)", (r["lost"] == 0 and r["exact_rest"]) if rate == 2000 else None,
                        baseline=fig(b) if b else None, ratio=ratio))
    supported = [rate for rate, r in proj.items() if r["lost"] == 0 and r["exact_rest"]]
    top = max(supported) if supported else None
    rows.append(row(f"6 highest rate per pod without loss{q}",
                    (f"{top:,} lines/s (the highest measured: {max(rates):,})" if top else
                     f"none of {', '.join(f'{x:,}' for x in rates)} lines/s: every rotation loses the lines written "
                     "since the pod's last read"),
                    ">= 2,000 lines/s", top is not None and top >= 2000))
    warn = next((r["gap_warning"] for r in proj.values() if r["gap_warning"]), "")
    rows.append(row(f"6 gap warning{q}", warn or "(no gap, no stream behind)",
                    "the gap counter fires and the warning says what to change",
                    None if not warn else ("FETCH_MIN_INTERVAL" in warn or "containerLogMaxSize" in warn)))
    emit("rotation", rows, args.json, quick=args.quick,
         details={"project": {str(k): v for k, v in proj.items()}, "baseline": {str(k): v for k, v in base.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
