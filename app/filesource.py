"""The file source (``LOG_SOURCE=file``): Traefik's access log read from files on this
host's disk (``accessLog.filePath``), exactly once, through rotation.

Identity. A file is known by the fingerprint of its first line (BLAKE2b-128 of the
bytes up to and including the first newline, or of the first ``FINGERPRINT_BYTES`` when
the first line is longer), as Vector's ``checksum`` fingerprinter does: a renamed file
and a copy start with the same line, so they keep their identity, where an inode would
follow a rename but not a copy (and is reused after a delete). A file without a complete
first line (new, or just truncated) has no identity yet and is left for the next round.
Traefik's first line carries the request's start in nanoseconds, so two different files
do not share one.

Cursor. ``app.model.FileCursor`` under ``file:<identity>`` in the ``cursors`` hash: the
byte offset after the last complete line consumed, the inode of the file it was read
from, a hash of the bytes just before the offset, a generation number and whether a line
at or after the ledger's start was consumed. A read's counts and the new cursor are
committed by ``Ledger.commit`` (``commit.lua``'s compare-and-set), so a fetch delivered
twice, or two fetches of one identity at once, change nothing twice.

The rules (docs/design.md, "File source"), for a file F with identity X whose cursor is
at offset O and last read the inode I:

1. No cursor: read F from 0. While no line at or after the ledger's start was consumed,
   each line's time (``StartUTC`` + ``Duration``, else ``time``) is compared with it; an
   earlier line is consumed without being counted (``ignored:before_start``).
2. size(F) >= O and F holds, just before O, the bytes the cursor read: read from O. This
   is the growing file, the same file renamed (rotation by rename: Traefik writes to it
   until it reopens its log on USR1), or a copy made after the cursor's read (logrotate's
   ``copytruncate``: the lines not read when it copied are read from the copy, once).
3. size(F) < O and F is not I: F is a copy taken before the cursor's last read got past
   the copy point (``copytruncate``, read between its copy and its truncate): everything
   in it was consumed. Nothing is read.
4. F is I and size(F) < O, or its bytes before O differ: I was truncated in place and
   written again from a first line identical to the old one. A new generation: read from
   0, generation + 1, and a WARNING (and a gap record: lines of the old generation
   written after the last read may be lost). Traefik's first lines never repeat (their
   nanosecond start times differ), so normally a truncated file simply has a new
   identity, and starts from 0 as a new file (rule 1).
5. F is not I, size(F) >= O and its bytes before O differ: a file that starts like X but
   is not the stream the cursor read (a copy of an older generation, a file edited in
   place): not read, an ERROR once and counter ``file_mismatch``.

A read stops before a partial last line (no newline yet): its bytes stay unconsumed. A
file that shrank, or whose first line changed, while it was read commits nothing
(``changed``): the next round reads the copy. Compressed files (``.gz``, ``.bz2``,
``.xz``, ``.zst``..., or gzip/bzip2/xz/zstd magic bytes) are skipped, with an INFO line
once per path. Lines are framed by ``app.parser.LineFramer`` and counted by
``app.parser.Aggregator``, as for the Kubernetes source.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from hashlib import blake2b

from app.errors import time_left
from app.fetching import IntervalSums, ReadResult, counters_of, parse_timestamp
from app.ledger import Ledger
from app.model import CommitStatus, Cursor, FetchStatus, FileCursor
from app.parser import MAX_LINE_BYTES, Aggregator, LineFramer

log = logging.getLogger(__name__)

FINGERPRINT_BYTES = 64 * 1024  # the identity covers the first line, or this many bytes of a longer one
CHUNK = 256 * 1024
BATCH_LINES = 2048
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip", ".Z")
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18", b"PK\x03\x04")

_START_UTC = b'"StartUTC":"'
_DURATION = re.compile(rb'"Duration":(\d{1,19})[,}]')
_TIME = b'"time":"'


def identity_of(head: bytes) -> str | None:
    """The identity of a file whose first bytes are ``head`` (at least its first line, or
    ``FINGERPRINT_BYTES``): BLAKE2b-128 hex of its first line with its newline, or of its
    first ``FINGERPRINT_BYTES`` when that holds no newline. ``None`` while the file has
    neither (empty, or a first line still being written)."""
    newline = head.find(b"\n", 0, FINGERPRINT_BYTES)
    if newline >= 0:
        first = head[: newline + 1]
    elif len(head) >= FINGERPRINT_BYTES:
        first = head[:FINGERPRINT_BYTES]
    else:
        return None
    return blake2b(first, digest_size=16).hexdigest()


def _head(fd: int) -> bytes:
    """The file's first bytes: 4 KiB, or ``FINGERPRINT_BYTES`` when its first line is longer."""
    head = os.pread(fd, 4096, 0)
    if len(head) == 4096 and b"\n" not in head:
        head = os.pread(fd, FINGERPRINT_BYTES, 0)
    return head


