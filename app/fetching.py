"""Reading one Traefik pod's log from its cursor and committing the counts, exactly once.

The cursor of a (pod uid, container) (``app.model.Cursor``) is the container id, the
highest stamp consumed H, a floor F = H - W that never moves backwards (W =
``LOG_REORDER_WINDOW``), and the fingerprints of the consumed lines stamped at or
after F. Stamps are monotonic per stream only (stdout and stderr are stamped by
separate readers), so lines are told apart by fingerprint, not by position. A read
asks ``sinceTime = floor(F)`` (the apiserver honours whole seconds only), takes the
lines before F and those matching a fingerprint as consumed, and never consumes a
partial last line. The counts and the new cursor go to Redis in one script that
first checks (by digest) that the cursor is still the one this read started from, so
a redelivered, duplicated or concurrent fetch changes nothing twice.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import operator
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from app.errors import KubeError, KubeForbidden, LedgerLost, NoPreviousLog, PodGone
from app.kube import Container, LogSource, Pod
from app.ledger import Ledger, Partial
from app.model import CommitStatus, Cursor, FetchStatus, fingerprint
from app.parser import LINE_PREFIX_ROOM, MAX_LINE_BYTES, Aggregator, LineFramer

log = logging.getLogger(__name__)

BATCH_LINES = 2048
NO_ACCESS_WARN_AFTER = 3  # reads with lines but no access line before the warning
# LOG_REORDER_WINDOW's default (app/settings.py says why), for callers without settings.
DEFAULT_REORDER_WINDOW_NS = 1_000_000_000
UNREADABLE_STAMP_REASONS = ("rejected:bad_timestamp", "rejected:no_timestamp")
# A probe of a followed pod (Fetcher.fetch(probe=True)) that finds new lines stamped this
# many seconds before it started counts them itself: the follow stream should have
# delivered and committed them by then (it commits every FETCH_MIN_INTERVAL, 1 s by
# default; the kubelet's follow reader looks at the file at least every second; 0.5 s
# more for the clocks). A probe runs only once the stream took no byte for
# FETCH_MIN_INTERVAL and committed all it took (Lease.QUIET).
STALLED_AFTER = 2.5
# consume()'s batch path takes a framed batch of at least this many lines whole.
FAST_BATCH_MIN = 8
_UTC_STAMP_SHAPE = b"0000-00-00T00:00:00.000000000Z "  # RFC3339NanoFixed in UTC, and the space
_STAMP_HEAD = operator.itemgetter(slice(0, len(_UTC_STAMP_SHAPE)))
_AFTER_STAMP = operator.itemgetter(slice(len(_UTC_STAMP_SHAPE), None))
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")


def parse_timestamp(line: bytes) -> tuple[int, int] | None:
    """``(t_ns UTC, start of the log text)`` of a kubelet ``timestamps=true`` line.

    The prefix is RFC 3339 with a zone and a space. The kubelet writes
    ``time.Format("2006-01-02T15:04:05.000000000Z07:00")`` of the runtime's stamp
    (``RFC3339NanoFixed`` in pkg/kubelet/kuberuntime/logs/logs.go), keeping the offset
    the runtime wrote: ``Z``, or ``+08:00`` when containerd stamps in the node's local
    zone, numeric offsets from CRI-O. Kubelets older than 1.19 trim trailing zeros of
    the fraction (and the dot when it is zero): 0 to 9 fraction digits are accepted.
    Go writes ``Z`` for a zero offset, so ``+00:00`` / ``-00:00`` never come from a
    kubelet and are refused. ``None`` when the prefix cannot be read.
    """
    # Fast path: the fixed-width form (9 digits), "Z" or a known offset, a minute seen before.
    if line[19:20] == b".":
        if line[29:31] == b"Z ":
            zone, off = 0, 31
        elif line[35:36] == b" ":
            zone, off = _ZONES.get(line[29:35]), 36
        else:
            zone = None
        if zone is not None:
            base = _MINUTES.get(line[:17])
            sec = line[17:19]
            digits = line[20:29]
            if base is not None and sec.isdigit() and sec <= b"60" and digits.isdigit():
                return (base + int(sec) - zone) * 1_000_000_000 + int(digits), off
    return _parse_timestamp_any(line)


def _parse_timestamp_any(line: bytes) -> tuple[int, int] | None:
    space = line.find(b" ", 0, 36)  # the longest prefix: 19 + 10 + 6 characters
    if space < 20:
        return None
    stamp = line[:space]
    if stamp[-1:] == b"Z":
        zone, body = 0, stamp[:-1]
    else:
        zone = _ZONES.get(stamp[-6:])
        if zone is None:
            return None
        body = stamp[:-6]
    base = _minute_epoch(body[:17])
    sec = body[17:19]
    if base is None or len(sec) != 2 or not sec.isdigit() or sec > b"60":
        return None
    frac = body[19:]
    nanos = 0
    if frac:
        digits = frac[1:]
        if frac[:1] != b"." or not digits.isdigit() or len(digits) > 9:
            return None
        nanos = int(digits.ljust(9, b"0"))
    return (base + int(sec) - zone) * 1_000_000_000 + nanos, space + 1


# "+HH:MM" / "-HH:MM" -> seconds east of UTC; no "+00:00" or "-00:00" (Go writes "Z").
_ZONES: dict[bytes, int] = {
    f"{sign}{h:02d}:{m:02d}".encode(): (1 if sign == "+" else -1) * (h * 3600 + m * 60)
    for sign in "+-"
    for h in range(24)
    for m in range(60)
    if h or m
}
# "YYYY-MM-DDTHH:MM:" -> epoch seconds of that minute (as if UTC), filled by _minute_epoch.
_MINUTES: dict[bytes, int] = {}


def _minute_epoch(head: bytes) -> int | None:
    """Seconds since the epoch of ``YYYY-MM-DDTHH:MM:`` read as UTC, or ``None``."""
    base = _MINUTES.get(head)
    if base is not None:
        return base
    if (
        len(head) != 17
        or head[4:5] != b"-" or head[7:8] != b"-" or head[10:11] != b"T"
        or head[13:14] != b":" or head[16:17] != b":"
        or not (head[:4] + head[5:7] + head[8:10] + head[11:13] + head[14:16]).isdigit()
    ):
        return None
    try:
        day = datetime.strptime(head[:10].decode("ascii"), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    h, m = int(head[11:13]), int(head[14:16])
    if h > 23 or m > 59:
        return None
    base = int(day.timestamp()) + h * 3600 + m * 60
    if len(_MINUTES) >= 4096:
        _MINUTES.clear()
    _MINUTES[head] = base
    return base


def fmt_ns(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{t_ns % 1_000_000_000:09d}Z"


class IntervalSums:
    """Counts lines into the report interval that holds each line's time (docs/design.md,
    "Sealing"): ``[k * interval, (k + 1) * interval)`` in UTC seconds, aligned to the
    epoch. Lines come in batches to one ``Aggregator`` per interval; a read in log order
    changes interval rarely, so the batches stay long."""

    def __init__(self, domain: str, max_line_bytes: int, interval: int) -> None:
        if interval < 1:
            raise ValueError(f"a report interval is at least 1 s, not {interval}")
        self.domain = domain
        self.max_line = max_line_bytes
        self.interval = interval
        self._ri_ns = interval * 1_000_000_000
        self.parts: dict[int, Aggregator] = {}
        self._hosts: dict[str, tuple[str | None, str]] = {}  # one host classification cache for all parts
        self._start: int | None = None
        self._batch: list[bytes] = []

    def add(self, t_ns: int, line: bytes) -> None:
        """Count ``line`` (without its newline or kubelet prefix) at time ``t_ns`` (UTC ns)."""
        self.add_many(t_ns, (line,))

    def add_many(self, t_ns: int, lines: Iterable[bytes]) -> None:
        """Count ``lines`` (without their newline or kubelet prefix), all in the interval
        holding ``t_ns`` (UTC ns), as ``add`` would one by one."""
        start = t_ns // self._ri_ns * self.interval
        if start != self._start:
            self._flush()
            self._start = start
        self._batch.extend(lines)
        while len(self._batch) >= BATCH_LINES:  # the groups add() would make, line by line
            rest = self._batch[BATCH_LINES:]
            del self._batch[BATCH_LINES:]
            self._flush()
            self._batch = rest

    def _flush(self) -> None:
        if self._batch and self._start is not None:
            agg = self.parts.get(self._start)
            if agg is None:
                agg = self.parts[self._start] = Aggregator(self.domain, self.max_line, self._hosts)
            agg.feed_lines(self._batch)
        self._batch = []

    def finish(self) -> Aggregator:
        """The sums of every interval together (for counters and warnings)."""
        self._flush()
        total = Aggregator(self.domain, self.max_line)
        for start in sorted(self.parts):
            total.merge(self.parts[start])
        return total

    def partials(self) -> dict[int, Partial]:
        """Interval start -> its sums, for ``Ledger.commit`` (intervals with tunnel counts only)."""
        return {start: Partial(agg.subdomains, agg.unmetered) for start, agg in self.parts.items() if agg.subdomains}


@dataclass
class ReadState:
    """Where ``consume`` is in one log stream, carried from one slice of a stream to the
    next (``app/follow.py``): the unfinished last line (in ``framer``), the stamp of the
    last line, and, until a new line is met, the cursor's lines not yet met again."""

    framer: LineFramer
    prev_ts: int | None
    remaining: dict[tuple[int, bytes], int]  # the cursor's lines not met yet: (stamp, fingerprint) -> count
    unmatched: int
    legacy_left: int  # old-form cursor: lines stamped exactly at its floor not met yet
    check_gap: bool
    past_consumed: bool = False  # a new line was met: every line after it is new
    matched: int = 0
    matched_legacy: dict[tuple[int, bytes], int] = field(default_factory=dict)
    # A follow stream (app/follow.py): once past the cursor's lines, a line stamped more
    # than the window before the newest is old (``ReadResult.old``), and one stamped within
    # the window, up to the newest, that this stream consumed already is a repeat
    # (``ReadResult.repeated``); neither is counted.
    follow: bool = False
    # The second the stream was asked from (sinceTime): its cursor's floor, or the
    # ledger's start for a cursor never read; set by the stream's first ``consume``.
    asked_ns: int | None = None

    @classmethod
    def of(cls, cursor: Cursor, max_line_bytes: int = MAX_LINE_BYTES) -> ReadState:
        """The state at the start of a read from ``cursor``."""
        remaining = cursor.counts()
        unmatched = sum(remaining.values())
        # A line whose prefix cannot be read takes the stamp of the line before it in this
        # read, so that its fingerprint is the same in every read that returns it. First in
        # a read from a cursor that consumed lines, it is one of those: a re-read starts with
        # consumed lines (the newest one is stamped at or after F, so it comes back unless
        # the log rotated), and its predecessor may be older than sinceTime: taken as
        # consumed. First in a first read, it takes H.
        prev_ts = None if (cursor.seen or cursor.legacy_n) else cursor.high_ns
        return cls(LineFramer(max_line_bytes + LINE_PREFIX_ROOM), prev_ts, remaining, unmatched, cursor.legacy_n,
                   check_gap=unmatched + cursor.legacy_n > 0)


