"""``traefik-metrics-scraper`` (also ``python -m app``): the commands beside the workers.

Each command imports only what it needs: ``scan`` loads neither Celery nor the
Kubernetes client, so it stays the quickest way to check a log by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

USAGE = """traefik-metrics-scraper COMMAND [ARGS]

commands:
  scan [FILE ...|-] [--json] [--domain D]   sum a Traefik access log per tunnel
  init-ledger [--start-at TIME] [--force]   create the ledger's initialisation record
  status [--json]                           pipeline counters, gaps, reports waiting
  deadletters [--json]                      list reports parked in the dead-letter store
  replay (--all | KEY ...)                  send dead letters again (same idempotency keys)
  metrics [--port 9108] [--addr 0.0.0.0]   serve Prometheus metrics read from the ledger

Workers and beat: celery -A app worker -Q fetch,report ; celery -A app beat
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd == "scan":
        from app.scan import main as scan_main

        return scan_main(rest)
    commands = {"init-ledger": init_ledger, "status": status, "deadletters": deadletters, "replay": replay,
                "metrics": metrics}
    if cmd not in commands:
        print(f"traefik-metrics-scraper: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return commands[cmd](rest)


def _ledger():
    from app import runtime
    from app.settings import settings_or_exit

    settings_or_exit()
    return runtime.ledger()


def _parse_time(value: str) -> int:
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError("give a zone, e.g. 2026-11-24T00:00:00Z")
    return int(when.astimezone(UTC).timestamp() * 1_000_000_000)


def init_ledger(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="traefik-metrics-scraper init-ledger",
                                description="Create the ledger's initialisation record: log lines before "
                                "--start-at (default: START_AT, else now) are never counted.")
    p.add_argument("--start-at", type=_parse_time, help="ISO 8601 time with a zone")
    p.add_argument("--force", action="store_true", help="replace an existing record (after Redis lost its data)")
    a = p.parse_args(argv)
    from app.settings import settings_or_exit

    s = settings_or_exit()
    start = a.start_at
    if start is None and s.start_at is not None:
        start = int(s.start_at.timestamp() * 1_000_000_000)
    ledger = _ledger()
    if ledger.initialise(start, force=a.force):
        print(f"ledger initialised under prefix {s.redis_key_prefix!r}; counting from {ledger.start_at_ns()} ns")
        return 0
    print(f"the ledger is already initialised (start_at_ns={ledger.start_at_ns()}); use --force to replace it",
          file=sys.stderr)
    return 1


def status(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="traefik-metrics-scraper status")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    ledger = _ledger()
    doc = {
        "initialised": ledger.init_record(),
        "counters": ledger.stats(),
        "reports_waiting": ledger.due_count(),
        "dead_letters": len(ledger.dead_letters()),
        "gaps": ledger.gaps()[:20],
        "cursors": ledger.cursors(),
    }
    if a.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        for key, value in doc.items():
            print(f"{key}: {json.dumps(value, sort_keys=True)}")
    return 0


def deadletters(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="traefik-metrics-scraper deadletters")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    from app.ledger import iso

    reports = _ledger().dead_letters()
    if a.json:
        print(json.dumps([{**r.__dict__, "key": r.member, "interval": iso(r.start)} for r in reports], indent=2))
        return 0
    if not reports:
        print("no dead letters")
        return 0
    print(f"{'KEY':<28} {'INTERVAL':<21} {'SUBDOMAIN':<24} {'IN':>12} {'OUT':>12} {'REQ':>7} {'TRIES':>5}  REASON")
    for r in reports:
        print(f"{r.member:<28} {iso(r.start):<21} {r.subdomain:<24} {r.bytes_in:>12} {r.bytes_out:>12} "
              f"{r.requests:>7} {r.attempts:>5}  {r.reason}")
    return 0


def replay(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="traefik-metrics-scraper replay",
                                description="Send dead letters again, with their original idempotency keys.")
    p.add_argument("--all", action="store_true")
    p.add_argument("keys", nargs="*", metavar="KEY", help="<interval start>:<subdomain>, as deadletters lists")
    a = p.parse_args(argv)
    if bool(a.all) == bool(a.keys):
        p.error("give --all or KEYs")
    ledger = _ledger()
    from app.runtime import settings
    from workers.report import enqueue_reports

    keys = [r.member for r in ledger.dead_letters()] if a.all else a.keys
    revived = [k for k in keys if ledger.revive(k)]
    missing = sorted(set(keys) - set(revived))
    claimed = ledger.claim(revived, settings().lease_seconds)
    enqueue_reports(claimed)
    print(f"replayed {len(claimed)} report(s)")
    for k in missing:
        print(f"not a dead letter: {k}", file=sys.stderr)
    return 1 if missing else 0


def metrics(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="traefik-metrics-scraper metrics",
                                description="Serve the pipeline's counters (kept in Redis) as Prometheus metrics.")
    p.add_argument("--port", type=int, default=9108)
    p.add_argument("--addr", default="0.0.0.0")
    a = p.parse_args(argv)
    import time

    from prometheus_client import start_http_server
    from prometheus_client.core import REGISTRY

    from app.metrics import LedgerCollector

    REGISTRY.register(LedgerCollector(_ledger()))
    start_http_server(a.port, addr=a.addr)
    print(f"serving metrics on http://{a.addr}:{a.port}/metrics", flush=True)
    while True:
        time.sleep(3600)