def identify(fd: int) -> str | None:
    """The identity of an open file (see ``identity_of``)."""
    return identity_of(_head(fd))


def _field_time_ns(line: bytes, key: bytes) -> int | None:
    at = line.find(key)
    if at < 0:
        return None
    begin = at + len(key)
    end = line.find(b'"', begin, begin + 40)
    parsed = parse_timestamp(line[begin:end] + b" ") if end > 0 else None
    return parsed[0] if parsed is not None else None


def line_time_ns(line: bytes) -> int | None:
    """When Traefik wrote an access line, in ns: ``StartUTC`` + ``Duration`` (the request's
    end, when the line is written); without a ``Duration``, ``time`` (the time the line was
    written, whole seconds), else ``StartUTC`` alone; ``None`` when none can be read.
    Inside a JSON string a quote is escaped, so ``"StartUTC":"`` is the key."""
    start = _field_time_ns(line, _START_UTC)
    if start is not None:
        duration = _DURATION.search(line)
        if duration:
            return start + int(duration.group(1))
    written = _field_time_ns(line, _TIME)
    return written if written is not None else start


@dataclass(frozen=True)
class LogFile:
    """One file a plan found: its path, identity and size at that moment."""

    path: str
    identity: str
    size: int


@dataclass
class Discovery:
    """What ``discover`` found: the files to read (one per identity: the largest), and
    the paths skipped as compressed, without an identity yet, or unreadable."""

    files: list[LogFile] = field(default_factory=list)
    compressed: list[str] = field(default_factory=list)
    unidentified: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def discover(pattern: str) -> Discovery:
    """The regular files matching ``pattern`` (a glob), identified.

    Two paths with one identity (a copy beside its original, between logrotate's copy
    and its truncate) give one file, the larger: the cursor is the identity's, and the
    larger holds everything the smaller does.
    """
    out = Discovery()
    best: dict[str, LogFile] = {}
    for path in sorted(glob.glob(pattern)):
        if path.endswith(COMPRESSED_SUFFIXES):
            out.compressed.append(path)
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            log.warning("file source: cannot open %s: %s", path, e.strerror or type(e).__name__)
            out.errors.append(path)
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                continue
            head = _head(fd)
        except OSError as e:
            log.warning("file source: cannot read %s: %s", path, e.strerror or type(e).__name__)
            out.errors.append(path)
            continue
        finally:
            os.close(fd)
        if head.startswith(COMPRESSED_MAGIC):
            out.compressed.append(path)
            continue
        identity = identity_of(head)
        if identity is None:
            out.unidentified.append(path)
            continue
        found = LogFile(path, identity, st.st_size)
        if identity not in best or found.size > best[identity].size:
            best[identity] = found
    out.files = sorted(best.values(), key=lambda f: f.path)
    return out


def _chunks(fd: int, start: int, limit: int, deadline: float | None = None):
    """The file's bytes from ``start``, at most ``limit`` of them, in ``CHUNK``s.
    ``FetchTimeLimitExceeded`` once ``deadline`` (``time.monotonic()`` s) has passed."""
    pos, left = start, limit
    while left > 0:
        time_left(deadline, "read of the file")
        data = os.pread(fd, min(CHUNK, left), pos)
        if not data:
            return
        yield data
        pos += len(data)
        left -= len(data)


def _tail(fd: int, offset: int) -> str:
    """``FileCursor.tail`` of the open file at ``offset``."""
    n = min(offset, FileCursor.TAIL_BYTES)
    return FileCursor.tail_of(os.pread(fd, n, offset - n)) if n else ""


