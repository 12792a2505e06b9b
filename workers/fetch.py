"""Fetch tasks: one per Traefik pod per round (queue ``fetch``), or with the file source
one per access-log file per round (queue ``FILE_QUEUE``: the host that holds the file).

Between rounds a pod's fetch may send the pod's next read itself, outside the round's
chord: at once after a read cut at ``limitBytes`` that made progress, or after a short
countdown for a pod whose log grows fast (``app/pace.py``, at most one pending per pod)."""

from __future__ import annotations

import logging
import sys
import time

import redis
from celery import signals
from celery.exceptions import SoftTimeLimitExceeded

from app import follow, pace, runtime
from app.celery import app, settings
from app.errors import FetchTimeLimitExceeded
from app.model import FetchStatus, FileCursor
from app.queues import Queue
from app.settings import EXPECTED

log = logging.getLogger(__name__)

# The message header that marks an early read and carries its token (app/pace.py).
EARLY_HEADER = "tms_early"

# Outcomes counted as fetch errors of the pod in the metrics. Not a conflict (another
# fetch committed), a restart seen mid-read, a pod gone or not started: nothing is wrong.
ERROR_STATUSES = frozenset({
    FetchStatus.FORBIDDEN, FetchStatus.KUBE_ERROR, FetchStatus.TIMEOUT, FetchStatus.NO_PROGRESS,
    FetchStatus.OVERFLOW, FetchStatus.LEDGER_LOST, FetchStatus.NO_LEDGER, FetchStatus.FILE_ERROR, FetchStatus.MISMATCH,
})


@app.task(
    name="workers.fetch.fetch",
    queue=Queue.FETCH,
    acks_late=True,
    soft_time_limit=settings.fetch_time_limit,
    time_limit=settings.fetch_time_limit + 10,
    expires=float(settings.fetch_time_limit),
)
def fetch(name: str, uid: str) -> dict:
    """Read pod ``name`` (uid ``uid``) from its cursor and commit. Never raises for a
    handled error, so the round's chord always completes; the cursor stays put.

    An early read sent by a previous fetch (``app/pace.py``) carries its token in the
    message header ``EARLY_HEADER``, not in the arguments: a worker of an older version
    that receives it runs an ordinary fetch instead of failing on an unknown argument."""
    started = time.monotonic()
    early = fetch.request.get(EARLY_HEADER) or ""
    if early:
        try:
            pace.start_early_read(runtime.ledger(), uid, early)
        except redis.RedisError as e:  # the mark expires on its own; the read goes on
            log.warning("fetch %s: could not free its early-read mark: %s", name, type(e).__name__)
    try:
        summary = follow.fetch_heeding_lease(runtime.fetcher(), name, uid, started + settings.fetch_time_limit)
    except (SoftTimeLimitExceeded, FetchTimeLimitExceeded):
        log.warning("fetch %s: over FETCH_TIME_LIMIT (%ss); nothing committed, next round retries", name, settings.fetch_time_limit,
                    extra={"pod": name, "outcome": "timeout"})
        summary = {"pod": name, "status": FetchStatus.TIMEOUT}
        _read_failed(uid)
    runtime.release_free_memory()
    _note(name, uid, summary, time.monotonic() - started)
    _send_next_read(name, uid, summary)
    return summary


def _send_next_read(name: str, uid: str, summary: dict) -> None:
    """Follow the pod from now on when its log grows by FOLLOW_MIN_RATE or more
    (``app/follow.py``); else send its next read now or after a countdown, outside the
    round's chord, when ``app/pace.py`` says so (a read cut at limitBytes that made
    progress, or a pod whose log grows fast)."""
    if summary.get("status") != FetchStatus.OK:
        return

    def start_following(rate: float) -> bool:
        follower = runtime.follower()
        return follower.wants(rate) and follower.offer(name, uid)

    try:
        nxt = pace.next_read(runtime.ledger(), uid, int(summary.get("consumed", 0)), bool(summary.get("cut")), settings,
                             follow=start_following if settings.follow_max_pods > 0 else None)
    except redis.RedisError as e:  # the rounds still read the pod
        log.warning("fetch %s: could not plan its next read: %s", name, type(e).__name__)
        return
    if nxt is None:
        return
    countdown, token = nxt
    fetch.apply_async((name, uid), countdown=countdown or None, expires=countdown + settings.fetch_time_limit,
                      ignore_result=True, headers={EARLY_HEADER: token})


