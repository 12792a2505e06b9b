"""Busy pods' logs held open across the kubelet's rotations: follow streams.

Why: the kubelet serves only a container's current log file and renames it away once it
reaches ``containerLogMaxSize`` (10 Mi by default, looked at every 10 s). A read without
``follow`` sees only the current file, so the lines written after the last read and
before the rename are out of reach (docs/design.md, "Throughput"); reading more often
shrinks that loss but never ends it. A ``follow=true`` stream does not lose them: at the
end of the open file the kubelet waits for more, and switches to the new file only on
the Create event of the log's own path, after reading the renamed one to its end
(``waitLogs`` in staging/src/k8s.io/cri-client/pkg/logs/logs.go).

How:

* After a committed read of a pod whose log grew by ``FOLLOW_MIN_RATE`` lines a second
  or more (``app/pace.py`` measures it), the fetch task offers the pod to its process's
  ``Follower`` (:meth:`Follower.offer`). With room (``FOLLOW_MAX_PODS``) it takes the
  pod's lease (``follow:<uid>``, ``SET NX`` with a time to live, renewed every
  ``TICK``) and starts a thread that holds a follow stream from the pod's cursor.
* The thread reads the stream in slices of ``FETCH_MIN_INTERVAL`` seconds and commits
  each one as a fetch does (``Fetcher._commit``: the same ``commit.lua`` compare-and-set
  of the cursor). One ``ReadState`` across the slices makes them count what one read of
  the whole stream would. A slice's read record carries its highest stamp only: a
  stream never reaches an end, so a busy followed pod moves the watermark by its stamps.
* While a pod is followed the rounds do not read it (their fetch sees the lease:
  ``FetchStatus.FOLLOWED``). When the lease says the stream is quiet (no byte taken for
  ``FETCH_MIN_INTERVAL``, none waiting, all committed), a round's fetch reads the pod as
  a *probe*: it commits only a read record, and only when the read found nothing new:
  up to its start when it met the cursor's lines, else (the file renamed since) up to
  the lease's renewal less ``STALLED_AFTER``; so a quiet followed pod moves the
  watermark by its reads as any pod does. Lines it finds that the stream should have
  delivered long ago it counts itself (``Fetcher.fetch(probe=True)``).
* A follower lets a pod go (deletes the lease; the rounds read it again) when its
  container stops or waits to restart, or the pod goes, when a commit meets another
  one's cursor, after ``IDLE_RELEASE`` seconds without a byte, after
  ``MAX_EMPTY_STREAMS`` streams in a row without a new line, and when the worker stops
  (after committing what it read). A stream that breaks is opened again
  from the cursor.
* The rounds' fetch task and the pod watcher read a pod through its lease
  (``fetch_heeding_lease``). When its container stops, the follower reads the pod to
  its end before letting go, and says so (``readtoend:<uid>``) for the watcher.
* A stream that sends lines again (the kubelet reopens the file after a rotation it fell
  behind) does not count them twice: ``ReadState.follow`` in ``app/fetching.py``.

The rounds stop heeding a lease ``STALE_AFTER`` seconds after its last renewal (a
follower that died or hung). Exactness never rests on the lease: two readers of one pod
are kept apart by the cursor's compare-and-set, as two fetches are.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from enum import StrEnum

import redis

from app.errors import KubeError, LedgerLost, PodGone
from app.fetching import Fetcher, ReadState, consume, fmt_ns
from app.kube import Container, LogFollow, Pod
from app.ledger import Ledger, lua_script
from app.model import Cursor, FetchStatus

log = logging.getLogger(__name__)

TICK = 0.5  # seconds between two renewals of the leases (and looks at the streams' state)
LEASE_TTL = 15  # seconds a lease outlives its last renewal (a follower that died)
STALE_AFTER = 3.0  # seconds without a renewal after which the rounds no longer heed a lease
IDLE_RELEASE = 60.0  # seconds without a byte after which a pod goes back to the rounds
NO_LIMIT = 1 << 62  # a follow stream is not cut at limitBytes
# Seconds a busy stream's newest line may be old before the follower warns that it is
# behind (half the kubelet's 10 s rotation check: a file can be renamed at each check).
BEHIND_WARN = 5.0
QUEUED_CHUNKS = 4  # chunks (256 KiB at most each) read ahead of the count, per stream: 1 MiB at most
JOIN_BYTES = 256 * 1024  # waiting chunks are joined up to this size before they are counted
# Bytes after which a slice ends even before its time (a burst, or a stream catching
# up). Not less: each commit writes the cursor, whose fingerprints cover
# LOG_REORDER_WINDOW of lines whatever the slice's length, so commits per second times
# that window grows with the square of the rate (1 MiB slices took a core at 8,000
# lines/s per pod in bench/rotation.py). A stream catching up on 300,000 lines stamped
# 2,000 a second fingerprinted 22 % of them in 8 MiB slices, 7 % in 32 MiB ones (and took
# 2.3-2.8 s instead of 3.0). What a stream holds while it counts is that window of lines
# (tracemalloc: 2.4 MB for a second at 2,000 lines/s, 28.5 MB at 24,000), as for a poll's
# read, and at most QUEUED_CHUNKS chunks: not the slice's bytes.
SLICE_BYTES = 32 * 1024 * 1024
# Seconds without a chunk after which a slice that took bytes ends early, so what it took
# is committed when the stream pauses, not up to a slice later: a rolling update's pod
# goes about a second after its container exits, and the pod watcher's final read meets
# the follower's newest lines only once they are committed (fetch_heeding_lease's final).
# A steady stream has no such pause; one with pauses commits at most five times a second.
PAUSE_COMMIT = 0.2
MAX_EMPTY_STREAMS = 3  # streams in a row with no new line before the pod goes back to the rounds
REOPEN_WAIT = 1.0  # seconds before opening the stream again after one with no new line, doubled each time


class Lease(StrEnum):
    """A followed pod's stream, as its lease says."""

    # Bytes came within FETCH_MIN_INTERVAL, or some are not committed yet: the rounds
    # leave the pod alone.
    BUSY = "busy"
    # None since, and all committed: a round's fetch reads it as a probe (for the watermark).
    QUIET = "quiet"


