"""The pod watch: read a Traefik pod as soon as it is marked for deletion, again every
``TERMINATING_READ_INTERVAL`` (1 s) while it drains its in-flight requests, and once
more as soon as its container reports ``terminated``, so the lines it wrote after the
last round are read before the pod object, and its log with it, goes (about a second
after the container exits).

Where it runs, and why
----------------------
In a small dedicated process, ``traefik-metrics-scraper watch`` (k8s/watcher.yaml, the
``watcher`` service of docker-compose.yml), which does the reads itself, in-process:

* Not in beat: beat has no ServiceAccount token (only the processes that call the
  Kubernetes API mount it), it must stay exactly one process that only schedules, and
  a beat stuck in a log read would delay every round.
* Not in a fetch worker: a fetch worker runs one slot (``--pool=threads --concurrency=1``),
  so a watch loop there would take that slot for good, or wait behind a fetch that may
  run up to ``FETCH_TIME_LIMIT`` (120 s).
* Not by sending fetch tasks: a read sent to the ``fetch`` queue waits behind the
  round's fetches, and the deadline after a container exits is about one second.

The reads call the same ``Fetcher.fetch(name, uid)`` as the fetch task, so exactly-once
holds through the cursor compare-and-set even when a round's fetch reads the same pod
at the same moment (one of the two commits, the other finds the cursor moved).

Replicas (1 or 2) elect one leader with a Redis lease: ``SET NX PX`` takes it, the
holder renews it every ``RENEW_EVERY`` seconds by comparing its token in a Lua script,
and releases it on SIGTERM. A non-leader waits and takes over within ``LEASE_SECONDS``.
A leader that cannot renew stops watching (its reads in flight still finish: they are
safe). If no watcher runs at all, nothing is worse than before: the rounds still read a
terminating pod every ``FETCH_INTERVAL`` until it is gone; the watcher narrows that
window from ``FETCH_INTERVAL`` to about one second.

How it watches
--------------
List the pods, then watch from the list's ``resourceVersion`` (``app.kube``); each
watch request ends after ``WATCH_TIMEOUT`` seconds and resumes from the last event's
version; a 410 Gone (the version is older than the apiserver's history) lists again,
and a pod missing from that list is treated as deleted (its ``DELETED`` event was in
the lost history).

Gaps
----
A pod that vanishes (a ``DELETED`` event, a read answering 404, or missing from a
re-list) before a complete read (status ok, not cut at ``FETCH_MAX_BYTES``) *started
after its container was seen terminated* may have lost its last lines. It gets a gap
record in the ledger, the same shape as the rotation gaps (``Ledger.record_gap``), from
the cursor's position (or the last complete read's start when the cursor holds no line)
to the container's ``finishedAt`` (whole seconds, so to the end of that second), or to
the deletion when the container was never seen to finish; and a WARNING.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis

from app import follow
from app.errors import KubeError, KubeForbidden, WatchExpired
from app.fetching import fmt_ns
from app.kube import LogSource, Pod, PodEvent
from app.ledger import Ledger
from app.model import Cursor, FetchStatus
from app.settings import ConfigError

log = logging.getLogger(__name__)

NS = 1_000_000_000
LEASE_SECONDS = 15.0  # a dead leader is replaced within this
RENEW_EVERY = 5.0
WAIT_EVERY = 2.0  # how often a non-leader tries to take the lease
WATCH_TIMEOUT = 240  # seconds of one watch request (then resume from the last version)
READERS = 4  # pods read at once
BACKOFF_MAX = 30.0
TICK = 1.0  # the leader's loop wakes at least this often (lease, liveness file)
LIVE_FILE = "watcher"  # under HEALTH_DIR, the app/health.py convention: a deadline
LIVE_EVERY = 5.0  # the file is rewritten this often while the loop runs...
LIVE_BUDGET = 60  # ...valid this long (a read can block the loop's exit for 30 s)
SETTLED_KEPT = 10_000  # uids of gone pods remembered, so a pod is settled once

# Seconds between two reads of a terminated pod that its follower still holds
# (app/follow.py): the read goes through the lease once it meets the cursor's own lines
# (the follower's last commit may be a second away), or the follower reads the pod to
# the end and lets go within a second or so.
FOLLOWED_RETRY = 0.2
# Outcomes after which the pod is read again at once rather than at the next tick.
_AGAIN_AT_ONCE = {FetchStatus.CONFLICT, FetchStatus.RESTARTED}
# Outcomes of a complete read (everything up to the end of the log when it started).
_COMPLETE = {FetchStatus.OK, FetchStatus.NOT_STARTED}


# --------------------------------------------------------------------------- state


@dataclass
class PodState:
    """What the watch knows about one pod (by uid)."""

    uid: str
    name: str
    namespace: str
    container: str = ""  # the container read (the Fetcher's choice)
    container_id: str = ""
    deleting: bool = False
    deletion_ns: int = 0  # deletionTimestamp: the end of the grace period
    exited: bool = False  # the container reported state.terminated
    finished_ns: int = 0  # its finishedAt (whole seconds), 0 if unknown
    final_read: bool = False  # a complete read started after the exit was seen
    reading: bool = False
    read_after_exit: bool = False  # the read in flight started after the exit was seen
    read_container: str = ""  # the container id when the read in flight started
    read_started: float = 0.0  # monotonic
    again: bool = False  # asked for a read while one was in flight
    due: float | None = None  # monotonic time of the next read
    last_read_ns: int = 0  # wall time (ns) the last complete read started
    gone: bool = False
    gone_ns: int = 0  # wall time (ns) it was seen gone


def lost_lines(st: PodState) -> bool:
    """Whether a vanished pod may have lost lines: it had a container, and no complete
    read started after that container was seen terminated."""
    return bool(st.container_id) and not st.final_read


class PodTracker:
    """The watch's decisions, without I/O: which pod to read when, and which vanished
    pods went before their last lines were read. ``now`` is monotonic seconds,
    ``wall_ns`` epoch nanoseconds. Only the watcher's main loop calls it."""

    def __init__(self, container: str, interval: float) -> None:
        self.container = container
        self.interval = interval
        self.pods: dict[str, PodState] = {}
        # uids already settled as gone (a 404 first, then the DELETED event): never twice
        self.settled: OrderedDict[str, None] = OrderedDict()

    def sync(self, pods: list[Pod], now: float, wall_ns: int) -> list[PodState]:
        """A full list. Tracked pods missing from it are gone (their ``DELETED`` event was
        lost with the history); returns the vanished pods to settle now."""
        for pod in pods:
            self.observe(pod, now)
        listed = {p.uid for p in pods}
        out: list[PodState] = []
        for uid in [u for u in self.pods if u not in listed]:
            out += self.vanished(uid, wall_ns)
        return out

    def event(self, ev: PodEvent, now: float, wall_ns: int) -> list[PodState]:
        """One watch event; returns the vanished pods to settle now."""
        self.observe(ev.pod, now)
        if ev.kind == "DELETED":
            return self.vanished(ev.pod.uid, wall_ns)
        return []

    def observe(self, pod: Pod, now: float) -> None:
        """A pod's current state: start reading it when it turns terminating, read once
        more when its container exits."""
        if pod.uid in self.settled:
            return
        st = self.pods.get(pod.uid)
        if st is None:
            st = self.pods[pod.uid] = PodState(pod.uid, pod.name, pod.namespace)
        if st.gone:
            return
        ctr = pod.container(self.container)
        cid = ctr.container_id if ctr is not None else ""
        if cid != st.container_id:  # started, or restarted: another container's log
            st.container = ctr.name if ctr is not None else ""
            st.container_id = cid
            st.exited = st.final_read = False
            st.finished_ns = 0
        if pod.deleting and not st.deleting:
            st.deleting, st.deletion_ns = True, pod.deletion_ns
            log.info(
                "watch: pod %s is terminating: reading it now and every %gs until its container exits",
                pod.name, self.interval,
            )
            self._want(st, now)
        if ctr is not None and ctr.exited and cid and not st.exited:
            st.exited, st.finished_ns = True, ctr.finished_ns
            log.info("watch: pod %s: container %s terminated: reading it once more", pod.name, st.container)
            self._want(st, now)

    def _want(self, st: PodState, now: float) -> None:
        if st.reading:
            st.again = True  # the read in flight may have started too early
        else:
            st.due = now if st.due is None else min(st.due, now)

    def vanished(self, uid: str, wall_ns: int) -> list[PodState]:
        """The pod object is gone. Settled at once, or when its read in flight ends."""
        st = self.pods.get(uid)
        if st is None or st.gone:
            return []
        st.gone, st.gone_ns, st.due = True, wall_ns, None
        if st.reading:
            return []
        return self._settle(st)

    def _settle(self, st: PodState) -> list[PodState]:
        del self.pods[st.uid]
        self.settled[st.uid] = None
        if len(self.settled) > SETTLED_KEPT:
            self.settled.popitem(last=False)
        return [st]

    def start_due(self, now: float) -> list[PodState]:
        """The pods to read now (marked as being read)."""
        out = []
        for st in self.pods.values():
            if st.reading or st.gone or st.due is None or st.due > now:
                continue
            st.reading, st.again, st.due = True, False, None
            st.read_after_exit = st.exited
            st.read_container = st.container_id
            st.read_started = now
            out.append(st)
        return out

    def read_done(self, uid: str, status: str, cut: bool, started_ns: int, now: float,
                  wall_ns: int) -> list[PodState]:
        """A read ended; returns the pod if it is now settled as gone."""
        st = self.pods.get(uid)
        if st is None:
            return []
        st.reading = False
        if status in _COMPLETE and not cut:
            st.last_read_ns = started_ns
            # Of the container it started after the exit of (a restart while it ran is
            # another container, whose exit no read has followed yet).
            if st.read_after_exit and st.read_container == st.container_id and not st.final_read:
                st.final_read = True
                log.info("watch: pod %s: read to the end after its container terminated", st.name)
        if status == FetchStatus.GONE and not st.gone:
            st.gone, st.gone_ns = True, wall_ns
        if st.gone:
            return self._settle(st)
        if status == FetchStatus.NO_PROGRESS:
            # Cut with nothing consumed: reading again at once gets the same bytes. Wait
            # the usual interval (the WARN and counter already say what to change).
            st.due = max(now, st.read_started + self.interval)
        elif st.again or cut or status in _AGAIN_AT_ONCE:
            st.due = now
        elif status == FetchStatus.FOLLOWED and st.exited:
            # Its follower reads it to the end and lets go once its stream ends with the
            # container: read again soon after, before the pod (and its log) goes.
            st.due = now + FOLLOWED_RETRY
        elif st.deleting and not st.final_read:
            st.due = max(now, st.read_started + self.interval)
        return []

    def next_due(self) -> float | None:
        dues = [st.due for st in self.pods.values() if st.due is not None and not st.reading and not st.gone]
        return min(dues) if dues else None