@app.task(
    name="workers.fetch.fetch_file",
    queue=Queue.FETCH,  # plan sends it to the file's host queue (FILE_QUEUE)
    acks_late=True,
    soft_time_limit=settings.fetch_time_limit,
    time_limit=settings.fetch_time_limit + 10,
    expires=float(settings.fetch_time_limit),
)
def fetch_file(path: str, identity: str) -> dict:
    """Read the access-log file at ``path`` if it still has ``identity`` (the fingerprint
    of its first line), from that identity's cursor, and commit (app/filesource.py).
    Never raises for a handled error; the cursor stays put."""
    started = time.monotonic()
    try:
        summary = runtime.file_fetcher().fetch(path, identity, started + settings.fetch_time_limit)
    except (SoftTimeLimitExceeded, FetchTimeLimitExceeded):
        log.warning("fetch %s: over FETCH_TIME_LIMIT (%ss); nothing committed, next round retries", path,
                    settings.fetch_time_limit, extra={"outcome": "timeout"})
        summary = {"file": path, "status": FetchStatus.TIMEOUT}
        _read_failed(FileCursor.field(identity))
    runtime.release_free_memory()
    # The metrics' per-pod records hold files too: the path as the name.
    _note(path, f"file:{identity}", summary, time.monotonic() - started)
    return summary


def _read_failed(source: str) -> None:
    """A fetch over FETCH_TIME_LIMIT is a failed read: the source holds sealing back at
    most SEAL_MAX_WAIT (a pod whose every fetch times out would otherwise hold it for ever)."""
    try:
        runtime.ledger().note_read_failure(source)
    except redis.RedisError as e:
        log.warning("fetch %s: could not note the failed read: %s", source, type(e).__name__)


# Seconds a stopping worker gives its follow streams to commit what they read and let
# their pods go (within the grace period: docs/operations.md).
FOLLOW_STOP_TIMEOUT = 10.0


@signals.worker_shutting_down.connect
@signals.worker_shutdown.connect
@signals.worker_process_shutdown.connect
def _stop_following(**_: object) -> None:
    """At shutdown (a thread-pool worker's process: a signal, or ``celery control
    shutdown``, which sends only ``worker_shutdown``; or a prefork pool process): end the
    follow streams, each committing what it read and releasing its pod to the rounds."""
    runtime.stop_following(FOLLOW_STOP_TIMEOUT)


@signals.worker_init.connect
def _check_file_source(sender, **_: object) -> None:
    """At worker start: a worker that reads files (LOG_SOURCE=file, consuming its
    FILE_QUEUE) needs LOG_FILES."""
    if settings.log_source != "file":
        return
    consumes = sender.app.amqp.queues.consume_from or sender.app.amqp.queues
    if settings.file_queue in consumes and not settings.log_files:
        print(f"config error: LOG_FILES is not set; expected {EXPECTED['log_files']}", file=sys.stderr)
        raise SystemExit(2)


def _note(name: str, uid: str, summary: dict, seconds: float) -> None:
    """Per-pod metrics (app/metrics.py): duration, error kind, and whether the read
    reached the end of the log (committed, or nothing new, and not cut at limitBytes; or
    the pod is followed)."""
    status = summary.get("status")
    # A followed pod's stream is at the end of its log (its follower reads each line as
    # it is written), as long as its lease is renewed.
    reached_end = (status == FetchStatus.OK and summary.get("cut") is False) or status == FetchStatus.FOLLOWED
    error = str(status) if status in ERROR_STATUSES else ""
    try:
        runtime.ledger().note_fetch(uid, name, seconds, reached_end, error)
    except redis.RedisError as e:  # metrics must never fail a fetch that committed
        log.warning("fetch %s: could not record its metrics: %s", name, type(e).__name__)
