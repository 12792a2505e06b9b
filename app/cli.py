"""``traefik-metrics-scraper`` (also ``python -m app``): the commands beside the workers.

Exit statuses, for every command: 0 done, 1 failed (Redis unreachable, not a dead
letter, already initialised), 2 usage or configuration error (argparse's own errors,
a bad environment variable, an unreadable file).

Each command imports only what it needs: ``scan`` loads neither Celery nor the
Kubernetes client, so it stays the quickest way to check a log by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from app import scan
from app.model import MAX_EPOCH_NS, parse_time_ns, whole_number

EPILOG = "Workers and beat: celery -A app worker -Q fetch,report ; celery -A app beat"
MAX_TIMEOUT = 3600  # check --timeout: a larger one overflows the sockets' time_t at 1e10 s


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per command, each with its own ``--help``."""
    ap = argparse.ArgumentParser(
        prog="traefik-metrics-scraper",
        description="Meters tunnel traffic from Traefik access logs. Exit status: 0 done, "
        "1 failed, 2 usage or configuration error.",
        epilog=EPILOG,
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("scan", help="sum a Traefik access log per tunnel", description=scan.DESCRIPTION)
    scan.add_arguments(p)
    p.set_defaults(run=scan.run)

    p = sub.add_parser("init-ledger", help="create the ledger's initialisation record",
                       description="Create the ledger's initialisation record: log lines before "
                       "--start-at (default: START_AT, else now) are never counted.")
    p.add_argument("--start-at", type=_parse_time, help="ISO 8601 time with a zone")
    p.add_argument("--force", action="store_true",
                   help="replace an existing record (counting from its start unless --start-at or START_AT is given), "
                   "e.g. to change REPORT_INTERVAL or SCRAPER_ID once no report is waiting or dead-lettered")
    p.set_defaults(run=init_ledger)

    p = sub.add_parser("status", help="pipeline counters, gaps, reports waiting",
                       description="Print the pipeline's counters, recent gaps, reports waiting and cursors.")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=status)

    p = sub.add_parser("deadletters", help="list reports parked in the dead-letter store",
                       description="List reports parked in the dead-letter store, with their reasons; "
                       "`replay` sends them again, `write-off` settles one the platform will never take.")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(run=deadletters)

    p = sub.add_parser("replay", help="send dead letters again (same idempotency keys)",
                       description="Send dead letters again, with their original idempotency keys. "
                       "Exit status 1 when a KEY is not a dead letter, 2 when it names no report (its subdomain "
                       "not a tunnel's, an Idempotency-Key's start not an interval start).")
    p.add_argument("--all", action="store_true", help="every dead letter")
    p.add_argument("keys", nargs="*", metavar="KEY", help="<interval start>:<subdomain>, as deadletters lists, or the report's "
                   "Idempotency-Key as the platform got it")
    p.set_defaults(run=replay)

    p = sub.add_parser("write-off", help="write off dead letters the platform will never take (audited)",
                       description="Write off dead letters the platform will never take (a tunnel deleted since, "
                       "a 4xx that no retry changes): each KEY's report leaves the dead-letter store and is never "
                       "sent, and an audit record keeps, for good, its amounts, its Idempotency-Key, the dead "
                       "letter's reason, --reason and --by (`write-off --list`). Exit status 1 when a KEY is not "
                       "a dead letter the platform refused, an unknown report included (it is left as it is, the "
                       "other KEYs are written off); 2 when a KEY is malformed (then none is written off), --reason "
                       "is missing, the ledger is not initialised or does not record its REPORT_INTERVAL and "
                       "SCRAPER_ID, or this environment's are not the ledger's.")
    p.add_argument("keys", nargs="*", metavar="KEY", help="<interval start>:<subdomain>, as deadletters lists, or the "
                   "report's Idempotency-Key as the platform got it")
    p.add_argument("--reason", help="why these reports are not billed (required with KEYs; kept in the audit record)")
    p.add_argument("--by", help="who decided (default: the login name, or 'uid N' when it is unfit for the record)")
    p.add_argument("--any-reason", action="store_true",
                   help="also write off dead letters a replay may still deliver: made by REPORT_MAX_AGE (an attempt "
                   "may have reached the platform) or refused for this side's configuration (HTTP 401, 403, a "
                   "redirect); by default only those the platform refused for good (another 4xx)")
    p.add_argument("--list", action="store_true", help="list the write-offs recorded so far instead")
    p.add_argument("--json", action="store_true", help="with --list: print a JSON list")
    p.set_defaults(run=write_off)

    p = sub.add_parser("metrics", help="serve Prometheus metrics read from the ledger",
                       description="Serve the pipeline's counters (kept in Redis) as Prometheus metrics.")
    p.add_argument("--port", type=_port, default=9108, help="TCP port (default %(default)s)")
    p.add_argument("--addr", default="0.0.0.0", help="address to listen on (default %(default)s)")
    p.set_defaults(run=metrics)

    p = sub.add_parser("check", help="check, without sending traffic, that this deployment can meter",
                       description="Check, without sending traffic, that this deployment can meter: Redis and "
                       "its durability settings; with LOG_SOURCE=kubernetes (the default) the Kubernetes "
                       "permissions (SelfSubjectAccessReview), the Traefik pods and the newest lines of one, "
                       "with LOG_SOURCE=file the files LOG_FILES matches and the newest lines of the newest "
                       "one (JSON access lines for TUNNEL_DOMAIN); the platform's address, and whether "
                       "PLATFORM_INTERNAL_SECRET is set (a WARN when not: report workers need it). One line "
                       "per check with what to do; exit status 1 when one fails.")
    p.add_argument("--lines", type=_count, default=200,
                   help="newest log lines of a pod (or of the newest file) to look at (default %(default)s)")
    p.add_argument("--timeout", type=_seconds, default=5.0,
                   help=f"seconds for each connection, above 0 and at most {MAX_TIMEOUT} (default %(default)s)")
    p.add_argument("--skip", action="append", choices=("kubernetes", "platform"), default=[],
                   help="checks this pod cannot make (repeatable): the manifests' NetworkPolicy lets only the "
                   "report workers reach the platform and only the fetch workers the Kubernetes API, so run "
                   "'check --skip platform' in worker-fetch and 'check --skip kubernetes' in worker-report")
    p.set_defaults(run=check)

    p = sub.add_parser("watch", help="watch the Traefik pods; read a terminating pod until it is gone",
                       description="Watch the Traefik pods and read a terminating pod at once, every "
                       "TERMINATING_READ_INTERVAL while it drains, and once more when its container "
                       "terminated; record a gap when a pod vanished unread. One replica leads (a Redis "
                       "lease), the others wait. Runs until SIGTERM; keeps HEALTH_DIR/watcher valid "
                       "for a liveness probe while it runs.")
    p.set_defaults(run=watch)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (see the module docstring)."""
    ap = build_parser()
    try:
        args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # --help (0) or a usage error already printed (2)
        return exc.code if isinstance(exc.code, int) else 2
    if args.run is scan.run:
        return scan.run(args)
    import redis
    from kombu.exceptions import OperationalError

    try:
        return args.run(args)
    except redis.RedisError as e:
        # redis-py's messages name the host and port, never the password.
        print(f"traefik-metrics-scraper {args.command}: Redis: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
        return 1
    except OperationalError as e:
        # The broker (CELERY_BROKER_URL) is unreachable; kombu's text names host and port.
        print(f"traefik-metrics-scraper {args.command}: broker: {str(e)[:200]}; reports already claimed "
              "are sent again by the sweep once their lease runs out", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _ledger():
    from app import runtime
    from app.settings import settings_or_exit

    settings_or_exit()
    return runtime.ledger()


def _parse_time(value: str) -> int:
    """``--start-at``: nanoseconds since the epoch (``app.model.parse_time_ns``)."""
    try:
        return parse_time_ns(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _port(value: str) -> int:
    port = whole_number(value)
    if port is None or not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {value[:80]!r}")
    return port


def _seconds(value: str) -> float:
    """A connection timeout: a finite number of seconds above 0 (0 would make the sockets
    non-blocking), at most MAX_TIMEOUT."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT:  # nan compares false: refused too
        raise argparse.ArgumentTypeError(f"not a number of seconds above 0 and at most {MAX_TIMEOUT}: {value[:80]!r}")
    return seconds