# ----------------------------------------------------------------------------- I/O


# follow.fetch_heeding_lease: (name, uid, final: the read started after the container was
# seen terminated) -> its result
Read = Callable[..., dict]


class Watcher:
    """Runs the watch and the reads while this replica leads.

    ``source`` lists and watches (``list_pods_at``, ``watch_pods``); ``read`` is
    ``follow.fetch_heeding_lease`` bound to a ``Fetcher``, called as ``read(name, uid,
    final=...)`` (its result's ``cut``: the read stopped at ``FETCH_MAX_BYTES``, more
    is waiting); ``ledger`` gives cursors and takes gap records.
    """

    def __init__(self, source: LogSource, read: Read, ledger: Ledger, *, container: str, interval: float,
                 watch_timeout: int = WATCH_TIMEOUT, readers: int = READERS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.read = read
        self.ledger = ledger
        self.container = container
        self.interval = interval
        self.watch_timeout = watch_timeout
        self.readers = readers
        self.clock = clock
        self._current = None  # the watch request in progress (to stop it)

    def lead(self, stop: threading.Event, keep: Callable[[], bool] = lambda: True) -> None:
        """Watch and read until ``stop`` is set or ``keep()`` is false (the lease is lost)."""
        inbox: queue.Queue = queue.Queue()
        ended = threading.Event()
        tracker = PodTracker(self.container, self.interval)
        thread = threading.Thread(target=self._watch_loop, args=(inbox, ended), name="pod-watch", daemon=True)
        thread.start()
        pool = ThreadPoolExecutor(self.readers, thread_name_prefix="pod-read")
        try:
            while not stop.is_set() and keep():
                due = tracker.next_due()
                wait = TICK if due is None else min(TICK, max(0.0, due - self.clock()))
                try:
                    item = inbox.get(timeout=wait)
                except queue.Empty:
                    item = None
                while item is not None:
                    for st in self._handle(item, tracker):
                        self._settle(st)
                    try:
                        item = inbox.get_nowait()
                    except queue.Empty:
                        item = None
                for st in tracker.start_due(self.clock()):
                    pool.submit(self._read, st.uid, st.name, st.read_after_exit, inbox)
        finally:
            ended.set()
            current = self._current
            if current is not None:
                current.stop()
            pool.shutdown(wait=True)  # reads in flight finish: each commits safely or not at all
            thread.join(timeout=10)

    def _handle(self, item: tuple, tracker: PodTracker) -> list[PodState]:
        kind = item[0]
        wall = time.time_ns()
        if kind == "sync":
            return tracker.sync(item[1], self.clock(), wall)
        if kind == "event":
            return tracker.event(item[1], self.clock(), wall)
        _, uid, status, cut, started_ns = item
        return tracker.read_done(uid, status, cut, started_ns, self.clock(), wall)

    def _watch_loop(self, inbox: queue.Queue, ended: threading.Event) -> None:
        """List, then watch from the list's version; relist on 410; back off on errors."""
        rv = ""
        backoff = 1.0
        while not ended.is_set():
            try:
                if not rv:
                    pods, rv = self.source.list_pods_at()
                    rv = rv or "0"
                    inbox.put(("sync", pods))
                    log.info("watch: %d Traefik pod(s) listed at resourceVersion %s; watching", len(pods), rv)
                current = self._current = self.source.watch_pods(rv, self.watch_timeout)
                if ended.is_set():
                    break
                for ev in current:
                    rv = ev.resource_version or rv
                    inbox.put(("event", ev))
                backoff = 1.0
            except WatchExpired as e:
                log.info("watch: %s; listing again", e)
                rv = ""
            except KubeForbidden as e:
                log.error("watch: %s", e)
                ended.wait(BACKOFF_MAX)
            except KubeError as e:
                log.warning("watch: %s; again in %gs", e, backoff)
                ended.wait(backoff)
                backoff = min(2 * backoff, BACKOFF_MAX)
            finally:
                self._current = None

    def _read(self, uid: str, name: str, final: bool, inbox: queue.Queue) -> None:
        started = time.time_ns()
        status: str = "error"
        cut = False
        try:
            result = self.read(name, uid, final=final)
            status = str(result.get("status", "error"))
            cut = bool(result.get("cut", False))
        except redis.RedisError as e:
            log.warning("watch: reading pod %s: Redis: %s: %s", name, type(e).__name__, str(e)[:200])
        except Exception:
            log.exception("watch: reading pod %s failed", name)
        finally:
            inbox.put(("done", uid, status, cut, started))

    def _settle(self, st: PodState) -> None:
        """A vanished pod: a gap record when its last lines may not have been read."""
        if not lost_lines(st):
            if st.container_id:
                log.info("watch: pod %s is gone; its log was read to the end", st.name)
            return
        try:
            if st.container_id and self.ledger.read_to_end(st.uid) == st.container_id:
                log.info("watch: pod %s is gone; its follower read its log to the end", st.name)
                return
            if self.ledger.start_at_ns() is None:
                log.warning("watch: pod %s is gone unread, and the ledger is not initialised", st.name)
                return
            try:
                cursor = Cursor.decode(self.ledger.cursor_raw(f"{st.uid}/{st.container}"))
            except ValueError:
                cursor = None
            from_ns = st.last_read_ns
            if cursor is not None and cursor.container_id == st.container_id and cursor.t_ns:
                from_ns = cursor.t_ns
            if st.exited and st.finished_ns:
                to_ns = st.finished_ns + NS  # finishedAt has whole seconds: to the end of its second
                what = "its container terminated"
            else:
                to_ns = min(st.deletion_ns, st.gone_ns) if st.deletion_ns else st.gone_ns
                what = "it was deleted"
            reason = (
                f"the pod vanished before its last lines were read ({what}; no complete read after "
                "its container terminated)"
            )
            span = f"{fmt_ns(from_ns) if from_ns else 'the start'} .. {fmt_ns(to_ns)}"
            log.warning("GAP in the log of pod %s/%s container %s: lines %s may be lost: %s",
                        st.namespace, st.name, st.container, span, reason,
                        extra={"pod": st.name, "namespace": st.namespace, "outcome": "gap"})
            self.ledger.record_gap({
                "pod": st.name,
                "namespace": st.namespace,
                "uid": st.uid,
                "container": st.container,
                "from_ns": from_ns,
                "to_ns": to_ns,
                "reason": reason,
                "at": self.ledger.now(),
            })
        except redis.RedisError as e:
            log.error("watch: pod %s vanished before its last lines were read; recording the gap failed: "
                      "Redis: %s", st.name, type(e).__name__)


# --------------------------------------------------------------------------- lease

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Lease:
    """One leader among the watcher replicas: ``SET key token NX PX`` takes the lease,
    only the token's holder may extend it (or drop it)."""

    def __init__(self, r: redis.Redis, key: str, seconds: float = LEASE_SECONDS, token: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.r = r
        self.key = key
        self.seconds = seconds
        self.token = token or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.valid_until = 0.0
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)

    def acquire(self) -> bool:
        start = self.clock()
        if self.r.set(self.key, self.token, nx=True, px=int(self.seconds * 1000)):
            self.valid_until = start + self.seconds
            return True
        return False

    def renew(self) -> bool:
        start = self.clock()
        if int(self._renew(keys=[self.key], args=[self.token, int(self.seconds * 1000)])) == 1:
            self.valid_until = start + self.seconds
            return True
        self.valid_until = 0.0
        return False

    def release(self) -> None:
        self.valid_until = 0.0
        self._release(keys=[self.key], args=[self.token])

    def held(self) -> bool:
        return self.clock() < self.valid_until


# ---------------------------------------------------------------------------- main


def run(stop: threading.Event, health_dir: str | None = None, lease_seconds: float = LEASE_SECONDS) -> int:
    """``traefik-metrics-scraper watch``: lead (or wait to lead) until ``stop`` is set.
    While the loop runs (leading or waiting) it keeps ``<health_dir>/watcher`` valid, a
    deadline as app/health.py writes them, for the liveness probe
    (``test "$(date +%s)" -lt "$(cat /tmp/health/watcher)"``)."""
    from app import runtime
    from app.health import write_deadline

    s = runtime.settings()
    if s.log_source != "kubernetes":
        log.error("watch: LOG_SOURCE=%s: there are no Traefik pods to watch; run the watcher only with "
                  "LOG_SOURCE=kubernetes", s.log_source)
        return 2
    try:
        runtime.check_kube_config("the watcher")  # no config at all: a configuration error (exit 2), as for a worker
        runtime.check_ledger_identity()  # it commits reads into report intervals, as a fetch worker
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    ledger = runtime.ledger()
    try:
        fetcher = runtime.fetcher()  # the fetch task's, same settings
    except KubeError as e:
        log.error("watch: %s", e)
        return 1
    # Through the follow lease, as the rounds read (a busy followed pod is its follower's,
    # but for a final read that meets the cursor's own lines: fetch_heeding_lease's final).
    watcher = Watcher(fetcher.source, functools.partial(follow.fetch_heeding_lease, fetcher), ledger,
                      container=s.traefik_container,
                      interval=s.terminating_read_interval)
    lease = Lease(ledger.r, ledger.k("watcher", "leader"), lease_seconds)
    renew_every = min(RENEW_EVERY, lease_seconds / 3)
    log.info("watch: started (%s); namespace %s, selector %s, terminating pods read every %gs",
             lease.token, s.traefik_namespace, s.traefik_label_selector, s.terminating_read_interval)
    last_beat = [0.0]
    next_renew = [0.0]

    def beat() -> None:
        if health_dir and time.monotonic() - last_beat[0] >= LIVE_EVERY:
            last_beat[0] = time.monotonic()
            try:
                write_deadline(health_dir, LIVE_FILE, LIVE_BUDGET)
            except OSError as e:
                log.warning("watch: cannot write %s/%s: %s", health_dir, LIVE_FILE, e)

    def keep() -> bool:
        beat()
        if time.monotonic() >= next_renew[0]:
            try:
                if not lease.renew():
                    log.warning("watch: the lease was lost (another replica leads now); stepping down")
                    return False
                next_renew[0] = time.monotonic() + renew_every
            except redis.RedisError as e:
                log.warning("watch: cannot renew the lease: Redis: %s", type(e).__name__)
                next_renew[0] = time.monotonic() + 1.0
        if not lease.held():
            log.warning("watch: the lease ran out; stepping down")
            return False
        return True

    waiting = False
    while not stop.is_set():
        beat()
        try:
            got = lease.acquire()
        except redis.RedisError as e:
            log.warning("watch: cannot reach Redis for the lease: %s", type(e).__name__)
            stop.wait(WAIT_EVERY)
            continue
        if not got:
            if not waiting:
                log.info("watch: another replica leads; waiting")
                waiting = True
            stop.wait(WAIT_EVERY)
            continue
        waiting = False
        log.info("watch: this replica leads")
        next_renew[0] = time.monotonic() + renew_every
        try:
            watcher.lead(stop, keep)
        finally:
            try:
                lease.release()
            except redis.RedisError as e:
                log.warning("watch: cannot release the lease (it runs out by itself): %s", type(e).__name__)
    log.info("watch: stopped")
    return 0