class FileFetcher:
    """Reads access-log files into the ledger. One per worker process."""

    def __init__(self, ledger: Ledger, *, domain: str, limit_bytes: int, max_line_bytes: int = MAX_LINE_BYTES,
                 clock_margin: float = 2.0) -> None:
        """``clock_margin``: ``SEAL_CLOCK_MARGIN`` (s); a line's time is taken no later
        than the read's start plus it (a line was written before it was read)."""
        self.ledger = ledger
        self.domain = domain
        self.limit = limit_bytes
        self.max_line = max_line_bytes
        self.margin_ns = int(clock_margin * 1e9)

    def fetch(self, path: str, identity: str, deadline: float | None = None) -> dict:
        """Read the file at ``path`` if it still has ``identity``, from its cursor, and
        commit. Handled errors are returned, never raised; ``FetchTimeLimitExceeded`` is
        raised once ``deadline`` (``time.monotonic()`` s) has passed, with nothing committed."""
        summary: dict = {"file": path, "status": FetchStatus.OK, "consumed": 0, "counted": 0}
        start_at = self.ledger.start_at_ns()
        if start_at is None:
            log.error("fetch %s: the ledger has no initialisation record: Redis lost its data or was never "
                      "initialised; refusing to read logs (that would bill them again). Run "
                      "`traefik-metrics-scraper init-ledger --start-at <time of the last report delivered>`", path,
                      extra={"outcome": "ledger_lost"})
            summary["status"] = FetchStatus.LEDGER_LOST
            return summary
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            log.info("fetch %s: gone since the plan (rotated away); the next round finds its identity again", path)
            summary["status"] = FetchStatus.MOVED
            return summary
        except OSError as e:
            return self._error(path, identity, e, summary)
        try:
            return self._fetch(fd, path, identity, start_at, summary, deadline)
        except OSError as e:
            return self._error(path, identity, e, summary)
        finally:
            os.close(fd)

    def _error(self, path: str, identity: str, e: OSError, summary: dict) -> dict:
        log.warning("fetch %s: %s; the cursor stays, next round retries", path, e.strerror or type(e).__name__,
                    extra={"outcome": "file_error"})
        self.ledger.incr({"fetch_errors:file": 1})
        # A file listed but not readable holds sealing back at most SEAL_MAX_WAIT.
        self.ledger.note_read_failure(FileCursor.field(identity))
        summary["status"] = FetchStatus.FILE_ERROR
        return summary

    def _fetch(self, fd: int, path: str, identity: str, start_at: int, summary: dict, deadline: float | None) -> dict:
        st = os.fstat(fd)
        if identify(fd) != identity:
            log.info("fetch %s: no longer the file the plan saw (rotated or truncated since); next round", path)
            summary["status"] = FetchStatus.MOVED
            return summary
        inode = f"{st.st_dev}:{st.st_ino}"
        field_ = FileCursor.field(identity)
        raw = self.ledger.cursor_raw(field_)
        cursor = FileCursor.decode(raw) or FileCursor()
        start, generation = cursor.offset, cursor.generation
        summary["cut"] = False
        if cursor.offset:
            same_stream = st.st_size >= cursor.offset and _tail(fd, cursor.offset) == cursor.tail
            if not same_stream and inode == cursor.inode:
                # Rule 4: the file the cursor read was truncated in place and written again
                # from the same first line: a new generation, read from its start.
                log.warning("fetch %s: the file was truncated in place and starts again with the same first line: "
                            "reading it from its start as a new generation; lines written to it after the last read "
                            "and before the truncation may be lost", path, extra={"outcome": "gap"})
                self.ledger.record_gap({"file": path, "identity": identity, "from_offset": cursor.offset,
                                        "to_offset": None, "reason": "truncated in place", "at": self.ledger.now()})
                start, generation = 0, cursor.generation + 1
            elif not same_stream and st.st_size < cursor.offset:
                # Rule 3: a copy made before the cursor's last read went past it: all consumed.
                summary["copy"] = True
                return summary
            elif not same_stream:
                # Rule 5: starts like the identity, but is not the stream the cursor read.
                if self.ledger.first_note("mismatch", f"{identity}:{inode}"):
                    log.error("fetch %s: starts with the first line of a file already read, but does not hold the "
                              "bytes read from it at offset %d: not read (a copy of an older generation, or a file "
                              "edited in place)", path, cursor.offset, extra={"outcome": "mismatch"})
                self.ledger.incr({"file_mismatch": 1})
                # Listed, never read while it is there: holds sealing back at most SEAL_MAX_WAIT.
                self.ledger.note_read_failure(field_)
                summary["status"] = FetchStatus.MISMATCH
                return summary

        # Each line goes to the interval of the request's end (StartUTC + Duration: when
        # Traefik wrote it); a line without a readable time takes the time of the line
        # before it (the first: the read's start), so it still lands once, somewhere near.
        read_at = self.ledger.now()
        sums = IntervalSums(self.domain, self.max_line, self.ledger.ri)
        framer = LineFramer(self.max_line)
        started = cursor.started
        received = consumed = before_start = 0
        prev = int(read_at * 1e9)
        # A line was written before this read: a time later than the read's start plus
        # the clock margin (an absurd Duration, a clock jump) is capped there, counted
        # (lines_time_capped) and warned about, or its interval would stay open for years.
        cap = prev + self.margin_ns
        capped = 0
        high = 0
        for chunk in _chunks(fd, start, self.limit, deadline):
            received += len(chunk)
            for line in framer.feed(chunk):
                consumed += 1
                written = line_time_ns(line)
                if written is not None and written > cap:
                    capped += 1
                    written = cap
                if written is not None:
                    prev = written
                    high = max(high, written)
                    if not started:
                        if written < start_at:
                            before_start += 1
                            continue
                        started = True
                sums.add(prev, line)
        agg = sums.finish()
        end = start + received - framer.pending  # a partial last line is not consumed
        cut = received >= self.limit
        summary["cut"] = cut

        after = os.fstat(fd)
        if after.st_size < end or identify(fd) != identity:
            # Truncated (copytruncate) while it was read: what was read may be cut short or
            # mixed; commit nothing, the next round reads the copy from the cursor.
            log.info("fetch %s: the file changed during the read; nothing committed", path)
            self.ledger.incr({"file_changed": 1})
            summary["status"] = FetchStatus.CHANGED
            return summary
        if consumed == 0 and cut:
            log.warning("NO PROGRESS reading %s: the line at offset %d is longer than FETCH_MAX_BYTES (%d); raise "
                        "FETCH_MAX_BYTES", path, start, self.limit, extra={"outcome": "no_progress"})
            self.ledger.incr({"no_progress": 1})
            self.ledger.note_read_failure(field_)  # stuck: holds sealing back at most SEAL_MAX_WAIT
            summary["status"] = FetchStatus.NO_PROGRESS
            return summary

        new = FileCursor(end, inode, _tail(fd, end), generation, started)
        res = ReadResult(agg=agg, cursor=Cursor("", 0, 0), consumed=consumed, received=received, cut=cut,
                         extra={"ignored:before_start": before_start} if before_start else {})
        # The read record (docs/design.md, "Sealing"): a read that reached the end of the
        # file holds every line Traefik wrote before it started. Committed even when
        # nothing is new, so that an idle file lets intervals be sealed.
        record = Ledger.read_record("", None if cut else read_at, high)
        counters = counters_of(res)
        if capped:
            counters["lines_time_capped"] = capped
        result = self.ledger.commit(field_, raw, new.encode(), counters=counters, parts=sums.partials(),
                                    source=field_, record=record)
        if result.status == CommitStatus.CONFLICT:
            log.info("fetch %s: another fetch committed first; nothing committed", path)
            self.ledger.incr({"fetch_conflicts": 1})
            summary["status"] = FetchStatus.CONFLICT
            return summary
        if result.status == CommitStatus.NO_LEDGER:
            log.error("fetch %s: the ledger's initialisation record vanished during the fetch", path,
                      extra={"outcome": "ledger_lost"})
            summary["status"] = FetchStatus.LEDGER_LOST
            return summary
        if result.status == CommitStatus.OVERFLOW:
            log.error("fetch %s: counts for %s would overflow a 64-bit counter; nothing committed", path, result.detail)
            summary["status"] = FetchStatus.OVERFLOW
            return summary
        for length in agg.too_long_lengths:  # after the commit: once per line
            log.error("%s: a log line of %d bytes is longer than LOG_LINE_MAX_BYTES (%d); not counted "
                      "(rejected:too_long)", path, length, agg.max_line_bytes)
        self._warn_once(path, identity, agg)
        if capped:
            log.warning("fetch %s: %d line(s) whose time (StartUTC + Duration) is later than the read plus "
                        "SEAL_CLOCK_MARGIN: placed at that time instead (a corrupt Duration, or Traefik's clock "
                        "ahead of Redis's)", path, capped, extra={"outcome": "time_capped"})
        if result.amendments:
            log.warning("fetch %s: %d amendment report(s) for sealed intervals", path, result.amendments,
                        extra={"outcome": "amended"})
        if result.expired:
            log.error("fetch %s: %d request(s) of intervals older than INTERVAL_RETENTION: not reported "
                      "(lines_expired)", path, result.expired, extra={"outcome": "expired"})
        summary.update(consumed=consumed, counted=agg.counted)
        if result.intervals:
            summary.update(interval=result.intervals[-1], intervals=list(result.intervals))
        return summary

    def _warn_once(self, path: str, identity: str, agg: Aggregator) -> None:
        """One WARNING per file written in CLF, or holding lines but no access line."""
        if agg.ignored.get("clf_no_host") and self.ledger.first_note("clf", identity):
            log.warning("%s holds access lines in CLF, which has no Host: traffic cannot be attributed to tunnels. "
                        "Set Traefik's accessLog.format to json", path, extra={"outcome": "clf"})
        elif agg.total and not agg.access_lines() and self.ledger.first_note("no_access", identity):
            log.warning("%s holds log lines but no access-log line: LOG_FILES must match Traefik's access log "
                        "(accessLog.filePath, format json), not its own log (log.filePath)", path)