@dataclass
class ReadResult:
    """What one read of a container's log consumed."""

    agg: Aggregator  # every interval's sums together
    cursor: Cursor  # after the consumed lines (unchanged when none)
    consumed: int = 0
    received: int = 0  # bytes, for the limitBytes check
    cut: bool = False  # the read hit limitBytes: more is waiting
    gap_from_ns: int | None = None  # rotation past the cursor: span start
    gap_to_ns: int | None = None
    late: int = 0  # new lines stamped before the floor (more than the window behind H)
    repeated: int = 0  # a follow stream's lines sent again (ReadState.follow): not counted
    old: int = 0  # a follow stream's lines stamped more than the window before its newest: not counted
    first_new_ns: int | None = None  # the stamp of the first new line
    matched: int = 0  # lines of the cursor's met again (its fingerprints, or the legacy count)
    extra: dict[str, int] = field(default_factory=dict)  # counters beyond the parser's
    parts: dict[int, Partial] = field(default_factory=dict)  # interval start -> its sums


def consume(
    chunks: Iterable[bytes],
    cursor: Cursor,
    start_at_ns: int,
    limit_bytes: int,
    domain: str,
    window_ns: int = DEFAULT_REORDER_WINDOW_NS,
    max_line_bytes: int = MAX_LINE_BYTES,
    report_interval: int = 60,
    state: ReadState | None = None,
) -> ReadResult:
    """Walk a log stream read from ``floor(cursor.floor_ns)`` and aggregate what is new,
    each line into the report interval (``report_interval`` seconds) holding its stamp
    (``res.parts``; ``res.agg`` sums them all).

    A line stamped before the cursor's floor F is taken as consumed; one at or after F
    is consumed iff it matches a remaining count of the cursor's fingerprints (each
    occurrence matches one count). The rest is new: counted, and fingerprinted into
    the new cursor when it lands within ``window_ns`` of the new highest stamp H.
    The floor then moves to ``max(F, H - window_ns)``.

    The kubelet drops each line stamped before sinceTime on its own (``if
    msg.timestamp.Before(w.opts.since)`` in ``(*logWriter).write``,
    pkg/kubelet/kuberuntime/logs/logs.go), and a read asks sinceTime = floor(F): a line
    written more than ``window_ns`` after a line stamped later than it is never
    returned, and is lost. The window covers the runtime's stream skew (a few ms).

    All consumed lines come before all new ones in log order, so once a new line has been
    met every later line is new whatever its stamp: a line stamped before F there (a node
    clock stepped back, a stream stalled longer than the window) is counted, and counted
    in ``late``. Only lines stamped before ``floor(F)``'s second are never returned.

    Lines come framed in batches, one per chunk. Once past the cursor's lines, a batch
    whose lines all carry a well-formed fixed-width UTC stamp of one minute and one
    interval, none before F or the ledger's start, is counted whole (``_uniform_batch``:
    checks in C, no per-line Python); any other batch is walked line by line. Both give
    the same result (``tests/unit/test_consume_batch.py``); the batch path made a read of
    kubelet-served Traefik lines about 1.5 times as fast (``bench/parse.py``).

    A stream read in slices (a ``follow=true`` stream, ``app/follow.py``) passes one
    ``state`` (``ReadState.of(cursor)``) to every slice, each with the cursor its previous
    slice committed (or the same cursor when that slice consumed nothing): the slices
    then give what one read of the whole stream would.
    """
    sums = IntervalSums(domain, max_line_bytes, report_interval)
    res = ReadResult(agg=Aggregator(domain, max_line_bytes), cursor=cursor)
    st = state if state is not None else ReadState.of(cursor, max_line_bytes)
    if st.asked_ns is None:  # what every caller asks: sinceTime = floor(F), or the start's second
        st.asked_ns = (cursor.floor_ns or start_at_ns) // 1_000_000_000 * 1_000_000_000
    floor, old_high = cursor.floor_ns, cursor.high_ns
    remaining = st.remaining  # counts of the cursor's lines not yet met in this read
    unmatched = st.unmatched
    legacy_left = st.legacy_left  # old form: the first n lines stamped exactly floor
    matched = st.matched
    matched_legacy = st.matched_legacy
    check_gap = st.check_gap
    high = old_high
    past_consumed = st.past_consumed  # a new line was met: every line after it is new
    tail: list[tuple[int, bytes]] = []  # new lines that may end within the window of H
    prune_at = 4096
    prev_ts = st.prev_ts  # the stamp an unreadable prefix takes (ReadState.of says why)
    follow = st.follow
    recent: dict[tuple[int, bytes], int] | None = None  # a follow stream's lines within the window, once needed
    # A follow stream: the texts of this read's lines stamped at the newest stamp, and the
    # cursor's fingerprints at its own newest, so that a line at the newest stamp (lines
    # that share one: CRI-O, a burst) is checked against those lines only, not the window.
    at_high: set[bytes] = set()
    cursor_at_high: set[bytes] | None = None

    def cursor_fingerprints_at_high() -> set[bytes]:
        nonlocal cursor_at_high
        if cursor_at_high is None:
            cursor_at_high = {fp for s, fp, _ in cursor.seen if s == old_high}
        return cursor_at_high

    unfolded: list[tuple[int, list[bytes], list[bytes]]] = []  # batch-path batches not in ``recent`` yet
    before_start = 0
    unreadable = {"rejected:no_timestamp": 0, "rejected:bad_timestamp": 0}

    framer = st.framer
    ri_ns = report_interval * 1_000_000_000
    # Lines taken by the batch path that may end within the window of H: (highest stamp,
    # heads, texts) per batch, oldest first; expanded into stamped lines at the end.
    tail_batches: deque[tuple[int, list[bytes], list[bytes]]] = deque()
    batches_prune_at = 16
    for chunk in chunks:
        res.received += len(chunk)
        lines = framer.feed(chunk)
        batch = None  # (lines, their _uniform_batch) the batch path takes whole
        if len(lines) >= FAST_BATCH_MIN and not check_gap:
            # Batch path (see _uniform_batch): past the cursor's lines, every line of a batch
            # in one interval with a well-formed stamp at or after F and the ledger's start is
            # new and counted, so the batch goes to its interval whole. The same outcome as
            # the per-line walk below, which takes every other batch.
            whole = _uniform_batch(lines, ri_ns)
            if whole is not None and whole[0] >= floor and whole[0] >= start_at_ns:
                if not follow or (whole[0] > high and _no_repeat_inside(lines, whole[3])):
                    batch, lines = (lines, whole), []
                elif whole[0] == high and past_consumed and _no_repeat_inside(lines, whole[3]):
                    # A follow stream's chunk that starts with lines at the newest stamp
                    # (lines that share a stamp, cut by a chunk's end): whole too when
                    # none of those is one the walk would take for a repeat.
                    if _new_at_high(lines, whole[3], high, at_high,
                                    cursor_fingerprints_at_high() if high == old_high else None):
                        batch, lines = (lines, whole), []
        for line in lines:
            parsed = parse_timestamp(line)
            if parsed is None:
                if prev_ts is None:
                    continue
                ts, text, readable = prev_ts, line, False
            else:
                ts, off = parsed
                prev_ts = ts
                text, readable = line[off:], True
            if ts < floor:
                if not past_consumed:
                    continue  # consumed before (and pruned from the fingerprints)
                if follow:
                    res.old += 1  # see below
                    continue
                res.late += 1  # after a new line: new too, stamped behind the floor
            elif follow and past_consumed and ts < high - window_ns:
                # A follow stream's line more than the window behind the newest: a file the
                # kubelet sent again (a stream more than one rotation behind: waitLogs
                # reopens the log's path at each Create event) whose lines that old are no
                # longer at hand to tell (the cursor holds the window only), or a clock
                # stepped back. Not counted: counting could bill a line twice, and
                # LOG_REORDER_WINDOW allows a line that late to be lost. Not consumed
                # either (the next cursor's floor is past it); the stream goes on.
                res.old += 1
                continue
            elif ts <= old_high and (unmatched or legacy_left):
                key = (ts, fingerprint(ts, text))
                if legacy_left and ts == floor:
                    legacy_left -= 1
                    matched += 1
                    matched_legacy[key] = matched_legacy.get(key, 0) + 1
                    continue
                count = remaining.get(key)
                if count:
                    remaining[key] = count - 1
                    unmatched -= 1
                    matched += 1
                    continue
            if follow and past_consumed and ts <= high:
                # A follow stream met a line no newer than the newest: the other stream's
                # skew, or the kubelet sending a file again from its start (see above). A
                # line this stream consumed within the window is a repeat: not counted. So
                # is a line identical in stamp and bytes to one consumed (the runtime
                # stamped both in one read of its pipe, as CRI-O's conmon does): only a
                # line that bills nothing can be that (an access line carries its start in
                # ns), and it goes into the cursor as consumed.
                if ts == high and recent is None:
                    # Only a line stamped as the newest can match it: this read's, or the
                    # cursor's while nothing newer was consumed (lines that share a stamp,
                    # CRI-O's or a burst's, are checked without the window's fingerprints).
                    repeat = text in at_high or (high == old_high
                                                 and fingerprint(ts, text) in cursor_fingerprints_at_high())
                else:
                    if recent is None:
                        recent = cursor.counts()
                        unfolded = list(tail_batches)
                        for t, x in tail:
                            if t >= floor:
                                k = (t, fingerprint(t, x))
                                recent[k] = recent.get(k, 0) + 1
                    for t, x in _stamped(unfolded, floor):  # batches taken whole since the last look
                        if t >= floor:
                            k = (t, fingerprint(t, x))
                            recent[k] = recent.get(k, 0) + 1
                    unfolded = []
                    repeat = bool(recent.get((ts, fingerprint(ts, text))))  # not used up: a third sending too
                if repeat:
                    res.repeated += 1
                    # Into the cursor as a consumed line: a later read from the cursor must
                    # not take it, and every line after it, as new.
                    tail.append((ts, text))
                    continue
            # New: consumed from here on.
            if not past_consumed:
                res.first_new_ns = ts
            past_consumed = True
            if readable and check_gap:
                # All consumed lines come before all new ones in log order. None of the
                # cursor's lines was met before this new one: the log lost them, and maybe
                # lines after them (rotated past the cursor). When some were met, only
                # lines already consumed went (a rotation inside the window): no gap.
                # Nothing after a new line was consumed before: stop matching (a line
                # identical to a lost one, same stamp and bytes, is new).
                check_gap = False
                if matched == 0:
                    res.gap_from_ns, res.gap_to_ns = old_high, ts
                unmatched = legacy_left = 0
            res.consumed += 1
            if recent is not None:
                k = (ts, fingerprint(ts, text))
                recent[k] = recent.get(k, 0) + 1
            if ts > high:
                high = ts
                if follow:
                    at_high = {text}
            elif follow and ts == high:
                at_high.add(text)
            if ts >= high - window_ns:
                tail.append((ts, text))
                if len(tail) >= prune_at:
                    tail = [(t, x) for t, x in tail if t >= high - window_ns]
                    prune_at = max(4096, 2 * len(tail))
            if not readable:
                unreadable["rejected:bad_timestamp" if _looks_stamped(line) else "rejected:no_timestamp"] += 1
                continue
            if ts < start_at_ns:
                before_start += 1
                continue
            sums.add(ts, text)
        if batch is not None:
            taken, (low, top, prev_ts, heads) = batch
            if not past_consumed:
                res.first_new_ns = parse_timestamp(heads[0])[0]  # type: ignore[index]  # checked by _uniform_batch
            past_consumed = True
            texts = list(map(_AFTER_STAMP, taken))
            res.consumed += len(taken)
            if follow:  # _no_repeat_inside: the heads are sorted, those at the top come last
                if top > high:
                    at_high = set(texts[heads.index(heads[-1]):])
                else:  # every line at the newest stamp (_new_at_high)
                    at_high.update(texts)
            if top > high:
                high = top
            tail_batches.append((top, heads, texts))
            if recent is not None:
                unfolded.append((top, heads, texts))
            while tail_batches and tail_batches[0][0] < high - window_ns:
                tail_batches.popleft()
            if len(tail_batches) >= batches_prune_at:  # stamps went back: stale ones behind a fresh one
                tail_batches = deque(b for b in tail_batches if b[0] >= high - window_ns)
                batches_prune_at = max(16, 2 * len(tail_batches))
            sums.add_many(low, texts)
    res.agg = sums.finish()
    res.parts = sums.partials()
    res.cut = res.received >= limit_bytes
    st.prev_ts, st.past_consumed, st.check_gap = prev_ts, past_consumed, check_gap
    st.unmatched, st.legacy_left, st.matched = unmatched, legacy_left, matched
    res.matched = matched
    if res.consumed or res.repeated:
        # Never below the second this read asked from: a cursor never read asks from
        # START_AT's second (``floor or start_at_ns``, as every caller does), and lines
        # stamped before it were not returned. A floor under it would have the next read
        # ask from an earlier second and take those unseen lines for new ones, and every
        # line after them too: this read's lines billed twice (a review: a ledger
        # initialised at 05.437, a first read ending at 05.6, F = 04.6, then 04.7 came).
        # (A stream read in slices asked once, at its first slice: ``ReadState.asked_ns``.)
        new_floor = max(floor, high - window_ns, min(st.asked_ns, high))
        counts = cursor.counts()  # consumed lines, met in this read or not
        for key, c in matched_legacy.items():
            counts[key] = counts.get(key, 0) + c
        for t, text in itertools.chain(tail, _stamped(tail_batches, new_floor)):
            if t >= new_floor:
                key = (t, fingerprint(t, text))
                counts[key] = counts.get(key, 0) + 1
        res.cursor = Cursor.build(cursor.container_id, high, new_floor, counts)
        # Past the cursor's lines for good: the next slice's cursor holds the matches.
        st.remaining, st.matched_legacy = {}, {}
    if before_start:
        res.extra["ignored:before_start"] = before_start
    for reason, count in unreadable.items():
        if count:
            res.extra[reason] = count
    return res