MAX_LINES = 1_000_000  # check --lines: the Kubernetes source sends it as tailLines (an int64)


def _count(value: str) -> int:
    """A number of lines: a whole number from 1 to MAX_LINES."""
    count = whole_number(value)
    if count is None or not 1 <= count <= MAX_LINES:
        raise argparse.ArgumentTypeError(f"not a whole number from 1 to {MAX_LINES:,}: {value[:80]!r}")
    return count


def _report_key(value: str):
    from app.model import ReportKey

    try:
        return ReportKey.parse(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def init_ledger(a: argparse.Namespace) -> int:
    from app.ledger import IDENTITY, ReportsWaiting
    from app.settings import settings_or_exit

    s = settings_or_exit()
    start = a.start_at
    if start is None and s.start_at is not None:
        start = s.start_at_ns
    ledger = _ledger()
    record = ledger.init_record() if a.force else None
    if record is not None:
        if start is None:  # keep counting from where this ledger did: lines not yet read stay billable
            start = int(record["start_at_ns"])
        # A record without them (an earlier version's) says nothing of what its reports were
        # made under: taken as a change.
        changed = [f"{IDENTITY[name]} {record.get(name, '(not recorded)')!r} -> {new!r}"
                   for name, new in ledger.identity(s.scraper_id).items() if record.get(name) != new]
    else:
        changed = []
    try:
        # Changed, the check for reports not final and the write are one transaction.
        made = ledger.initialise(start, force=a.force, scraper_id=s.scraper_id, idle_only=bool(changed))
    except ReportsWaiting as e:
        print(f"not changing {', '.join(changed)}: {e} were made under the old value and would go out under new "
              "Idempotency-Keys; deliver or replay them first, or write off the dead letters the platform will never "
              "take (`status`, `deadletters`, `replay`, `write-off`)", file=sys.stderr)
        return 1
    if made:
        print(f"ledger initialised under prefix {s.redis_key_prefix!r}; counting from {_when(ledger.start_at_ns())}; "
              f"reports made with REPORT_INTERVAL={s.report_interval} and SCRAPER_ID={s.scraper_id!r}")
    else:
        print(f"the ledger is already initialised (counting from {_when(ledger.start_at_ns())}); use --force to "
              "replace it", file=sys.stderr)
    ahead = _start_ahead(ledger, "START_AT" if a.start_at is None and s.start_at is not None else "--start-at")
    if ahead:
        print(f"warning: {ahead}", file=sys.stderr)
    return 0 if made else 1


def _start_ahead(ledger, source: str) -> str | None:
    """What to say when the ledger counts from a time still ahead (Redis time), or None;
    ``source``: where that time came from (``--start-at`` or ``START_AT``)."""
    start = ledger.start_ahead_ns()
    if start is None:
        return None
    return (f"counting starts in the future ({_when(start)}): lines logged before then are never billed (the "
            "fetch workers skip them and move their cursors past them); if that time is a mistake, run "
            f"`init-ledger --force` with the right {source} before starting the workers")


def status(a: argparse.Namespace) -> int:
    ledger = _ledger()
    doc = {
        "initialised": ledger.init_record(),
        "counters": ledger.stats(),
        "reports_waiting": ledger.due_count(),
        "dead_letters": len(ledger.dead_letters()),
        "written_off": ledger.write_off_count(),
        "gaps": ledger.gaps()[:20],
        "cursors": ledger.cursors(),
        # per tunnel, upgraded connections (WebSocket...) counted with 0 bytes since the start
        "unmetered": ledger.unmetered(),
    }
    if a.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    start_at = ledger.start_at_ns()
    print(f"counting from: {'not initialised' if start_at is None else _when(start_at)}")
    for key, value in doc.items():
        if key == "gaps":
            print(f"gaps: {len(value)} shown (newest first)")
            for g in value:
                print(f"  {g.get('pod')} {_when(g.get('from_ns'))} .. {_when(g.get('to_ns'))}: {g.get('reason')}")
            continue
        print(f"{key}: {json.dumps(value, sort_keys=True)}")
    return 0


def _when(t_ns: int | None) -> str:
    """A time in ns since the epoch as UTC ISO 8601 with the ns, and the number itself."""
    from app.fetching import fmt_ns

    return "?" if t_ns is None else f"{fmt_ns(t_ns)} ({t_ns} ns)"


def deadletters(a: argparse.Namespace) -> int:
    from app.ledger import iso
    from app.reporting import idempotency_key
    from app.settings import settings_or_exit

    s = settings_or_exit()
    ledger = _ledger()
    reports = ledger.dead_letters()
    if a.json:
        # The keys they were sent under: the ledger's values, whatever this environment's are (a review).
        record = ledger.init_record() or {}
        sid, ri = record.get("scraper_id", s.scraper_id), int(record.get("report_interval", s.report_interval))
        # A start off the grid: an earlier REPORT_INTERVAL's report, whose key is not known here ("").
        print(json.dumps([{**r.__dict__, "key": str(r.key), "interval": iso(r.start),
                           "idempotency_key": "" if r.start % ri else idempotency_key(sid, r.start, ri, r.key.name)}
                          for r in reports], indent=2))
        return 0
    if not reports:
        print("no dead letters")
        return 0
    print(f"{'KEY':<28} {'INTERVAL':<21} {'SUBDOMAIN':<24} {'IN':>12} {'OUT':>12} {'REQ':>7} {'TRIES':>5}  REASON")
    for r in reports:
        print(f"{str(r.key):<28} {iso(r.start):<21} {r.subdomain:<24} {r.bytes_in:>12} {r.bytes_out:>12} "
              f"{r.requests:>7} {r.attempts:>5}  {_printable(r.reason)}")
    return 0


def replay(a: argparse.Namespace) -> int:
    if bool(a.all) == bool(a.keys):
        print("traefik-metrics-scraper replay: give --all or KEYs", file=sys.stderr)
        return 2
    from app.settings import settings_or_exit

    s = settings_or_exit()
    try:
        wanted = None if a.all else [_replay_key(k, s.scraper_id, s.report_interval) for k in a.keys]
    except (argparse.ArgumentTypeError, ValueError) as e:
        print(f"traefik-metrics-scraper replay: {e}", file=sys.stderr)
        return 2
    ledger = _ledger()
    from app.celery import app as celery_app
    from app.queues import REPORT_TASK, Queue

    keys = [r.key for r in ledger.dead_letters()] if wanted is None else wanted
    revived = [k for k in keys if ledger.revive(k)]
    missing = sorted(set(keys) - set(revived))
    claimed = ledger.claim(revived, s.lease_seconds)
    for key in claimed:
        celery_app.send_task(REPORT_TASK, (key.start, key.name), queue=Queue.REPORT)
    print(f"replayed {len(claimed)} report(s)")
    for k in missing:
        print(f"not a dead letter: {str(k)[:120]}{_off_grid_hint(k, s.report_interval)}", file=sys.stderr)
    return 1 if missing else 0


MAX_REASON = 500  # characters of a write-off's --reason or --by
WRITE_OFF_AMOUNTS = ("bytes_in", "bytes_out", "requests", "unmetered", "attempts")  # whole numbers ("" if lost)
WRITE_OFF_TIMES = ("sealed_at", "dead_at", "written_off_at")  # unix s, Redis time ("" if not recorded)


def write_off(a: argparse.Namespace) -> int:
    usage = _write_off_usage(a)
    if usage:
        print(f"traefik-metrics-scraper write-off: {usage}", file=sys.stderr)
        return 2
    if a.list:
        return _list_write_offs(a.json)
    from app.ledger import iso
    from app.reporting import idempotency_key
    from app.settings import settings_or_exit

    s = settings_or_exit()
    try:
        keys = list(dict.fromkeys(_replay_key(k, s.scraper_id, s.report_interval) for k in a.keys))
    except (argparse.ArgumentTypeError, ValueError) as e:
        print(f"traefik-metrics-scraper write-off: {e}", file=sys.stderr)
        return 2
    ledger = _ledger()
    problem = _write_off_identity_problem(ledger, s.scraper_id)
    if problem is not None:
        print(f"traefik-metrics-scraper write-off: {problem}", file=sys.stderr)
        return 2
    by = a.by.strip() if a.by is not None else _login()
    written = 0
    for key in keys:
        # A start off this REPORT_INTERVAL's grid: a dead letter of an earlier one, whose key is not known here.
        idem = "" if key.start % s.report_interval else idempotency_key(s.scraper_id, key.start, s.report_interval,
                                                                         key.name)
        outcome, entry = ledger.write_off(key, a.reason.strip(), by, s.report_retention, idem,
                                          refused_only=not a.any_reason)
        if entry is not None:
            written += 1
            print(f"written off {key} ({iso(key.start)} {key.name}): {entry['bytes_in'] or '?'} bytes in, "
                  f"{entry['bytes_out'] or '?'} bytes out, {entry['requests'] or '?'} requests; dead-lettered for: "
                  f"{_printable(entry['dead_reason'][:160])}"
                  + (f"; its start is off the REPORT_INTERVAL={s.report_interval} grid (an earlier interval's "
                     "report): its Idempotency-Key is recorded as unknown" if not idem else ""))
        elif outcome == "not_refused":
            rep = ledger.report(key)
            print(f"not written off: {key} was not refused for good ({_printable((rep.reason if rep else '')[:120])}): "
                  "a replay may still deliver it once the cause is fixed; replay it, or give --any-reason to write "
                  "it off anyway", file=sys.stderr)
        else:
            rep = ledger.report(key)
            state = "no such report" if rep is None else rep.state.value
            stale = "; its stale entry in the dead-letter store was removed" if outcome == "stale" else ""
            print(f"not a dead letter: {str(key)[:120]} ({state}{stale}){_off_grid_hint(key, s.report_interval)}",
                  file=sys.stderr)
    print(f"wrote off {written} report(s)")
    return 0 if written == len(keys) else 1


def _write_off_usage(a: argparse.Namespace) -> str | None:
    """What is wrong with ``write-off``'s arguments, or None."""
    if a.list:
        given = a.keys or a.reason is not None or a.by is not None or a.any_reason
        return "--list takes no KEY, --reason, --by or --any-reason" if given else None
    if a.json:
        return "--json goes with --list"
    if not a.keys:
        return "give the KEYs of the dead letters to write off, with --reason (or --list)"
    for name, value in (("--reason", a.reason), ("--by", a.by)):
        if value is not None and not _audit_text(value):
            return f"{name} must be one line of printable text, at most {MAX_REASON} characters"
    if a.reason is None:
        return "--reason is required: say why these reports are not billed (it is kept in the audit record)"
    return None


def _audit_text(value: str) -> bool:
    """Whether ``value`` may go into an audit record: one line of printable text, not
    blank, at most ``MAX_REASON`` characters once stripped."""
    text = value.strip()
    return bool(text) and len(text) <= MAX_REASON and text.isprintable()


def _login() -> str:
    """The login name for ``--by``'s default, when it is fit for the audit record."""
    import getpass

    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no LOGNAME/USER and no passwd entry for this uid (a container)
        name = ""
    return name.strip() if _audit_text(name) else f"uid {os.getuid()}"


def _write_off_identity_problem(ledger, scraper_id: str) -> str | None:
    """Why ``write-off`` must not run on this ledger, or None: the audit record keeps each
    report's Idempotency-Key, built from this process's REPORT_INTERVAL and SCRAPER_ID,
    which must be those the ledger records its reports under."""
    from app.ledger import IDENTITY

    record = ledger.init_record()
    if record is None:
        return (f"the ledger under prefix {ledger.p!r} is not initialised (or lost its initialisation record): "
                "nothing says which REPORT_INTERVAL and SCRAPER_ID its reports were made under")
    if any(name not in record for name in IDENTITY):
        return (f"the ledger under prefix {ledger.p!r} does not record the REPORT_INTERVAL and SCRAPER_ID its "
                "reports were made under (an earlier version made it): start a worker or beat of this version "
                "once, which records them, then write off")
    return ledger.identity_problem(record, scraper_id, adopt=False,
                                   consequence="the audit record would not carry the reports' Idempotency-Keys")


def _printable(text: str) -> str:
    """``text`` with every character that is not printable escaped (a platform's error
    body, a name from the environment), so it cannot move the cursor or forge a line."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _off_grid_hint(key, interval: int) -> str:
    """For a key whose start is not an interval start of ``interval``: a hint saying so."""
    return f" (nor an interval start of REPORT_INTERVAL={interval})" if key.start % interval else ""


def _list_write_offs(as_json: bool) -> int:
    from app.ledger import iso
    from app.model import ReportKey

    entries = _ledger().write_offs()
    if as_json:
        for e in entries:
            e.update({k: int(e[k]) if e.get(k) else None for k in WRITE_OFF_AMOUNTS})
            e.update({k: float(e[k]) if e.get(k) else None for k in WRITE_OFF_TIMES})
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print("no write-offs")
        return 0
    print(f"{'WRITTEN OFF':<21} {'KEY':<40} {'INTERVAL':<21} {'IN':>12} {'OUT':>12} {'REQ':>7}  BY: REASON")
    for e in entries:
        at = iso(int(float(e["written_off_at"])))
        start = iso(ReportKey.parse(e["key"]).start)
        print(f"{at:<21} {e['key']:<40} {start:<21} {e['bytes_in'] or '?':>12} {e['bytes_out'] or '?':>12} "
              f"{e['requests'] or '?':>7}  {_printable(e['by'])}: {_printable(e['reason'])}")
    return 0


def _replay_key(text: str, scraper_id: str, interval: int):
    """The ReportKey a replay KEY names (either form), or ValueError saying why it names
    no report of this ledger: its subdomain is not one a report can have, or (an
    Idempotency-Key) its start is not an interval start."""
    from app.ledger import valid_subdomain
    from app.reporting import report_key_of

    key = _report_key(text) if "/" not in text else report_key_of(text, scraper_id, interval)
    problems = []
    # An Idempotency-Key carries its interval (report_key_of holds it to REPORT_INTERVAL);
    # a START:SUBDOMAIN may be a dead letter of an earlier REPORT_INTERVAL, so it is looked up.
    if "/" in text and key.start % interval:
        problems.append(f"{key.start} is not an interval start (a multiple of REPORT_INTERVAL={interval})")
    if key.start > MAX_EPOCH_NS // 1_000_000_000:  # no interval of this ledger starts then
        problems.append(f"{str(key.start)[:40]} is not an interval start (unix seconds before 2262-04-11)")
    if not valid_subdomain(key.subdomain):
        problems.append(f"{key.subdomain[:80]!r} is not a tunnel subdomain (one DNS label of a-z, 0-9 and -)")
    if problems:
        raise ValueError(f"not a report key of this ledger: {text[:120]!r}: {'; '.join(problems)}")
    return key


def metrics(a: argparse.Namespace) -> int:
    import time

    from prometheus_client import start_http_server
    from prometheus_client.core import REGISTRY

    from app import logs
    from app.metrics import LedgerCollector
    from app.settings import settings_or_exit

    logs.configure(settings_or_exit())  # LOG_FORMAT for the exporter's own records
    REGISTRY.register(LedgerCollector(_ledger()))
    host = f"[{a.addr}]" if ":" in a.addr else a.addr  # an IPv6 address, in a URL
    try:
        start_http_server(a.port, addr=a.addr)
    except (OSError, UnicodeError) as e:  # UnicodeError: a host name IDNA cannot encode (a label over 63)
        print(f"traefik-metrics-scraper metrics: cannot listen on {host[:80]}:{a.port}: {e}", file=sys.stderr)
        # An --addr that names no address of this host is a usage error; a port in use or
        # not allowed is a failure.
        import errno
        import socket

        bad_addr = isinstance(e, UnicodeError | socket.gaierror) or e.errno == errno.EADDRNOTAVAIL
        return 2 if bad_addr else 1
    print(f"serving metrics on http://{host}:{a.port}/metrics", flush=True)
    while True:
        time.sleep(3600)


def watch(a: argparse.Namespace) -> int:
    import signal
    import threading

    from app import logs
    from app import watch as pod_watch
    from app.settings import settings_or_exit

    s = settings_or_exit()
    logs.configure(s)  # LOG_LEVEL and LOG_FORMAT, secrets masked
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return pod_watch.run(stop, health_dir=s.health_dir)


def check(a: argparse.Namespace) -> int:
    from app import check as checks

    return checks.run(a)
