"""What a worker tells its lease keeper it holds (``workers/report.py``): the report
messages it has received and not finished (prefetched, running, or waiting for a retry's
countdown), read from Celery's worker state; nothing else. ``app.celery`` reads the
settings when imported, so this runs in a subprocess with a known environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import json
from celery.worker import state
from workers.report import held_reports, report_key_of

class Req:  # a received task message, as far as the keeper looks (weakly referenced)
    def __init__(self, name, args):
        self.name, self.args = name, args


report = "workers.report.report"
reqs = {
    "reserved": Req(name=report, args=[1795485000, "alpha"]),
    "active": Req(name=report, args=[1795485060, "bravo-2"]),
    "scheduled": Req(name=report, args=(1795485000, "charlie")),
    "fetch": Req(name="workers.fetch.fetch", args=["traefik-0", "uid"]),
    "bad_sub": Req(name=report, args=[1795485000, "Not:A:Sub"]),
    "bad_args": Req(name=report, args=[1795485000]),
}
state.reserved_requests.add(reqs["reserved"])
state.reserved_requests.add(reqs["fetch"])
state.reserved_requests.add(reqs["bad_sub"])
state.active_requests.add(reqs["active"])
state.active_requests.add(reqs["reserved"])  # running: in both sets
state.scheduled_requests.add(reqs["scheduled"])
state.scheduled_requests.add(reqs["bad_args"])
print(json.dumps({
    "held": [str(k) for k in held_reports()],
    "one": str(report_key_of(reqs["scheduled"])),
    "none": [report_key_of(reqs[n]) for n in ("fetch", "bad_sub", "bad_args")],
}))
"""


def test_held_reports_are_the_report_messages_received_and_not_finished():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REPORT_", "PLATFORM_", "REDIS_", "CELERY_"))}
    env.update({"PLATFORM_INTERNAL_SECRET": "x", "PYTHONPATH": str(ROOT)})
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["held"] == ["1795485000:alpha", "1795485000:charlie", "1795485060:bravo-2"]
    assert got["one"] == "1795485000:charlie"
    assert got["none"] == [None, None, None]