def _uniform_batch(lines: list[bytes], ri_ns: int) -> tuple[int, int, int, list[bytes]] | None:
    """``(lowest, highest, last stamp, heads)`` of a batch of lines that all start with a
    well-formed fixed-width UTC kubelet stamp (``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ ``) of one
    minute and one report interval (``ri_ns`` ns long); ``None`` for any other batch.

    Checked in C over the batch rather than per line: the 31-byte heads, joined, with
    every digit mapped to ``0``, must equal the stamp's shape repeated. Such stamps sort
    as bytes in time order, so the lowest and highest are the byte-wise ``min`` and
    ``max``, and parsing those two (``parse_timestamp``) checks the rest: every head lies
    between them, so it shares their minute (checked as a date once) and has a second
    between theirs. ``heads[i]`` is line i's stamp prefix (``parse_timestamp`` reads it).
    """
    heads = list(map(_STAMP_HEAD, lines))
    if b"".join(heads).translate(_DIGITS_TO_ZERO) != _UTC_STAMP_SHAPE * len(heads):
        return None
    low, top = min(heads), max(heads)
    if low[:17] != top[:17]:
        return None
    low_at, top_at = parse_timestamp(low), parse_timestamp(top)
    if low_at is None or top_at is None or low_at[0] // ri_ns != top_at[0] // ri_ns:
        return None
    last = parse_timestamp(heads[-1])
    assert last is not None  # between low and top: readable (see above)
    return low_at[0], top_at[0], last[0], heads


