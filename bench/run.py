"""Run every benchmark, one after another, and print one table: one line per performance
target (numbered 1-7 as in README's "Benchmarks") with the figure, the goal, the baseline
figure (measured in the same run, where a baseline applies), the ratio and met / NOT MET.

``python bench/run.py [--quick] [--only NAME[,NAME...]] [--keep DIR]`` (``make bench``;
``make bench BENCH_ARGS=--quick`` for a smoke run). Exit status 0 when every script
measured and every goal is met, 1 when a goal is not met, 2 when a script could not measure.

Row contract (every script below follows it)
--------------------------------------------
Each script is run as ``python bench/<name>.py [--quick] --json <out.json>`` from the
repository root, never two at once (the machine has 2 cores). ``--quick`` is a smoke run
(same code paths, smaller sizes, a few minutes at most). Before it exits the script writes::

    {"bench": "<name>", "quick": true|false,
     "rows": [{"target":   "5 latency p99",          # issue target number 1..7 first, then a short name
               "figure":   "p99 13.2 s (p50 7.9 s)",  # measured figure, units included
               "goal":     "p99 <= 20 s",             # the issue's goal, units included
               "baseline": "p99 31.0 s" | null,       # same figure for BASELINE_COMMIT, measured in this run
               "ratio":    "0.43x" | null,            # project/baseline, or the ratio the target is defined by
               "met":      true | false | null}],     # null only for an informational row without a goal
     "details": {...}}                                # optional raw numbers

Exit status 0 when it measured (a goal not met is ``"met": false``, not a failure);
non-zero only when it could not measure. Baseline processes come from
``bench.harness.baseline()`` (a git worktree of BASELINE_COMMIT under /tmp), simulators
always from this tree, and every simulated HTTP server disables Nagle's algorithm.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# In target order; scripts that do not exist (yet) are listed as missing.
SCRIPTS = ("delivery", "redis_memory", "fetch_memory", "backlog", "latency", "rotation", "parse")
TIMEOUT_S = {"quick": 1200, "full": 4 * 3600}


def _target_key(row: dict) -> int:
    """The issue's target number a row starts with (a stable sort keeps each script's order)."""
    m = re.match(r"\s*(\d+)", str(row.get("target", "")))
    return int(m.group(1)) if m else 99


def _mark(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "NOT MET")


# Widest a cell is printed (characters); longer ones keep their head and tail around an
# ellipsis (the whole figure is in the JSON).
MAX_CELL = {"target": 45, "figure": 80, "goal": 40, "baseline": 45, "ratio": 16}


def _cut(text: str, width: int | None) -> str:
    if width is None or len(text) <= width:
        return text
    head = width // 2 - 1
    return text[:head] + " … " + text[len(text) - (width - head - 3):]


def table(rows: list[dict]) -> str:
    """The rows as one fixed-width table (columns sized to their content, long cells cut)."""
    cols = ("target", "figure", "goal", "baseline", "ratio", "met")
    cells = [[_cut(str(r.get("target", "")), MAX_CELL["target"]), _cut(str(r.get("figure", "")), MAX_CELL["figure"]),
              _cut(str(r.get("goal", "")), MAX_CELL["goal"]),
              "-" if r.get("baseline") is None else _cut(str(r["baseline"]), MAX_CELL["baseline"]),
              "-" if r.get("ratio") is None else _cut(str(r["ratio"]), MAX_CELL["ratio"]),
              r["met"] if isinstance(r.get("met"), str) else _mark(r.get("met"))] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    line = lambda vals: " | ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)).rstrip()  # noqa: E731
    out = [line(cols), "-+-".join("-" * w for w in widths)]
    out += [line(c) for c in cells]
    return "\n".join(out)


def run_one(name: str, quick: bool, outdir: Path) -> tuple[list[dict], str | None, float]:
    """Run bench/<name>.py; its rows, an error (or None) and its wall seconds."""
    script = ROOT / "bench" / f"{name}.py"
    out = outdir / f"{name}.json"
    cmd = [sys.executable, str(script), "--json", str(out)] + (["--quick"] if quick else [])
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    began = time.monotonic()
    try:
        rc = subprocess.run(cmd, cwd=str(ROOT), timeout=TIMEOUT_S["quick" if quick else "full"]).returncode
    except subprocess.TimeoutExpired:
        return [], "timed out", time.monotonic() - began
    took = time.monotonic() - began
    if rc != 0:
        return [], f"exit status {rc}", took
    try:
        doc = json.loads(out.read_text())
        rows = doc["rows"]
        for r in rows:
            for key in ("target", "figure", "goal", "met"):
                if key not in r:
                    raise KeyError(key)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [], f"no valid --json output ({e.__class__.__name__}: {e})", took
    return rows, None, took


def print_tables(paths: list[str]) -> int:
    """The table of JSON files written by earlier runs (``--table``); quick runs marked."""
    files = [f for p in map(Path, paths) for f in (sorted(p.glob("*.json")) if p.is_dir() else [p])]
    rows: list[dict] = []
    for f in files:
        try:
            doc = json.loads(f.read_text())
            found = doc["rows"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"run.py: error: {f}: not a benchmark's JSON ({e.__class__.__name__}: {e})", file=sys.stderr)
            return 2
        for r in found:
            quick = doc.get("quick") and "(quick)" not in r["target"]
            rows.append({**r, "target": r["target"] + (" (quick)" if quick else "")})
    if not rows:
        print(f"run.py: error: no benchmark rows in {' '.join(paths)}", file=sys.stderr)
        return 2
    rows.sort(key=_target_key)
    print(f"tables of {', '.join(map(str, files))}")
    print(table(rows))
    return 0 if all(r.get("met") is not False for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Exit status: 0 every goal met, 1 a goal not met, 2 a benchmark could not measure "
                                        "or a usage error.")
    ap.add_argument("--quick", action="store_true", help="smoke run: every script with --quick")
    ap.add_argument("--only", default=None, help=f"comma-separated benchmarks, of: {', '.join(SCRIPTS)}")
    ap.add_argument("--keep", default=None, help="folder for the scripts' JSON (default: a temporary one)")
    ap.add_argument("--table", nargs="+", metavar="JSON", default=None,
                    help="run nothing: print the table of these JSON files (or folders of them) from earlier runs")
    args = ap.parse_args(argv)
    if args.table:
        return print_tables(args.table)
    names = args.only.split(",") if args.only else list(SCRIPTS)
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        ap.error(f"--only: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(SCRIPTS)}")
    outdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tms-bench-run-"))
    outdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    failed = False
    timings = []
    for name in names:
        if not (ROOT / "bench" / f"{name}.py").exists():
            rows.append({"target": f"({name})", "figure": f"bench/{name}.py missing", "goal": "", "met": "ERROR"})
            failed = True
            continue
        got, err, took = run_one(name, args.quick, outdir)
        timings.append(f"{name} {took:.0f} s")
        if err:
            rows.append({"target": f"({name})", "figure": f"could not measure: {err}", "goal": "", "met": "ERROR"})
            failed = True
        rows += got
    rows.sort(key=_target_key)
    print()
    print(f"benchmarks{' (quick: a smoke run, not the targets)' if args.quick else ''}, ended "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; "
          f"{'; '.join(timings)}; JSON in {outdir}")
    print(table(rows), flush=True)
    if failed:
        return 2
    return 0 if all(r.get("met") is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