def lease_key(ledger: Ledger, uid: str) -> str:
    return ledger.k("follow", uid)


def lease_of(ledger: Ledger, uid: str) -> Lease | None:
    """The state of pod ``uid``'s follow lease; None when no one follows it, or when its
    follower has not renewed it for ``STALE_AFTER`` seconds (it renews every ``TICK``: a
    worker stopped without letting go, killed, or hung; the rounds read the pod again, and
    the cursor's compare-and-set keeps a late commit of the follower out). Raises
    ``redis.RedisError``."""
    seen = lease_seen(ledger, uid)
    return None if seen is None else seen[0]


def lease_seen(ledger: Ledger, uid: str) -> tuple[Lease, float | None] | None:
    """``lease_of``, with the Redis time (s) at which the state held: taken by the
    follower before it judged the state it renewed the lease with (None for a lease not
    renewed yet). Raises ``redis.RedisError``."""
    key = lease_key(ledger, uid)
    with ledger.r.pipeline(transaction=False) as pipe:
        pipe.get(key)
        pipe.pttl(key)
        raw, pttl = pipe.execute()
    if not raw or pttl < (LEASE_TTL - STALE_AFTER) * 1000:
        return None
    parts = raw.decode().split(" ")  # "<token> <state>" as taken, "<token> <time> <state>" renewed
    renewed = float(parts[1]) if len(parts) == 3 else None
    return (Lease.QUIET if parts[-1] == Lease.QUIET else Lease.BUSY), renewed