def _no_repeat_inside(lines: list[bytes], heads: list[bytes]) -> bool:
    """Whether a follow stream's batch, all newer than the newest line before it, holds
    no line the per-line walk would take for a repeat: its stamps never go back (a file
    sent again inside one chunk goes back to its first stamp), and no two of its lines are
    identical (same stamp, same text). Checked in C; the lines are hashed only when two
    of them share a stamp (CRI-O stamps a read of its pipe once)."""
    later = itertools.islice(heads, 1, None)
    if not all(map(operator.le, heads, later)):
        return False
    if not any(map(operator.eq, heads, itertools.islice(heads, 1, None))):
        return True
    return len(set(lines)) == len(lines)


def _new_at_high(lines: list[bytes], heads: list[bytes], high_ns: int, at_high: set[bytes],
                 cursor_at_high: set[bytes] | None) -> bool:
    """Whether none of a follow batch's leading lines stamped ``heads[0]`` (the newest
    stamp, ``high_ns``) is a repeat for the per-line walk: neither among the lines this
    read consumed at that stamp (``at_high``), nor among the cursor's at that stamp
    (``cursor_at_high``, fingerprints; None when this read consumed a newer line)."""
    lead = list(map(_AFTER_STAMP, lines[:bisect.bisect_right(heads, heads[0])]))  # sorted: _no_repeat_inside
    if not at_high.isdisjoint(lead):
        return False
    return cursor_at_high is None or not any(fingerprint(high_ns, text) in cursor_at_high for text in lead)


