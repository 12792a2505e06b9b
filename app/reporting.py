"""Delivering one (interval, subdomain) report to the platform, idempotently.

Every attempt of the same report sends the same body and the same
``Idempotency-Key: <SCRAPER_ID>:<interval start>/<interval seconds>:<subdomain>``; an
amendment (late lines of a sealed interval, ``commit.lua``) is a report of its own with
the same ``timestamp`` and the key ``...:<subdomain>:a<n>``.
A report marked delivered is never sent again, and a per-report lock keeps two
copies of it (a redelivered message, a sweep re-enqueue) off the wire at once.

Failures that may pass are retried by Celery a bounded number of times, with
backoff and full jitter, honouring ``Retry-After``; then the report is parked in the
due set with its next attempt time and the sweep re-enqueues it. So workers hold a
bounded number of waiting retry messages however long the platform is down. The
first success after that makes every parked report claimable at once (``wake.lua``):
a platform that answers again gets its backlog within a sweep, not after the parked
reports' backoff. When nothing has succeeded for ``REPORT_PROBE_INTERVAL`` since the
last park, the sweep sends one parked report, one attempt, as a probe (``probe.lua``).
A report older than ``REPORT_MAX_AGE``, or one the platform rejects
(3xx, 4xx but 408, 409, 425, 429), goes to the dead-letter store with its reason.

A delivery the platform confirmed is recorded even through a Redis restart: the
attempt keeps trying to record it while it holds the send lock (no other copy can go
on the wire meanwhile), so a Redis outage of a few seconds does not make the report go
out twice. ``LeaseKeeper`` runs in each worker's main process and renews the leases of
the reports whose messages the worker holds, so that those of a worker that died are
sent again within ``REPORT_HOLD_LEASE`` (docs/design.md, "Failure model").
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from app.errors import PlatformRejected, PlatformRetryable
from app.ledger import Ledger, Report, iso, valid_subdomain
from app.model import ReportKey, ReportOutcome, ReportState
from app.platform import PlatformClient
from app.settings import Settings

log = logging.getLogger(__name__)

BASE_DELAY = 1.0  # seconds, first automatic retry (before jitter)
# Seconds the lease keeper waits after a message arrives, so that the messages of a burst
# have their leases renewed by one script call: at a few hundred reports a second, one
# call each cost a tenth of a report worker's CPU.
NOTE_BATCH = 0.1


@dataclass(frozen=True)
class Outcome:
    action: ReportOutcome
    countdown: float = 0.0
    detail: str = ""


_ISO_LEN = len("2026-01-01T00:00:00Z")  # an interval's start as idempotency_key writes it (iso)


def idempotency_key(scraper_id: str, start: int, interval: int, sub: str) -> str:
    """``<SCRAPER_ID>:<interval start, ISO>/<interval s>:<sub>``; ``sub`` is a report's
    ``ReportKey.name``, so an amendment's key ends in ``:a<n>``."""
    return f"{scraper_id}:{iso(start)}/{interval}:{sub}"


def report_key_of(idempotency: str, scraper_id: str, interval: int) -> ReportKey:
    """The report whose ``Idempotency-Key`` (``idempotency_key``) is ``idempotency``, as
    the platform's logs show it. Raises ``ValueError`` when it is not one, or is another
    scraper's (``SCRAPER_ID``) or of another ``REPORT_INTERVAL``: those name no report of
    this ledger."""
    head, sep, name = idempotency.rpartition(f"/{interval}:")  # a report name holds no "/"
    owner, colon, stamp = head[:-_ISO_LEN - 1], head[-_ISO_LEN - 1:-_ISO_LEN], head[-_ISO_LEN:]
    try:
        if not sep or not owner or colon != ":":
            raise ValueError
        start = int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())
    except ValueError:
        raise ValueError(f"neither a report key nor an Idempotency-Key of REPORT_INTERVAL={interval}: "
                         f"{idempotency[:120]!r}") from None
    if owner != scraper_id:
        raise ValueError(f"an Idempotency-Key of SCRAPER_ID={owner[:60]!r}, not of this scraper "
                         f"({scraper_id!r}): {idempotency[:120]!r}")
    return ReportKey.of(start, name)


