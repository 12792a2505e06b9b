"""Reading one Traefik pod's log from its cursor and committing the counts, exactly once.

The cursor of a (pod uid, container) is the container id, T = the time of the last
complete line consumed, and N = how many consumed lines carry exactly T. A read asks
``sinceTime = floor(T)`` (the apiserver honours whole seconds only), drops the lines
before T and the first N lines at T, and never consumes a partial last line. The
counts and the new cursor go to Redis in one script that first checks the cursor is
still the one this read started from, so a redelivered, duplicated or concurrent
fetch changes nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from app.errors import KubeError, KubeForbidden, LedgerLost, NoPreviousLog, PodGone
from app.kube import Container, LogSource, Pod
from app.ledger import Ledger
from app.model import CommitStatus, Cursor, FetchStatus
from app.parser import Aggregator

log = logging.getLogger(__name__)

BATCH_LINES = 2048
NO_ACCESS_WARN_AFTER = 3  # reads with lines but no access line before the warning


def parse_timestamp(line: bytes) -> tuple[int, int] | None:
    """``(t_ns, start of the log text)`` of a kubelet ``timestamps=true`` line.

    The prefix is RFC3339Nano with 9 fraction digits and a space; kubelets older than
    1.19 trim trailing zeros of the fraction (and the dot when it is zero).
    """
    space = line.find(b" ", 0, 40)
    if space < 20 or line[space - 1 : space] != b"Z":
        return None
    try:
        secs = _epoch_seconds(line[:19])
    except ValueError:
        return None
    frac = line[19 : space - 1]
    nanos = 0
    if frac:
        digits = frac[1:]
        if frac[:1] != b"." or not digits.isdigit() or len(digits) > 9:
            return None
        nanos = int(digits.ljust(9, b"0"))
    return secs * 1_000_000_000 + nanos, space + 1


_SECONDS_CACHE: dict[bytes, int] = {}


def _epoch_seconds(stamp: bytes) -> int:
    """Seconds since the epoch of ``YYYY-MM-DDTHH:MM:SS``; the date part is cached."""
    day = _SECONDS_CACHE.get(stamp[:10])
    if day is None:
        if len(_SECONDS_CACHE) > 64:
            _SECONDS_CACHE.clear()
        day = int(datetime.strptime(stamp[:10].decode("ascii"), "%Y-%m-%d").replace(tzinfo=UTC).timestamp())
        _SECONDS_CACHE[stamp[:10]] = day
    if stamp[10:11] != b"T" or stamp[13:14] != b":" or stamp[16:17] != b":":
        raise ValueError("bad time")
    h, m, s = int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19])
    if h > 23 or m > 59 or s > 60:
        raise ValueError("bad time")
    return day + h * 3600 + m * 60 + s


def complete_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines ending in a newline, without it; an unfinished last line is dropped."""
    tail = b""
    for chunk in chunks:
        if not chunk:
            continue
        data = tail + chunk if tail else chunk
        end = data.rfind(b"\n")
        if end < 0:
            tail = data
            continue
        yield from data[:end].split(b"\n")
        tail = data[end + 1 :]