def fetch_heeding_lease(fetcher: Fetcher, name: str, uid: str, deadline: float | None = None, *,
                        final: bool = False) -> dict:
    """``fetcher.fetch(name, uid, deadline)`` for a pod that may be followed, by this
    process or another: its lease BUSY, no read (status ``FOLLOWED``: its follower reads
    it); QUIET, a probe (``fetch(probe=True, quiet_at=<the lease's renewal>)``); none, stale
    or unreadable, a read (the cursor's compare-and-set keeps it exact). The rounds' fetch
    task and the pod watcher read pods through it: a read of a busy followed pod would
    commit under its follower, which would then let go with what it held of a renamed file
    (lost, a gap record).

    ``final``: the pod watcher's read after it saw the container terminate. Its lease BUSY,
    a read that commits only when it meets the cursor's own lines (``fetch(probe=True,
    busy=True)``): every line after them is then in the file it reads (no rename in
    between), which the container no longer writes, so the read is complete and exact; the
    follower's next commit conflicts and it lets go of the same lines. The pod object goes
    about a second after the exit, often before the follower's stream ends (the kubelet
    looks at the container once a second) and it reads the pod to its end itself."""
    try:
        seen = lease_seen(fetcher.ledger, uid)
    except redis.RedisError as e:
        log.warning("fetch %s: could not look at its follow lease: %s", name, type(e).__name__)
        seen = None
    if seen is None:
        return fetcher.fetch(name, uid, deadline)
    lease, renewed = seen
    if lease is Lease.BUSY:
        if final:
            return fetcher.fetch(name, uid, deadline, probe=True, busy=True)
        return {"pod": name, "status": FetchStatus.FOLLOWED}
    return fetcher.fetch(name, uid, deadline, probe=True, quiet_at=renewed)


class Follower:
    """The follow streams of one process (a fetch worker's): at most ``max_pods``, one
    thread each, and one thread renewing their leases. Thread-safe."""

    def __init__(self, fetcher: Fetcher, *, max_pods: int, min_rate: float, slice_seconds: float) -> None:
        self.fetcher = fetcher
        self.ledger = fetcher.ledger
        self.max_pods = max_pods
        self.min_rate = min_rate
        self.slice_seconds = slice_seconds
        self._lease = self.ledger.r.register_script(lua_script("follow.lua"))
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        self._stopping = threading.Event()
        self._renewer: threading.Thread | None = None

    def wants(self, rate: float) -> bool:
        """Whether a pod whose log grows by ``rate`` lines a second is worth following."""
        return self.max_pods > 0 and rate >= self.min_rate

    def following(self) -> list[str]:
        """The uids of the pods this process follows now."""
        with self._lock:
            return list(self._streams)

    def offer(self, name: str, uid: str) -> bool:
        """Follow pod ``name`` (uid ``uid``) if this process has room and no one follows
        it. True when this process follows it now. Raises ``redis.RedisError``."""
        with self._lock:
            if self._stopping.is_set() or len(self._streams) >= self.max_pods:
                return uid in self._streams
            if uid in self._streams:
                return True
            token = secrets.token_hex(8)
            if not self.ledger.r.set(lease_key(self.ledger, uid), f"{token} {Lease.BUSY}", nx=True, ex=LEASE_TTL):
                return False
            self.ledger.r.sadd(self.ledger.k("followed"), uid)  # for the gauge (app/metrics.py)
            stream = _Stream(self, name, uid, token)
            self._streams[uid] = stream
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew, name="follow-leases", daemon=True)
                self._renewer.start()
            stream.thread.start()
        log.info("following the log of pod %s", name, extra={"pod": name, "outcome": "follow"})
        self._incr({"follow_started": 1})
        return True

    def stop(self, timeout: float) -> None:
        """End every stream (each commits what it read and releases its lease), waiting at
        most ``timeout`` seconds in all."""
        self._stopping.set()
        with self._lock:
            streams = list(self._streams.values())
        for s in streams:
            s.stop()
        end = time.monotonic() + timeout
        for s in streams:
            s.thread.join(max(0.0, end - time.monotonic()))

    def _renew(self) -> None:
        """Every ``TICK``: renew each stream's lease with its state; a stream whose lease
        is gone (expired and taken by another) stops."""
        while not self._stopping.wait(TICK):
            with self._lock:
                streams = list(self._streams.values())
            if not streams:  # nothing to renew: no round trip for the time either
                continue
            try:
                # Before the states are judged: a QUIET held at this time (a probe dates
                # what it records from it: Fetcher._probe_read_at).
                at = f"{self.ledger.now():.6f}"
            except redis.RedisError as e:
                log.warning("follow: could not renew the leases: %s", type(e).__name__)
                continue
            now = time.monotonic()
            for s in streams:
                if s.releasing:
                    continue
                state = Lease.QUIET if s.quiet(now) else Lease.BUSY
                try:
                    held = self._lease(keys=[lease_key(self.ledger, s.uid)], args=[s.token, state, LEASE_TTL, at])
                except redis.RedisError as e:
                    log.warning("follow %s: could not renew its lease: %s", s.name, type(e).__name__)
                    continue
                if not held:
                    log.warning("follow %s: its lease was lost; stopping", s.name)
                    s.stop()

    def _done(self, stream: _Stream, reason: str) -> None:
        """The stream ended: release its lease and count why, then drop it, so that
        ``following()`` no longer names a pod only once all of that is done (until
        then an offer of the pod finds it still followed)."""
        stream.releasing = True
        try:
            self._lease(keys=[lease_key(self.ledger, stream.uid)], args=[stream.token, "", 0])
            self.ledger.r.srem(self.ledger.k("followed"), stream.uid)
        except redis.RedisError as e:  # it expires on its own
            log.warning("follow %s: could not release its lease: %s", stream.name, type(e).__name__)
        log.info("no longer following the log of pod %s: %s", stream.name, reason,
                 extra={"pod": stream.name, "outcome": "unfollow"})
        self._incr({f"follow_ended:{reason.split(' ')[0]}": 1})
        with self._lock:
            self._streams.pop(stream.uid, None)

    def _incr(self, counters: dict[str, int]) -> None:
        try:
            self.ledger.incr(counters)
        except redis.RedisError as e:
            log.warning("follow: could not count %s: %s", list(counters), type(e).__name__)