def _stamped(batches: Iterable[tuple[int, list[bytes], list[bytes]]], since_ns: int) -> Iterator[tuple[int, bytes]]:
    """``(stamp, text)`` of the lines of the batch path's ``(highest stamp, heads, texts)``
    batches that may be stamped at or after ``since_ns``."""
    for top, heads, texts in batches:
        if top >= since_ns:
            for head, text in zip(heads, texts, strict=True):
                yield parse_timestamp(head)[0], text  # type: ignore[index]  # checked by _uniform_batch


def _looks_stamped(line: bytes) -> bool:
    """A line that starts like a date (``YYYY-``): its stamp is there but cannot be read."""
    return line[:4].isdigit() and line[4:5] == b"-"


def counters_of(res: ReadResult) -> dict[str, int]:
    agg = res.agg
    out = {
        "lines_read": agg.total + sum(res.extra.values()),
        "lines_counted": agg.counted,
        "bytes_in": sum(v[0] for v in agg.subdomains.values()),
        "bytes_out": sum(v[1] for v in agg.subdomains.values()),
        "requests": sum(v[2] for v in agg.subdomains.values()),
        "unmetered_requests": sum(agg.unmetered.values()),  # upgraded connections among them
        "lines_late": res.late,  # new lines stamped more than the window behind the newest
    }
    for reason, count in agg.ignored.items():
        out[f"ignored:{reason}"] = count
    for reason, count in agg.rejected.items():
        out[f"rejected:{reason}"] = count
    out.update(res.extra)
    return out


