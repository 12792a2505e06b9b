"""``make chaos``, short: every fault of sim/chaos.py at once, for 100 s of traffic, with a
fixed seed, the platform deduplicating by Idempotency-Key and then not.

Each run starts redis-server (AOF), two supervised workers and beat as processes, the
fake Kubernetes API with three pods and the platform stub, and checks: exact totals per
tunnel, nothing undelivered, dead-lettered or unmerged, only documented and bounded keys,
one attempt per report on the wire at a time and none after its recorded delivery, every
fault-delayed report delivered within 60 s + REPORT_INTERVAL of its fault's end (each wait
between that, its own attempts the platform failed at random, and its delivery), every worker processing a task within 30 s of Redis coming back; with deduplication off, every
duplicate the platform billed follows a lost answer.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED = 7
SECONDS = 100


@pytest.mark.slow
@pytest.mark.parametrize("dedupe", ["on", "off"])
def test_chaos_short(dedupe, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sim.chaos", "--seed", str(SEED), "--seconds", str(SECONDS), "--dedupe", dedupe,
         "--drain", "150", "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, out[-8000:]
    head = "exact" if dedupe == "on" else r"exact \(platform dedup off\)"
    assert re.match(rf"chaos: {head}; 3 pods, [\d,]+ lines, \d+ intervals, \d+ worker kills \(\d+ worker exits, "
                    rf"\d+ not ours\), 1 redis kill, [\d,]+ platform faults, ", last), last
    assert last.endswith(("0 lost, 0 double-counted",)), last
    # Every worker processed a task after the Redis restart (the run fails otherwise).
    assert len(re.findall(r"after the Redis restart at [\d.]+s, w\d processed a task after [\d.]+s", out)) == 2, out
    assert "PROBLEM" not in out