def report_body(rep: Report, interval: int) -> dict:
    """The contract's body; ``timestamp`` is the interval's end, so retries send the same."""
    end = iso(rep.start + interval).replace("Z", "")
    return {
        "subdomain": rep.subdomain,
        "bytes_in": rep.bytes_in,
        "bytes_out": rep.bytes_out,
        "requests": rep.requests,
        "timestamp": end + ".000000",
    }


def backoff(attempt: int, cap: float) -> float:
    """Exponential backoff with jitter (attempt 0 -> 0.5-1 s), capped."""
    return random.uniform(0.5, 1.0) * min(cap, BASE_DELAY * (2 ** min(attempt, 30)))


class Reporter:
    def __init__(self, ledger: Ledger, client: PlatformClient, settings: Settings) -> None:
        self.ledger = ledger
        self.client = client
        self.s = settings

    def send(self, start: int, sub: str, retries: int) -> Outcome:
        """One attempt of one report. ``sub``: the report's ``ReportKey.name`` (the
        subdomain, or ``<subdomain>:a<n>`` for an amendment). ``retries``: Celery retries
        of this message so far.

        Two ledger round trips when it goes well: ``begin.lua`` (the send lock, the
        report, the attempt count) before the POST, ``finish.lua`` (the record, the
        counter, the lock released) after it."""
        try:
            key = ReportKey.of(start, sub)
        except ValueError:
            key = None
        if key is None or not valid_subdomain(key.subdomain):
            log.error("report: refusing invalid subdomain %r", sub[:80])
            return Outcome(ReportOutcome.NOOP, detail="invalid subdomain")
        token = uuid.uuid4().hex
        began = time.monotonic()
        lock_seconds = self.s.report_time_limit + 5
        status, rep = self.ledger.begin(key, token, lock_seconds, self.s.report_interval, self.s.scraper_id)
        if status == "identity":
            # Not under this process's key: left for a process started with the ledger's
            # values (the sweep sends it again once its lease lapses).
            log.error("report %s (%s): not sent: %s (docs/design.md, \"Changing REPORT_INTERVAL or SCRAPER_ID\")",
                      sub, iso(start), rep, extra={"tunnel": sub, "interval": iso(start), "outcome": "busy"})
            return Outcome(ReportOutcome.BUSY, detail=str(rep))
        if status == "busy":
            return Outcome(ReportOutcome.BUSY, detail="another copy is sending it")
        if not isinstance(rep, Report):  # final or unknown; begin.lua released the lock
            # Nothing to send: if it is still in `due` (an earlier version's park over a
            # finished report), take it out, or the sweep claims it for ever.
            self.ledger.drop_stale(key)
            detail = str(rep) if rep is not None else "no such report"
            log.info("report %s (%s): %s; nothing sent", sub, iso(start),
                     f"already {detail}" if rep is not None else detail,
                     extra={"tunnel": sub, "interval": iso(start), "outcome": "noop"})
            return Outcome(ReportOutcome.NOOP, detail=detail)
        # Until then no other copy can take the lock, and this attempt is within its own
        # deadline (the POST is bounded by the platform timeouts, PlatformClient.post):
        # the time to record a confirmed delivery through a Redis restart.
        record_until = began + min(lock_seconds, self.s.report_time_limit) - 1.0
        released = False
        try:
            idem = idempotency_key(self.s.scraper_id, start, self.s.report_interval, sub)
            try:
                done = self.client.post(report_body(rep, self.s.report_interval), idem)
            except PlatformRetryable as e:
                return self._retry_or_park(rep, retries, str(e), e.retry_after)
            except PlatformRejected as e:
                reason = f"rejected: {e}"
                if not self.ledger.dead_letter(key, reason):
                    return _finished_elsewhere(rep, reason)
                log.error("❌ %s (%s): %s; parked in the dead-letter store", sub, iso(start), reason,
                          extra={"tunnel": sub, "interval": iso(start), "outcome": "dead"})
                return Outcome(ReportOutcome.DEAD, detail=reason)
            parked = self._record_delivered(key, ReportState(done.outcome), done.user_id, record_until, token)
            released = True
            if parked:
                self._wake_parked()
            if done.note:
                log.warning("report %s (%s): HTTP %d, %s; taken as delivered", sub, iso(start), done.status, done.note)
            if done.outcome == ReportOutcome.SKIPPED:
                log.info("⏭️ %s: ↓%dB ↑%dB (%dreq) skipped by the platform: %s", sub, rep.bytes_in, rep.bytes_out, rep.requests, done.note,
                         extra={"tunnel": sub, "interval": iso(start), "outcome": "skipped"})
            else:
                log.info("✅ %s: ↓%dB ↑%dB (%dreq) → User:%s", sub, rep.bytes_in, rep.bytes_out, rep.requests, done.user_id or "?",
                         extra={"tunnel": sub, "interval": iso(start), "outcome": "delivered", "bytes_in": rep.bytes_in,
                                "bytes_out": rep.bytes_out, "requests": rep.requests})
            return Outcome(done.outcome)
        finally:
            if not released:
                try:
                    self.ledger.release_send_lock(key, token)
                except redis.RedisError as e:  # it expires by itself
                    log.warning("report %s (%s): cannot release the send lock (Redis: %s)", sub, iso(start), type(e).__name__)

    def _record_delivered(self, key: ReportKey, state: ReportState, user_id: str, until: float, token: str) -> bool:
        """Record a final answer and release the send lock (``finish.lua``), retrying
        through a Redis outage while this attempt still holds the lock. Returns whether
        a report was parked since the platform's last success. Raises the last Redis
        error when it cannot: the report then stays queued and is sent again (the same
        key: a deduplicating platform answers with its first answer)."""
        delay = 0.25
        while True:
            try:
                return self.ledger.finish(key, state, user_id, self.s.report_retention, token)
            except redis.RedisError as e:
                if time.monotonic() + delay > until:
                    log.error("report %s (%s): the platform answered %s but Redis is unreachable (%s); it stays "
                              "queued and will be sent again with the same Idempotency-Key",
                              key.subdomain, iso(key.start), state, type(e).__name__)
                    raise
                log.warning("report %s (%s): the platform answered %s; cannot record it yet (Redis: %s), retrying",
                            key.subdomain, iso(key.start), state, type(e).__name__)
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    def _wake_parked(self) -> None:
        try:
            woken = self.ledger.wake_parked()
        except redis.RedisError as e:
            log.warning("cannot wake the parked reports (Redis: %s); the next success will", type(e).__name__)
            return
        if woken:
            log.info("the platform answers again: %d parked report(s) are due now", woken)

    def _retry_or_park(self, rep: Report, retries: int, reason: str, retry_after: float | None) -> Outcome:
        now = self.ledger.now()
        key = rep.key
        # Age from the report's making (its interval sealed, or the amendment made): an
        # interval backfilled after an outage is sealed late and still gets REPORT_MAX_AGE.
        made = rep.sealed_at if rep.sealed_at is not None else rep.start + self.s.report_interval
        age = now - made
        if age > self.s.report_max_age:
            why = f"undeliverable for over REPORT_MAX_AGE ({self.s.report_max_age}s); last error: {reason}"
            if not self.ledger.dead_letter(key, why):
                return _finished_elsewhere(rep, why)
            log.error("❌ %s (%s): %s; parked in the dead-letter store", rep.subdomain, iso(rep.start), why,
                      extra={"tunnel": rep.subdomain, "interval": iso(rep.start), "outcome": "dead"})
            return Outcome(ReportOutcome.DEAD, detail=why)
        # A probe (the sweep's, when nothing succeeded since reports were parked) makes one
        # attempt: its failure parks it again at once, so a platform that is down gets one
        # request a probe, not a round of automatic retries.
        if retries < self.s.report_auto_retries and not rep.probe:
            countdown = backoff(retries, self.s.report_retry_max_delay)
            if retry_after is not None:
                countdown = min(max(countdown, retry_after), self.s.report_retry_max_delay)
                self.ledger.delay_probe(now + min(retry_after, self.s.report_due_max_delay))
            until = now + countdown + self.s.report_time_limit
            if self.ledger.reserve_retry(key, until, self.s.max_waiting_retries):
                self.ledger.extend_lease(key, now + countdown + self.s.lease_seconds)
                log.warning("report %s (%s): %s; retry %d in %.1fs", rep.subdomain, iso(rep.start), reason, retries + 1, countdown,
                            extra={"tunnel": rep.subdomain, "interval": iso(rep.start), "outcome": "retry"})
                return Outcome(ReportOutcome.RETRY, countdown=countdown, detail=reason)
        delay = backoff(rep.attempts, self.s.report_due_max_delay)
        probe_after = float(self.s.report_probe_interval)
        if retry_after is not None:
            delay = min(max(delay, retry_after), self.s.report_due_max_delay)
            probe_after = max(probe_after, min(retry_after, self.s.report_due_max_delay))
        if not self.ledger.park(key, now + delay, reason, probe_after):
            return _finished_elsewhere(rep, reason)
        log.warning("report %s (%s): %s; parked, next attempt in %.0fs", rep.subdomain, iso(rep.start), reason, delay,
                    extra={"tunnel": rep.subdomain, "interval": iso(rep.start), "outcome": "parked"})
        return Outcome(ReportOutcome.PARKED, countdown=delay, detail=reason)