def fmt_ns(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{t_ns % 1_000_000_000:09d}Z"


@dataclass
class ReadResult:
    """What one read of a container's log consumed."""

    agg: Aggregator
    cursor: Cursor  # after the consumed lines (unchanged when none)
    consumed: int = 0
    received: int = 0  # bytes, for the limitBytes check
    cut: bool = False  # the read hit limitBytes: more is waiting
    gap_from_ns: int | None = None  # rotation past the cursor: span start
    gap_to_ns: int | None = None
    extra: dict[str, int] = field(default_factory=dict)  # counters beyond the parser's


def consume(
    chunks: Iterable[bytes],
    cursor: Cursor,
    start_at_ns: int,
    limit_bytes: int,
    domain: str,
) -> ReadResult:
    """Walk a log stream from ``floor(cursor.T)`` and aggregate what is new."""
    agg = Aggregator(domain)
    res = ReadResult(agg=agg, cursor=cursor)
    t, n = cursor.t_ns, cursor.n
    skip_at_t = cursor.n  # lines at exactly T already consumed
    check_rotation = cursor.t_ns > 0 and cursor.n > 0
    batch: list[bytes] = []
    before_start = no_ts = 0

    def counting(stream: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in stream:
            res.received += len(chunk)
            yield chunk

    for line in complete_lines(counting(chunks)):
        parsed = parse_timestamp(line)
        if parsed is None:
            no_ts += 1
            continue
        ts, off = parsed
        if ts < cursor.t_ns:
            continue
        if check_rotation:
            check_rotation = False
            if ts > cursor.t_ns:
                # The cursor's own lines are gone: the log was rotated past it.
                res.gap_from_ns, res.gap_to_ns = cursor.t_ns, ts
        if ts == cursor.t_ns and skip_at_t:
            skip_at_t -= 1
            continue
        # Consumed from here on.
        if ts == t:
            n += 1
        else:
            t, n = ts, 1
        res.consumed += 1
        if ts < start_at_ns:
            before_start += 1
            continue
        batch.append(line[off:])
        if len(batch) >= BATCH_LINES:
            agg.feed_lines(batch)
            batch = []
    if batch:
        agg.feed_lines(batch)
    res.cut = res.received >= limit_bytes
    res.cursor = Cursor(cursor.container_id, t, n) if res.consumed else cursor
    if before_start:
        res.extra["ignored:before_start"] = before_start
    if no_ts:
        res.extra["rejected:no_timestamp"] = no_ts
    return res


def counters_of(res: ReadResult) -> dict[str, int]:
    agg = res.agg
    out = {
        "lines_read": agg.total + sum(res.extra.values()),
        "lines_counted": agg.counted,
        "bytes_in": sum(v[0] for v in agg.subdomains.values()),
        "bytes_out": sum(v[1] for v in agg.subdomains.values()),
        "requests": sum(v[2] for v in agg.subdomains.values()),
    }
    for reason, count in agg.ignored.items():
        out[f"ignored:{reason}"] = count
    for reason, count in agg.rejected.items():
        out[f"rejected:{reason}"] = count
    out.update(res.extra)
    return out


class Fetcher:
    """Fetches pods' logs into the ledger. One per worker process."""

    def __init__(self, source: LogSource, ledger: Ledger, *, domain: str, container: str, limit_bytes: int) -> None:
        self.source = source
        self.ledger = ledger
        self.domain = domain
        self.container = container
        self.limit = limit_bytes

    def fetch(self, name: str, uid: str) -> dict:
        """Read one pod from its cursor and commit. Handled errors are returned, never raised."""
        ns = self.source.namespace
        try:
            start_at = self.ledger.start_at_ns()
            if start_at is None:
                raise LedgerLost(
                    "the ledger has no initialisation record: Redis lost its data or was never "
                    "initialised; refusing to read logs (that would bill them again). Run "
                    "`traefik-metrics-scraper init-ledger --start-at <time of the last report delivered>`"
                )
            return self._fetch(ns, name, uid, start_at)
        except LedgerLost as e:
            log.error("fetch %s/%s: %s", ns, name, e)
            return {"pod": name, "status": FetchStatus.LEDGER_LOST}
        except PodGone:
            log.info("fetch %s/%s: pod is gone", ns, name)
            self.ledger.update_pod_state(uid, gone_at=self.ledger.now())
            return {"pod": name, "status": FetchStatus.GONE}
        except KubeForbidden as e:
            log.error("fetch %s/%s: %s", ns, name, e)
            self.ledger.incr({"fetch_errors:forbidden": 1})
            return {"pod": name, "status": FetchStatus.FORBIDDEN}
        except KubeError as e:
            log.warning("fetch %s/%s: %s; the cursor stays, next round retries", ns, name, e)
            self.ledger.incr({"fetch_errors:kube": 1})
            return {"pod": name, "status": FetchStatus.KUBE_ERROR}

    def _fetch(self, ns: str, name: str, uid: str, start_at: int) -> dict:
        pod = self.source.get_pod(name)
        if pod.uid != uid:
            raise PodGone(f"{name} now has uid {pod.uid}")
        ctr = pod.container(self.container)
        if ctr is None or not ctr.container_id:
            return {"pod": name, "status": FetchStatus.NOT_STARTED}
        field_ = f"{uid}/{ctr.name}"
        raw = self.ledger.cursor_raw(field_)
        cursor = Cursor.decode(raw)
        summary = {"pod": name, "status": FetchStatus.OK, "consumed": 0, "counted": 0}

        if cursor is None and ctr.last_terminated_id and ctr.last_finished_ns >= start_at - 1_000_000_000:
            # Never read, and a container already ended after START_AT: its log comes first.
            cursor = Cursor(ctr.last_terminated_id, 0, 0)
        if cursor is not None and cursor.container_id != ctr.container_id:
            # The container restarted since the last read: drain the previous one first.
            raw, cursor, done = self._drain_previous(pod, ctr, field_, raw, cursor, start_at, summary)
            if not done:
                return summary
        if cursor is None:
            cursor = Cursor(ctr.container_id, 0, 0)
        since = cursor.t_ns or start_at
        res = consume(
            self.source.stream_log(name, ctr.name, since, self.limit),
            cursor,
            start_at,
            self.limit,
            self.domain,
        )
        self._commit(pod, ctr, field_, raw, res, summary)
        return summary

    def _drain_previous(self, pod: Pod, ctr: Container, field_: str, raw: str, cursor: Cursor, start_at: int, summary: dict):
        """Read the previous container from the cursor. Returns (raw, cursor, done):
        done is False when this fetch should stop here (more left, or a conflict)."""
        res = None
        reason = ""
        if ctr.last_terminated_id == cursor.container_id:
            try:
                res = consume(
                    self.source.stream_log(pod.name, ctr.name, cursor.t_ns or start_at, self.limit, previous=True),
                    cursor,
                    start_at,
                    self.limit,
                    self.domain,
                )
            except NoPreviousLog as e:
                reason = f"previous container's log unavailable ({e})"
        else:
            reason = "the container restarted more than once between reads; the log of " f"{cursor.container_id} is no longer served"
        if res is not None:
            if res.cut:
                # More of the previous container is waiting: keep draining next round.
                self._commit(pod, ctr, field_, raw, res, summary)
                return raw, cursor, False
            # Fully drained: the cursor moves to the start of the current container.
            res.cursor = Cursor(ctr.container_id, 0, 0)
            if not self._commit(pod, ctr, field_, raw, res, summary):
                return raw, cursor, False
        else:
            moved = Cursor(ctr.container_id, 0, 0)
            result = self.ledger.commit(field_, raw, moved.encode(), {}, {})
            if result.status != CommitStatus.OK:
                summary["status"] = FetchStatus(result.status)
                return raw, cursor, False
            self._gap(pod, ctr, cursor.t_ns, None, reason)
        new = Cursor(ctr.container_id, 0, 0)
        return new.encode(), new, True

    def _gap(self, pod: Pod, ctr: Container, from_ns: int, to_ns: int | None, reason: str) -> None:
        span = f"{fmt_ns(from_ns) if from_ns else 'the start'} .. {fmt_ns(to_ns) if to_ns else 'the start of the new container'}"
        log.warning("GAP in the log of pod %s/%s container %s: lines %s may be lost: %s", pod.namespace, pod.name, ctr.name, span, reason)
        self.ledger.record_gap(
            {
                "pod": pod.name,
                "namespace": pod.namespace,
                "uid": pod.uid,
                "container": ctr.name,
                "from_ns": from_ns,
                "to_ns": to_ns,
                "reason": reason,
                "at": self.ledger.now(),
            }
        )

    def _commit(self, pod: Pod, ctr: Container, field_: str, expected: str, res: ReadResult, summary: dict) -> bool:
        """Commit one read if the container did not change under it. True when committed."""
        if res.consumed == 0 and res.cut:
            log.warning(
                "NO PROGRESS reading pod %s/%s: one second of log at %s holds more than "
                "FETCH_MAX_BYTES (%d); raise FETCH_MAX_BYTES",
                pod.namespace, pod.name, fmt_ns(res.cursor.t_ns) if res.cursor.t_ns else "the start", self.limit,
            )
            self.ledger.incr({"no_progress": 1})
            summary["status"] = FetchStatus.NO_PROGRESS
        if res.consumed == 0 and res.cursor.encode() == expected:
            return True  # nothing new
        # A restart (or a replacement under the same name) between listing and reading
        # means the lines may belong to another container: commit nothing, re-read next round.
        try:
            after = self.source.get_pod(pod.name)
            moved = after.uid != pod.uid or after.container(ctr.name) != ctr
        except PodGone:
            moved = False  # gone after the read: what was read is its final log
        if moved:
            log.info("fetch %s/%s: the container changed during the read; nothing committed", pod.namespace, pod.name)
            self.ledger.incr({"fetch_restarted": 1})
            summary["status"] = FetchStatus.RESTARTED
            return False
        counters = counters_of(res)
        result = self.ledger.commit(field_, expected, res.cursor.encode(), res.agg.subdomains, counters)
        if result.status == CommitStatus.CONFLICT:
            log.info("fetch %s/%s: another fetch committed first; nothing committed", pod.namespace, pod.name)
            self.ledger.incr({"fetch_conflicts": 1})
            summary["status"] = FetchStatus.CONFLICT
            return False
        if result.status == CommitStatus.NO_LEDGER:
            raise LedgerLost("the ledger's initialisation record vanished during the fetch")
        if result.status == CommitStatus.OVERFLOW:
            log.error("fetch %s/%s: counts for %s would overflow a 64-bit counter; nothing committed", pod.namespace, pod.name, result.detail)
            summary["status"] = FetchStatus.OVERFLOW
            return False
        if res.gap_from_ns is not None:
            self._gap(pod, ctr, res.gap_from_ns, res.gap_to_ns, "the log was rotated past the cursor")
        summary["consumed"] += res.consumed
        summary["counted"] += res.agg.counted
        summary["interval"] = int(result.detail)
        self._watch_access(pod, res)
        return True

    def _watch_access(self, pod: Pod, res: ReadResult) -> None:
        """Warn once per pod whose log shows lines but no access lines for a while, and
        once per pod that writes CLF. One read of the pod's state, at most one write."""
        agg = res.agg
        if agg.total == 0:
            return
        state = self.ledger.pod_state(pod.uid)
        changes: dict[str, object] = {}
        if agg.ignored.get("clf_no_host") and not state.get("warned_clf"):
            log.warning(
                "pod %s/%s writes its access log in CLF, which has no Host: traffic cannot be "
                "attributed to tunnels. Set Traefik's accessLog.format to json",
                pod.namespace, pod.name,
            )
            changes["warned_clf"] = True
        if agg.access_lines() > 0:
            if state.get("reads_without_access"):
                changes["reads_without_access"] = 0
        else:
            count = int(state.get("reads_without_access", 0)) + 1
            changes["reads_without_access"] = count
            if count >= NO_ACCESS_WARN_AFTER and not state.get("warned_no_access"):
                log.warning(
                    "pod %s/%s: %d reads showed log lines but no access-log lines. Traefik must write "
                    "its access log to stdout as JSON: set accessLog.format=json, do not set "
                    "accessLog.filePath, and check accessLog.filters",
                    pod.namespace, pod.name, count,
                )
                changes["warned_no_access"] = True
                self.ledger.incr({"pods_without_access_lines": 1})
        if changes:
            self.ledger.update_pod_state(pod.uid, **changes)
