"""The platform stub as a process of its own, for the benchmarks (bench/harness.py).

``python bench/stub.py PORT DELAY RECORDS STATS SECRET``: serves sim.platform_stub with
``delay`` seconds per accepted report, appends one JSON line per accepted report to
RECORDS (``t``: when the request arrived, ``key``, ``sub``, ``bi``, ``bo``, ``rq``,
``status``) and, on SIGTERM, writes its counters to STATS.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim.platform_stub import PlatformStub, Record  # noqa: E402


def main() -> int:
    port, delay, records, stats, secret = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    out = open(records, "a", buffering=1 << 16)  # noqa: SIM115 - closed at exit
    lock = threading.Lock()

    def on_record(rec: Record) -> None:
        line = json.dumps({"t": rec.received_at, "key": rec.key, "sub": rec.subdomain, "bi": rec.bytes_in,
                           "bo": rec.bytes_out, "rq": rec.requests, "status": rec.status}, separators=(",", ":"))
        with lock:
            out.write(line + "\n")

    stub = PlatformStub(secret=secret, port=port, on_record=on_record)
    stub.delay = delay
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    stub.start()
    print(f"listening on {stub.url}", flush=True)
    while not stopped.wait(0.2):
        with lock:
            out.flush()
    stub.stop()
    attempts = stub.attempts
    outcomes: dict[str, int] = {}
    for a in attempts:
        outcomes[a.outcome] = outcomes.get(a.outcome, 0) + 1
    with lock:
        out.close()
    Path(stats).write_text(json.dumps({"attempts": len(attempts), "outcomes": outcomes,
                                       "connections": stub.connections_opened,
                                       "deduped": stub.duplicates_deduped}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