def _finished_elsewhere(rep: Report, reason: str) -> Outcome:
    """This attempt failed (``reason``) after another copy, whose send lock had expired,
    recorded the report as final (delivered, skipped, dead-lettered or written off):
    nothing is recorded over it (``Ledger.park``, ``Ledger.dead_letter``)."""
    log.info("report %s (%s): %s, but it is final already (another copy finished it); nothing recorded",
             rep.subdomain, iso(rep.start), reason,
             extra={"tunnel": rep.subdomain, "interval": iso(rep.start), "outcome": "noop"})
    return Outcome(ReportOutcome.NOOP, detail="final already")


class LeaseKeeper:
    """Renews, in a worker's main process, the leases of the reports whose messages the
    worker holds (``held()``: received and waiting, waiting for a retry's countdown, or
    running), every third of ``seconds``, and at once for a message just received
    (``note``). A worker that dies stops renewing: its reports become claimable by the
    sweep ``seconds`` later. Runs on its own thread with its own Redis connection, so a
    slow or absent Redis never blocks the worker's event loop."""

    def __init__(self, make_ledger: Callable[[], Ledger], held: Callable[[], list[ReportKey]], seconds: int) -> None:
        self._make_ledger = make_ledger
        self._held = held
        self.seconds = seconds
        self.every = max(1.0, seconds / 3)
        self._noted: list[ReportKey] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="report-lease-keeper", daemon=True)
        self.renewed = 0

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

    def note(self, key: ReportKey) -> None:
        """A message for ``key`` was just received: renew its lease now (within
        ``NOTE_BATCH``: the messages of a burst are renewed by one script call)."""
        with self._lock:
            self._noted.append(key)
            first = len(self._noted) == 1
        if first:
            self._wake.set()

    def _run(self) -> None:
        ledger: Ledger | None = None
        next_full = 0.0
        failing = False
        while not self._stop.is_set():
            if self._wake.wait(max(0.0, next_full - time.monotonic())) and self._stop.wait(NOTE_BATCH):
                return
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                keys, self._noted = set(self._noted), []
            if time.monotonic() >= next_full:
                keys.update(self._held())
                next_full = time.monotonic() + self.every
            if not keys:
                continue
            try:
                ledger = ledger or self._make_ledger()
                self.renewed += ledger.hold(sorted(keys), self.seconds)
                failing = False
            except redis.RedisError as e:
                if not failing:
                    log.warning("cannot renew the leases of %d held report(s) (Redis: %s); retrying",
                                len(keys), type(e).__name__)
                failing = True
                with self._lock:
                    self._noted.extend(keys)
                self._stop.wait(1.0)
                self._wake.set()