class _Stream:
    """One followed pod: its thread, its lease token, and the stream it holds."""

    def __init__(self, follower: Follower, name: str, uid: str, token: str) -> None:
        self.follower = follower
        self.name = name
        self.uid = uid
        self.token = token
        self.last_byte = time.monotonic()  # when the last chunk was taken from the stream
        self.last_received = self.last_byte  # when the reader thread last got a chunk
        self.new_lines = 0  # lines the current stream counted
        self.committed_at = self.last_byte  # when the last slice was committed (or had nothing to)
        self.chunks: queue.Queue[bytes | _End] | None = None
        self.ended = ""  # why the current slice ended the stream ("" while it runs on)
        self.warned_behind = False
        self.releasing = False  # its thread is releasing the lease: not renewed again
        self._stopped = threading.Event()
        self._open: LogFollow | None = None
        self._open_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"follow-{name}", daemon=True)

    def quiet(self, now: float) -> bool:
        """No byte for ``slice_seconds``, none waiting, and every one taken committed:
        a read of the pod that finds nothing new proves it was read to its end. A chunk
        the reader thread got counts from then, before it is queued."""
        chunks = self.chunks
        return (now - max(self.last_byte, self.last_received) >= self.follower.slice_seconds
                and self.committed_at > self.last_byte and (chunks is None or chunks.empty()))

    def _received(self) -> None:
        self.last_received = time.monotonic()

    def stop(self) -> None:
        self._stopped.set()
        with self._open_lock:
            if self._open is not None:
                self._open.stop()

    def _run(self) -> None:
        reason = "stopped"
        try:
            reason = self._follow()
        except PodGone:
            reason = "gone"
        except KubeError as e:
            reason = f"kube_error ({e})"
        except LedgerLost as e:
            reason = f"ledger_lost ({e})"
        except redis.RedisError as e:
            reason = f"redis_error ({type(e).__name__})"
        except Exception:  # the thread's top: a bug ends this stream, not the worker
            log.exception("follow %s: unexpected error", self.name)
            reason = "error"
        finally:
            self.follower._done(self, reason)

    def _follow(self) -> str:
        """Follow the pod until there is a reason not to; that reason."""
        fetcher = self.follower.fetcher
        ledger = fetcher.ledger
        source = fetcher.source
        empty = 0  # streams in a row that ended without a byte
        while not self._stopped.is_set():
            start_at = ledger.start_at_ns()
            if start_at is None:
                return "ledger_lost"
            pod = source.get_pod(self.name)
            if pod.uid != self.uid:
                return "gone"
            ctr = pod.container(fetcher.container)
            if ctr is None or not ctr.container_id or not ctr.running:
                if ctr is not None and ctr.container_id:
                    self._final_read(ctr.container_id)
                return "stopped_container"
            field_ = f"{self.uid}/{ctr.name}"
            raw = ledger.cursor_raw(field_)
            cursor = Cursor.decode(raw)
            if cursor is None or cursor.container_id != ctr.container_id:
                return "new_container"  # the rounds read it first (a previous container to drain)
            # The read timeout only ends a stream whose connection died silently: idleness
            # is told by the slices (IDLE_RELEASE), and the stream stopped.
            opened = source.follow_log(self.name, ctr.name, cursor.floor_ns or start_at, IDLE_RELEASE + 30)
            with self._open_lock:
                self._open = opened
                if self._stopped.is_set():
                    opened.stop()
            chunks: queue.Queue[bytes | _End] = queue.Queue(maxsize=QUEUED_CHUNKS)
            self.chunks = chunks
            reader = threading.Thread(target=_read, args=(opened, chunks, self._received), name=f"follow-read-{self.name}",
                                      daemon=True)
            reader.start()
            try:
                outcome = self._consume(pod, ctr, field_, raw, cursor, start_at, chunks)
            finally:
                opened.stop()
                while reader.is_alive():  # let the reader put its last chunk, and end
                    try:
                        chunks.get(timeout=0.05)
                    except queue.Empty:
                        pass
            if outcome:
                return outcome
            # The stream ended (the container stopped, or the connection broke): look at
            # the pod again, and follow on from the cursor if it still runs; after a stream
            # with no new line, not at once (a container whose status lags its exit).
            empty = 0 if self.new_lines else empty + 1
            if empty >= MAX_EMPTY_STREAMS:
                return "broken"
            if empty and self._stopped.wait(REOPEN_WAIT * 2 ** (empty - 1)):
                break
        return "stopped"

    def _final_read(self, container_id: str) -> None:
        """The container stopped: read its log from the cursor to its end before letting go
        (a plain read, which records the pod as read to its end), and say so
        (``Ledger.mark_read_to_end``) for the pod watcher, which may find the pod gone before its
        own final read (the lease kept it from reading while the stream ran)."""
        fetcher = self.follower.fetcher
        summary = fetcher.fetch(self.name, self.uid)
        if summary.get("status") == FetchStatus.OK and summary.get("cut") is False:
            fetcher.ledger.mark_read_to_end(self.uid, container_id)

    def _consume(self, pod: Pod, ctr: Container, field_: str, raw: str, cursor: Cursor, start_at: int,
                 chunks: queue.Queue[bytes | _End]) -> str:
        """Count and commit one stream, slice by slice, until it ends. A reason to let the
        pod go ("" when the stream merely ended: it is opened again)."""
        fetcher = self.follower.fetcher
        state = ReadState.of(cursor, fetcher.max_line)
        state.follow = True
        checked = False  # the pod looked at after a commit of this stream's lines
        self.ended = ""
        self.new_lines = 0
        while not self.ended:
            res = consume(self._slice(chunks), cursor, start_at, NO_LIMIT, fetcher.domain, fetcher.window,
                          fetcher.max_line, fetcher.ledger.ri, state=state)
            summary: dict = {"consumed": 0, "counted": 0}
            if not fetcher._commit(pod, ctr, field_, raw, res, summary, ctr.container_id, endless=True,
                                   check_pod=not checked):
                return str(summary.get("status", "conflict"))
            self.committed_at = time.monotonic()
            if res.repeated:
                self._repeated(res.repeated)
            if res.old:
                self._old(res.old, res.cursor)
            if res.consumed or res.repeated:  # lines judged repeats go into the cursor too
                cursor, raw = res.cursor, res.cursor.encode()
            if res.consumed:
                checked = True
                self.new_lines += res.consumed
                if chunks.qsize():
                    self._check_behind(cursor.high_ns)
                else:
                    self.warned_behind = False  # caught up: a later fall behind is warned about again
        return self.ended if self.ended in ("idle", "stopped") else ""

    def _old(self, n: int, cursor: Cursor) -> None:
        """The stream sent lines stamped more than ``LOG_REORDER_WINDOW`` before its newest
        one: a file the kubelet sent again from its start (a stream more than one rotation
        behind: each Create event of the log's path reopens it in ``waitLogs``), whose
        lines would be counted twice, or a clock stepped back. Not counted (see
        ``app.fetching.consume``)."""
        log.warning("follow %s: the stream sent %d line(s) stamped more than LOG_REORDER_WINDOW before its newest "
                    "(a file sent again from its start, or a clock stepped back); not counted; newest %s",
                    self.name, n, fmt_ns(cursor.high_ns), extra={"pod": self.name, "outcome": "follow_old"})
        self.follower._incr({"follow_old_lines": n})

    def _repeated(self, n: int) -> None:
        """The stream sent lines it had sent before (the kubelet read a file again from its
        start: a stream more than one rotation behind); they were not counted again."""
        log.warning("follow %s: the stream sent %d line(s) again (a file read again from its start: the stream "
                    "fell more than a log rotation behind, and a file between may be lost); not counted again",
                    self.name, n, extra={"pod": self.name, "outcome": "follow_repeated"})
        self.follower._incr({"follow_repeated_lines": n})

    def _check_behind(self, high_ns: int) -> None:
        """Warn once per stream when the stream has bytes waiting and its newest line is
        more than ``BEHIND_WARN`` seconds old: the pod writes faster than this process
        counts. Should the stream fall a whole log file behind, the kubelet skips that
        file (at the end of the renamed file it opens the current one), and its lines
        are lost with no gap to show for it."""
        if self.warned_behind:
            return
        ledger = self.follower.ledger
        behind = ledger.now() - high_ns / 1e9
        if behind <= BEHIND_WARN:
            return
        self.warned_behind = True
        log.warning(
            "the follow stream of pod %s is %.0f s behind its log: the pod writes faster than this fetch worker "
            "counts, and a stream a whole log file behind loses that file (lines lost, no gap recorded). Give it "
            "room: lower FOLLOW_MAX_PODS so that more fetch workers share the busy pods, add fetch workers, or "
            "raise the kubelet's containerLogMaxSize", self.name, behind,
            extra={"pod": self.name, "outcome": "follow_behind"},
        )
        self.follower._incr({"follow_behind": 1})

    def _slice(self, chunks: queue.Queue[bytes | _End]) -> Iterator[bytes]:
        """The stream's chunks for one slice: until ``slice_seconds`` have passed (bytes
        or none), ``PAUSE_COMMIT`` has passed without a chunk after some, ``SLICE_BYTES``
        were taken, or the stream ends or has been silent for ``IDLE_RELEASE``
        (``self.ended`` says why). The chunks waiting when one is taken go with it, joined
        (a stream catching up: ``consume()`` pays per chunk as well as per line)."""
        end = time.monotonic() + self.follower.slice_seconds
        taken = 0
        while (left := end - time.monotonic()) > 0 and taken < SLICE_BYTES:
            try:
                item = chunks.get(timeout=min(left, PAUSE_COMMIT) if taken else left)
            except queue.Empty:
                if taken:
                    return  # a pause after bytes: commit them now
                if time.monotonic() - self.last_byte >= IDLE_RELEASE:
                    self.ended = "idle"
                return
            if isinstance(item, _End):
                self.ended = "stopped" if self._stopped.is_set() else item.reason
                return
            self.last_byte = time.monotonic()  # taken: not quiet while it is counted
            joined = [item]
            size = len(item)
            end_item: _End | None = None
            while size < JOIN_BYTES:
                try:
                    more = chunks.get_nowait()
                except queue.Empty:
                    break
                if isinstance(more, _End):
                    end_item = more
                    break
                joined.append(more)
                size += len(more)
            self.last_byte = time.monotonic()
            taken += size
            yield item if len(joined) == 1 else b"".join(joined)
            if end_item is not None:
                self.ended = "stopped" if self._stopped.is_set() else end_item.reason
                return


class _End:
    """The end of a stream, put after its last chunk: ``eof`` or ``broken``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _read(opened: LogFollow, chunks: queue.Queue[bytes | _End], received: Callable[[], None]) -> None:
    """A stream's reader thread: its chunks into ``chunks`` (bounded: a slow commit holds
    the stream back, not memory), each first told to ``received``, then an ``_End``."""
    try:
        for chunk in opened.chunks():
            received()
            chunks.put(chunk)
        chunks.put(_End("eof"))
    except KubeError as e:
        log.info("%s", e)
        chunks.put(_End("broken"))
    except Exception:  # the thread's top: the counting thread must hear of the end
        log.exception("%s: the stream's reader failed", opened.what)
        chunks.put(_End("broken"))