class Fetcher:
    """Fetches pods' logs into the ledger. One per worker process."""

    def __init__(self, source: LogSource, ledger: Ledger, *, domain: str, container: str, limit_bytes: int,
                 reorder_window_ns: int = DEFAULT_REORDER_WINDOW_NS, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.source = source
        self.ledger = ledger
        self.domain = domain
        self.container = container
        self.limit = limit_bytes
        self.window = reorder_window_ns
        self.max_line = max_line_bytes

    def fetch(self, name: str, uid: str, deadline: float | None = None, probe: bool = False,
              quiet_at: float | None = None, busy: bool = False) -> dict:
        """Read one pod from its cursor and commit. Handled errors are returned, never
        raised; ``FetchTimeLimitExceeded`` is raised once ``deadline``
        (``time.monotonic()`` seconds) has passed during a read, with nothing committed.

        ``probe``: the pod is followed (``app/follow.py``) and its stream is quiet
        (``quiet_at``: the Redis time, s, its lease last said so). The read commits its
        read record only when it found nothing new (every line of the log was consumed when
        the read started, or, the file renamed since, by ``quiet_at - STALLED_AFTER``);
        what it found new is the follower's to count (status ``FOLLOWED``). See
        ``_probe_read_at``. ``busy``: the lease said BUSY, and the caller saw the container
        terminate: a read only of a container that no longer runs, the cursor's, which
        commits only when it meets the cursor's own lines (``FOLLOWED`` otherwise)."""
        ns = self.source.namespace
        try:
            start_at = self.ledger.start_at_ns()
            if start_at is None:
                raise LedgerLost(
                    "the ledger has no initialisation record: Redis lost its data or was never "
                    "initialised; refusing to read logs (that would bill them again). Run "
                    "`traefik-metrics-scraper init-ledger --start-at <time of the last report delivered>`"
                )
            return self._fetch(ns, name, uid, start_at, deadline, probe, quiet_at, busy)
        except LedgerLost as e:
            log.error("fetch %s/%s: %s", ns, name, e, extra={"pod": name, "namespace": ns, "outcome": "ledger_lost"})
            return {"pod": name, "status": FetchStatus.LEDGER_LOST}
        except PodGone:
            log.info("fetch %s/%s: pod is gone", ns, name)
            self.ledger.update_pod_state(uid, gone_at=self.ledger.now())
            return {"pod": name, "status": FetchStatus.GONE}
        except KubeForbidden as e:
            log.error("fetch %s/%s: %s", ns, name, e, extra={"pod": name, "namespace": ns, "outcome": "forbidden"})
            self.ledger.incr({"fetch_errors:forbidden": 1})
            self.ledger.note_read_failure(uid)
            return {"pod": name, "status": FetchStatus.FORBIDDEN}
        except KubeError as e:
            log.warning("fetch %s/%s: %s; the cursor stays, next round retries", ns, name, e,
                        extra={"pod": name, "namespace": ns, "outcome": "kube_error"})
            self.ledger.incr({"fetch_errors:kube": 1})
            # Sealing waits for this pod at most SEAL_MAX_WAIT from its first failed read.
            self.ledger.note_read_failure(uid)
            return {"pod": name, "status": FetchStatus.KUBE_ERROR}

    def _fetch(self, ns: str, name: str, uid: str, start_at: int, deadline: float | None, probe: bool = False,
               quiet_at: float | None = None, busy: bool = False) -> dict:
        pod = self.source.get_pod(name, deadline)
        if pod.uid != uid:
            raise PodGone(f"{name} now has uid {pod.uid}")
        ctr = pod.container(self.container)
        if ctr is None or not ctr.container_id:
            if self.ledger.read_records().get(uid) is not None:
                # Read before, now no container to read (restarting, waiting): it holds
                # sealing back like an unreadable pod, at most SEAL_MAX_WAIT.
                self.ledger.note_read_failure(uid)
            return {"pod": name, "status": FetchStatus.NOT_STARTED}
        field_ = f"{uid}/{ctr.name}"
        raw = self.ledger.cursor_raw(field_)
        cursor = Cursor.decode(raw)
        summary = {"pod": name, "status": FetchStatus.OK, "consumed": 0, "counted": 0}
        if busy and (ctr.running or cursor is None or cursor.container_id != ctr.container_id):
            summary["status"] = FetchStatus.FOLLOWED  # its follower's, as long as it runs
            return summary

        if cursor is None and ctr.last_terminated_id and ctr.last_finished_ns >= start_at - 1_000_000_000:
            # Never read, and a container already ended after START_AT: its log comes first.
            cursor = Cursor(ctr.last_terminated_id, 0, 0)
        if cursor is not None and cursor.container_id != ctr.container_id:
            # The container restarted since the last read: drain the previous one first.
            raw, cursor, done = self._drain_previous(pod, ctr, field_, raw, cursor, start_at, summary, deadline)
            if not done:
                return summary
        if cursor is None:
            cursor = Cursor(ctr.container_id, 0, 0)
        since = cursor.floor_ns or start_at
        read_at = self.ledger.now()  # the read record's time: before the request is sent
        res = self._read_log(name, ctr.name, cursor, since, start_at, deadline)
        if probe:
            probe_read_at = self._probe_read_at(pod, cursor, res, read_at, quiet_at, busy)
            if probe_read_at is None:
                summary["status"] = FetchStatus.FOLLOWED
                return summary
            if probe_read_at < read_at:  # up to the lease's quiet only: not read to its end
                if self._commit(pod, ctr, field_, raw, res, summary, ctr.container_id, probe_read_at, deadline=deadline):
                    summary["status"] = FetchStatus.FOLLOWED
                return summary
        self._commit(pod, ctr, field_, raw, res, summary, ctr.container_id, read_at, deadline=deadline)
        return summary

    def _probe_read_at(self, pod: Pod, cursor: Cursor, res: ReadResult, read_at: float,
                       quiet_at: float | None, busy: bool = False) -> float | None:
        """The time up to which a probe of a followed pod (``fetch(probe=True)``) records
        the pod as read (its read record's ``end_at``), or None for no commit:

        * nothing new, and the cursor's own lines met again (the file was not renamed
          since): every line stamped before the read was counted; ``read_at``.
        * nothing new, none of the cursor's lines, the read not cut (the file was renamed
          since, and the follower may still be reading the renamed one): when the lease
          said QUIET at ``quiet_at`` (the Redis time taken before the follower judged it:
          no byte for a while, and every byte taken committed), every line written more
          than ``STALLED_AFTER`` before it had been delivered by then (the kubelet's follow
          reader reads the renamed file to its end before it opens the new one), and so
          committed; ``quiet_at - STALLED_AFTER``. Without it, None. The fetch then says
          ``FOLLOWED``, not ``OK``: the pod was not read to its end (the pod watcher must
          not take it for its final read). A stream stalled on the renamed file's tail (a
          connection gone silent) delivers it late (counted, as amendments if its
          interval is sealed) or never (lost either way: the kubelet serves the current
          file only).
        * new lines stamped more than ``STALLED_AFTER`` before the read: the follow
          stream has stalled, and the probe counts them itself (the follower's next
          commit then conflicts, and it lets the pod go); ``read_at``.
        * other new lines are the follower's: None.

        ``busy`` (the lease said BUSY; the container no longer runs): ``read_at`` when the
        read met the cursor's own lines and was not cut, else None. Met, every line after
        them is in the file read (none in a renamed one), and the container writes no more:
        what the read found new is all there is, and the follower holds nothing else (its
        next commit conflicts, and it lets go). Not met, the stream may still be on a
        renamed file whose tail the file read lacks (a commit would make the follower drop
        it). Cut (``FETCH_MAX_BYTES``), a commit of part of the file would end the stream,
        which holds the file open and delivers the rest even after the pod is gone; the
        reads left to do might not (a review found 142 to 379 requests lost so)."""
        if busy:
            return read_at if res.matched > 0 and not res.cut else None
        if res.consumed == 0:
            if res.matched > 0 or not cursor.seen:
                return read_at
            if quiet_at is None or res.cut:  # cut before the cursor's lines: not a renamed file
                return None
            return min(read_at, quiet_at - STALLED_AFTER)
        if res.first_new_ns is None or res.first_new_ns >= (read_at - STALLED_AFTER) * 1_000_000_000:
            return None
        log.warning("fetch %s/%s: the follow stream has not delivered lines stamped from %s on, %.0f s before this "
                    "read; counted by this read, and the follower lets the pod go", pod.namespace, pod.name,
                    fmt_ns(res.first_new_ns), read_at - res.first_new_ns / 1e9,
                    extra={"pod": pod.name, "namespace": pod.namespace, "outcome": "follow_stalled"})
        self.ledger.incr({"follow_stalled": 1})
        return read_at

    def _drain_previous(self, pod: Pod, ctr: Container, field_: str, raw: str, cursor: Cursor, start_at: int, summary: dict,
                        deadline: float | None):
        """Read the previous container from the cursor. Returns (raw, cursor, done):
        done is False when this fetch should stop here (more left, or a conflict)."""
        res = None
        reason = ""
        read_at = self.ledger.now()
        if ctr.last_terminated_id == cursor.container_id:
            try:
                res = self._read_log(pod.name, ctr.name, cursor, cursor.floor_ns or start_at, start_at, deadline,
                                     previous=True)
            except NoPreviousLog as e:
                reason = f"previous container's log unavailable ({e})"
        else:
            reason = "the container restarted more than once between reads; the log of " f"{cursor.container_id} is no longer served"
        if res is not None:
            if res.cut:
                # More of the previous container is waiting: keep draining next round.
                self._commit(pod, ctr, field_, raw, res, summary, cursor.container_id, read_at, deadline=deadline)
                return raw, cursor, False
            # Fully drained: the cursor moves to the start of the current container. The
            # read record stays the previous container's until the current one is read.
            high = res.cursor.high_ns
            res.cursor = Cursor(ctr.container_id, 0, 0)
            if not self._commit(pod, ctr, field_, raw, res, summary, cursor.container_id, read_at, high,
                                deadline=deadline):
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

    def _read_log(self, name: str, container: str, cursor: Cursor, since_ns: int, start_at: int,
                  deadline: float | None, *, previous: bool = False) -> ReadResult:
        """One read of a container's log (``previous``: its last terminated one's) from
        ``since_ns`` (sinceTime), at most ``self.limit`` bytes, walked by ``consume()``
        from ``cursor``. Raises what ``LogSource.stream_log`` raises."""
        return consume(
            self.source.stream_log(name, container, since_ns, self.limit, previous=previous, deadline=deadline),
            cursor,
            start_at,
            self.limit,
            self.domain,
            self.window,
            self.max_line,
            self.ledger.ri,
        )

    def _gap(self, pod: Pod, ctr: Container, from_ns: int, to_ns: int | None, reason: str) -> None:
        span = f"{fmt_ns(from_ns) if from_ns else 'the start'} .. {fmt_ns(to_ns) if to_ns else 'the start of the new container'}"
        log.warning("GAP in the log of pod %s/%s container %s: lines %s may be lost: %s", pod.namespace, pod.name, ctr.name, span, reason,
                    extra={"pod": pod.name, "namespace": pod.namespace, "outcome": "gap"})
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

    def _commit(self, pod: Pod, ctr: Container, field_: str, expected: str, res: ReadResult, summary: dict,
                marker: str = "", read_at: float | None = None, high_ns: int | None = None,
                deadline: float | None = None, *, endless: bool = False, check_pod: bool = True) -> bool:
        """Commit one read if the container did not change under it. True when committed.

        With it goes the pod's read record for the watermark: the container whose log
        was read (``marker``), ``read_at`` (Redis time before the read was sent) when the
        read reached the end of the log (not cut at ``limitBytes``), the highest stamp
        consumed (``high_ns``, default the new cursor's). A slice of a follow stream
        (``endless``) never reaches an end: its record carries the highest stamp only.
        ``check_pod=False`` skips the look at the pod after the read (a follow stream's
        later slices: the stream is of the container the first slice checked)."""
        summary["cut"] = res.cut  # the last read stopped at limitBytes (more waiting); metrics' lag
        if res.consumed == 0 and res.cut:
            log.warning(
                "NO PROGRESS reading pod %s/%s: the log from %s (the cursor's second and "
                "LOG_REORDER_WINDOW before %s) holds more than FETCH_MAX_BYTES (%d); raise FETCH_MAX_BYTES",
                pod.namespace, pod.name,
                fmt_ns(res.cursor.floor_ns // 1_000_000_000 * 1_000_000_000) if res.cursor.floor_ns else "the start",
                fmt_ns(res.cursor.t_ns) if res.cursor.t_ns else "the start", self.limit,
                extra={"pod": pod.name, "namespace": pod.namespace, "outcome": "no_progress"},
            )
            self.ledger.incr({"no_progress": 1})
            self.ledger.note_read_failure(pod.uid)  # stuck: holds sealing back at most SEAL_MAX_WAIT
            summary["status"] = FetchStatus.NO_PROGRESS
        if res.consumed == 0 and res.cursor.encode() == expected and (res.cut or read_at is None):
            return True  # nothing new, and nothing to record
        # A restart (or a replacement under the same name) between listing and reading
        # means the lines may belong to another container: commit nothing, re-read next round.
        # Checked for a read of nothing too: its read record would say that the container
        # the GET named was read to its end, when the read was of the new, empty one (and
        # the watermark would seal past the previous container's unread lines).
        moved = False
        try:
            if check_pod:
                after = self.source.get_pod(pod.name, deadline)
                moved = after.uid != pod.uid or after.container(ctr.name) != ctr
        except PodGone:
            pass  # gone after the read: what was read is its final log
        if moved:
            log.info("fetch %s/%s: the container changed during the read; nothing committed", pod.namespace, pod.name)
            self.ledger.incr({"fetch_restarted": 1})
            summary["status"] = FetchStatus.RESTARTED
            return False
        counters = counters_of(res)
        record = ""
        if read_at is not None or endless:
            end_at = None if (res.cut or endless) else read_at
            record = Ledger.read_record(marker, end_at, res.cursor.high_ns if high_ns is None else high_ns)
        result = self.ledger.commit(field_, expected, res.cursor.encode(), counters=counters, parts=res.parts,
                                    source=pod.uid if record else "", record=record)
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
            # The kubelet serves only the current file and renames a full one away
            # (docs/design.md, "Throughput"): what was written after the last read is out
            # of reach. Fewer rotations (a larger file) or earlier reads shrink the loss.
            self._gap(pod, ctr, res.gap_from_ns, res.gap_to_ns,
                      "the log was rotated past the cursor (lines written after the last read before the kubelet "
                      "rotated the file are out of the API's reach); rotate less often (raise the kubelet's "
                      "containerLogMaxSize) or read busy pods sooner (lower FETCH_MIN_INTERVAL)")
        if res.late:
            log.warning(
                "pod %s/%s: %d line(s) stamped more than LOG_REORDER_WINDOW behind the newest line read "
                "(the node's clock stepped back, or a stream stalled); counted. Lines stamped before the "
                "second of the cursor's floor are never returned by the kubelet and may be lost",
                pod.namespace, pod.name, res.late, extra={"pod": pod.name, "namespace": pod.namespace, "outcome": "late"},
            )
        for length in res.agg.too_long_lengths:  # after the commit: once per line
            log.error(
                "pod %s/%s: a log line of %d bytes is longer than LOG_LINE_MAX_BYTES (%d); not counted "
                "(rejected:too_long)", pod.namespace, pod.name, length, res.agg.max_line_bytes,
            )
        if result.amendments:
            log.warning("pod %s/%s: %d amendment report(s) for sealed intervals (lines read after their interval "
                        "was sealed without this pod)", pod.namespace, pod.name, result.amendments,
                        extra={"pod": pod.name, "namespace": pod.namespace, "outcome": "amended"})
        if result.expired:
            log.error("pod %s/%s: %d request(s) stamped in intervals older than INTERVAL_RETENTION: not reported "
                      "(lines_expired)", pod.namespace, pod.name, result.expired,
                      extra={"pod": pod.name, "namespace": pod.namespace, "outcome": "expired"})
        summary["consumed"] += res.consumed
        summary["counted"] += res.agg.counted
        if result.intervals:
            summary["interval"] = result.intervals[-1]
            summary["intervals"] = list(result.intervals)
        self._watch_access(pod, res)
        return True

    def _watch_access(self, pod: Pod, res: ReadResult) -> None:
        """Warn once per pod whose log shows lines but no access lines for a while, once
        per pod that writes CLF, and once per pod with lines whose timestamp cannot be
        read. One read of the pod's state, at most one write."""
        agg = res.agg
        unreadable = sum(res.extra.get(reason, 0) for reason in UNREADABLE_STAMP_REASONS)
        if agg.total == 0 and not unreadable:
            return
        state = self.ledger.pod_state(pod.uid)
        changes: dict[str, object] = {}
        if unreadable and not state.get("warned_bad_timestamp"):
            log.warning(
                "pod %s/%s: %d log lines in this read have a timestamp prefix that cannot be read; they "
                "are skipped, not billed (counted as rejected:bad_timestamp / rejected:no_timestamp). "
                "The scraper reads RFC 3339 stamps with a zone (Z or +HH:MM) as the kubelet writes them "
                "with timestamps=true",
                pod.namespace, pod.name, unreadable,
            )
            changes["warned_bad_timestamp"] = True
            self.ledger.incr({"pods_with_bad_timestamps": 1})
        if agg.total == 0:
            if changes:
                self.ledger.update_pod_state(pod.uid, **changes)
            return
        if agg.ignored.get("clf_no_host") and not state.get("warned_clf"):
            log.warning(
                "pod %s/%s writes its access log in CLF, which has no Host: traffic cannot be "
                "attributed to tunnels. Set Traefik's accessLog.format to json",
                pod.namespace, pod.name, extra={"pod": pod.name, "namespace": pod.namespace, "outcome": "clf"},
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
