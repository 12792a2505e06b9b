"""The ledger's identities and states.

``ReportKey`` owns the string form of a report's identity and ``Cursor`` (a pod) and
``FileCursor`` (a file) own the encoding of a read position: no other Python code joins
or splits those strings.
The Lua scripts in ``app/lua`` build the same strings (they cannot import Python);
``tests/integration/test_model_lua.py`` proves that the two agree.

The enums are ``StrEnum``s, so a value compares equal to its string and goes into a
JSON task result or a Redis field unchanged.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from hashlib import blake2b

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The ledger's times are nanoseconds since the epoch in a signed 64-bit integer (Redis
# integers, Lua's): 1970-01-01 up to 2262-04-11.
MAX_EPOCH_NS = (1 << 63) - 1


def whole_number(text: str) -> int | None:
    """``text`` as a whole number when it is ASCII digits only, else None: ``int()`` also
    takes a sign, spaces, underscores and other scripts' digits (``int("\u0663")`` is 3),
    none of which a count, a port or a key holds. None too past Python's limit on the digits
    ``int()`` converts (4,300 by default, ``sys.get_int_max_str_digits``): it raises
    ValueError there, and no count, port or key is that long."""
    if not (text.isascii() and text.isdigit()):
        return None
    try:
        return int(text)
    except ValueError:
        return None


# A seconds fraction (one or more digits after "." or ","), before the zone.
# Only after the seconds (HH:MM:SS, or HHMMSS in the basic format): "00:30.5" is a
# fraction of a minute in ISO 8601 and "00.5" of an hour, which this never reads.
_FRACTION = re.compile(r"(?:(?<=[0-9]{2}:[0-9]{2}:[0-9]{2})|(?<=[0-9]{6}))[.,]([0-9]+)"
                       r"(?=(?:Z|[+-][0-9]{2}(?::?[0-9]{2}(?::?[0-9]{2})?)?)$)")


def parse_time_ns(text: str) -> int:
    """Nanoseconds since the epoch of an ISO 8601 time with a zone (``Z`` or an offset),
    exact to the nanosecond: the seconds fraction is read as digits (up to 9 kept), the
    rest by ``datetime.fromisoformat``. The one reading of ``START_AT`` and
    ``init-ledger --start-at``. Raises ``ValueError`` for anything else: no zone, a
    number (seconds or milliseconds would be a guess), outside 1970-01-01 .. 2262-04-11."""
    given = text = text.strip()
    fraction = 0
    m = _FRACTION.search(text)
    if m:
        fraction = int(m.group(1)[:9].ljust(9, "0"))
        text = text[: m.start()] + text[m.end():]
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {given[:60]!r}") from None
    if when.tzinfo is None:
        raise ValueError("no zone: give a zone, e.g. 2026-11-24T00:00:00Z")
    if "." in text or "," in text:  # a fraction not after the seconds, or a second one: fromisoformat added it
        raise ValueError(f"not an ISO 8601 time with its fraction after the seconds: {given[:60]!r}")
    try:  # integer arithmetic, no float (timestamp() * 1e9 turns ...00.123457 into ...00.123457024)
        ns = (when - _EPOCH) // timedelta(microseconds=1) * 1000 + fraction
    except OverflowError:  # near the years 1 and 9999, with an offset
        ns = -1
    if not 0 <= ns <= MAX_EPOCH_NS:
        raise ValueError(f"{given[:60]!r} is outside 1970-01-01 .. 2262-04-11 (nanoseconds in 64 bits)")
    return ns


@dataclass(frozen=True, order=True)
class ReportKey:
    """One report: an interval and a tunnel, and for an amendment its number. String
    form ``<start>:<subdomain>``, or ``<start>:<subdomain>:a<n>`` for amendment n.

    ``start`` is the interval's start in unix seconds (UTC, a multiple of
    ``REPORT_INTERVAL``); ``subdomain`` is already validated (``ledger.valid_subdomain``),
    so it holds no ``:``. ``amendment``: 0 for the interval's original report, n >= 1 for
    the n-th amendment (late lines of a sealed interval, made by ``commit.lua``). The
    string form is the member of the ``due``, ``dead`` and ``retrying`` sets and the
    tail of the ``rep:`` and ``lock:`` keys; ``name`` (``<subdomain>`` or
    ``<subdomain>:a<n>``) is the report's field in its interval's ``done:`` hash and the
    report task's second argument.
    """

    start: int
    subdomain: str
    amendment: int = 0

    def __str__(self) -> str:
        return f"{self.start}:{self.name}"

    @property
    def name(self) -> str:
        """``<subdomain>``, or ``<subdomain>:a<n>`` for an amendment."""
        return f"{self.subdomain}:a{self.amendment}" if self.amendment else self.subdomain

    @staticmethod
    def interval_pattern(start: int) -> str:
        """A Redis ``MATCH`` pattern for every report key of interval ``start`` (amendments
        included)."""
        return f"{start}:*"

    @classmethod
    def of(cls, start: int, name: str) -> ReportKey:
        """The key of interval ``start`` and a ``name`` (see ``name``). Raises
        ``ValueError`` when ``name`` is not one."""
        sub, sep, amend = name.partition(":")
        if not sub:
            raise ValueError(f"not a report name: {name[:80]!r}")
        if not sep:
            return cls(start, sub)
        amendment = whole_number(amend[1:]) if amend[:1] == "a" else None
        if amendment is None or amendment < 1:
            raise ValueError(f"not a report name: {name[:80]!r}")
        return cls(start, sub, amendment)

    @classmethod
    def parse(cls, raw: str | bytes) -> ReportKey:
        """The key of ``<start>:<subdomain>[:a<n>]``. Raises ``ValueError`` when it is not one."""
        text = raw.decode() if isinstance(raw, bytes) else raw
        start, sep, name = text.partition(":")
        start_s = whole_number(start)
        if not sep or not name or start_s is None:
            raise ValueError(f"not a report key: {text[:80]!r}")
        try:
            return cls.of(start_s, name)
        except ValueError:
            raise ValueError(f"not a report key: {text[:80]!r}") from None


def fingerprint(t_ns: int, text: bytes) -> bytes:
    """A line's fingerprint: 8 bytes of BLAKE2b over its stamp (UTC ns) and its text
    (the line without the kubelet's prefix)."""
    h = blake2b(digest_size=8)
    h.update(t_ns.to_bytes(8, "little", signed=True))
    h.update(text)
    return h.digest()


_V2 = "v2|"
FP_BYTES = 8


@dataclass(frozen=True)
class Cursor:
    """Where reading a container's log stands, exact when stamps are not monotonic.

    The runtime stamps stdout and stderr lines in separate readers, so the log file is
    in arrival order but its stamps are monotonic only per stream (docs/design.md,
    "Two-stream cursor"). The cursor keeps:

    * ``high_ns`` (H): the highest stamp consumed (0: nothing yet);
    * ``floor_ns`` (F): every line stamped before F counts as consumed. F = H - W for
      the reorder window W (``LOG_REORDER_WINDOW``), and never moves backwards;
    * ``seen``: the consumed lines stamped at or after F, as a multiset of
      ``(stamp, fingerprint, count)``, sorted: a line at or after F is consumed iff it
      matches a remaining count (identical lines at one stamp stay distinct);
    * ``legacy_n``: for a cursor stored in the old ``<cid>|<t_ns>|<n>`` form (F = H =
      t): the first n lines stamped exactly t are consumed. 0 in the new form.

    ``Cursor(cid, t, n)`` is the old form; ``Cursor(cid, 0, 0)`` reads from the start.
    Encoded as ``<cid>|<t_ns>|<n>`` while it has no fingerprints (so old cursors and
    fresh ones keep their strings), else ``v2|<cid>|<base64>``; the commit script
    compares digests of the encoded strings and never looks inside them.
    """

    container_id: str
    high_ns: int = 0
    legacy_n: int = 0
    floor_ns: int = -1  # -1: the old form, F = H
    seen: tuple[tuple[int, bytes, int], ...] = ()

    def __post_init__(self) -> None:
        if self.floor_ns < 0:
            object.__setattr__(self, "floor_ns", self.high_ns)

    # What the old (T, N) cursor said, for messages and checks ------------------------

    @property
    def t_ns(self) -> int:
        """The highest stamp consumed (the old cursor's T)."""
        return self.high_ns

    @property
    def n(self) -> int:
        """How many consumed lines carry exactly ``t_ns`` (the old cursor's N)."""
        return self.legacy_n + sum(c for s, _, c in self.seen if s == self.high_ns)

    # Building ------------------------------------------------------------------------

    @classmethod
    def build(cls, container_id: str, high_ns: int, floor_ns: int, counts: dict[tuple[int, bytes], int]) -> Cursor:
        """A new-form cursor; entries stamped before ``floor_ns`` are dropped."""
        seen = tuple(sorted((s, fp, c) for (s, fp), c in counts.items() if s >= floor_ns and c > 0))
        return cls(container_id, high_ns, 0, floor_ns, seen)

    def counts(self) -> dict[tuple[int, bytes], int]:
        """``seen`` as a dict ``(stamp, fingerprint) -> count`` (a new dict)."""
        return {(s, fp): c for s, fp, c in self.seen}

    def covers(self, lines: Iterable[tuple[int, bytes]]) -> bool:
        """True when every one of ``lines`` (a whole log as ``(stamp ns, text)`` pairs, in
        log order) is consumed by this cursor and the newest of them is ``t_ns``."""
        top = 0
        at_floor = 0
        need: dict[tuple[int, bytes], int] = {}
        for ts, text in lines:
            top = max(top, ts)
            if ts < self.floor_ns:
                continue
            if self.legacy_n and ts == self.floor_ns and at_floor < self.legacy_n:
                at_floor += 1
                continue
            key = (ts, fingerprint(ts, text))
            need[key] = need.get(key, 0) + 1
        have = self.counts()
        return top == self.high_ns and all(have.get(k, 0) >= c for k, c in need.items())

    # String form ---------------------------------------------------------------------

    def encode(self) -> str:
        if not self.seen and self.floor_ns == self.high_ns:
            return f"{self.container_id}|{self.high_ns}|{self.legacy_n}"
        out = bytearray()
        _uvarint(out, self.high_ns)
        _uvarint(out, self.high_ns - self.floor_ns)
        _uvarint(out, self.legacy_n)
        _uvarint(out, len(self.seen))
        prev = self.floor_ns
        for s, fp, c in self.seen:
            _uvarint(out, s - prev)
            out += fp
            _uvarint(out, c)
            prev = s
        return f"{_V2}{self.container_id}|{base64.b64encode(out).decode()}"

    @classmethod
    def decode(cls, raw: str) -> Cursor | None:
        """``None`` for an empty string (never read). Raises ``ValueError`` on garbage."""
        if not raw:
            return None
        if not raw.startswith(_V2):
            cid, t, n = raw.rsplit("|", 2)
            return cls(cid, int(t), int(n))
        cid, sep, payload = raw[len(_V2) :].rpartition("|")
        if not sep:
            raise ValueError("not a cursor")
        data = base64.b64decode(payload, validate=True)
        try:
            pos = 0
            high, pos = _read_uvarint(data, pos)
            width, pos = _read_uvarint(data, pos)
            legacy_n, pos = _read_uvarint(data, pos)
            count, pos = _read_uvarint(data, pos)
            floor = high - width
            prev = floor
            seen = []
            for _ in range(count):
                delta, pos = _read_uvarint(data, pos)
                fp = data[pos : pos + FP_BYTES]
                if len(fp) != FP_BYTES:
                    raise ValueError("truncated cursor")
                c, pos = _read_uvarint(data, pos + FP_BYTES)
                prev += delta
                seen.append((prev, bytes(fp), c))
        except IndexError:
            raise ValueError("truncated cursor") from None
        if pos != len(data) or floor < 0:
            raise ValueError("not a cursor")
        return cls(cid, high, legacy_n, floor, tuple(seen))


def _uvarint(out: bytearray, n: int) -> None:
    if n < 0:
        raise ValueError("negative")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _read_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7
        if shift > 70:
            raise ValueError("bad varint")


_FILE = "f1|"


@dataclass(frozen=True)
class FileCursor:
    """Where reading one access-log file stands (the file source, ``app/filesource.py``).

    A file is known by its *identity*, the fingerprint of its first line
    (``app.filesource.identify``): a renamed file, or a copy, starts with the same line
    and keeps its identity, so it keeps its cursor. The cursor is stored in the ledger's
    ``cursors`` hash under ``FileCursor.field(identity)`` and committed by ``commit.lua``
    (compare-and-set) with the counts of the lines it moved over, like a pod's cursor.

    * ``offset``: bytes of complete lines consumed from the file's start; a partial last
      line (no newline yet) is never consumed.
    * ``inode``: ``<st_dev>:<st_ino>`` of the file the cursor last read ("" before any
      read). It tells a file that was truncated in place (same inode, now shorter than the
      offset) from a shorter copy (another inode), see docs/design.md, "File source".
    * ``tail``: BLAKE2b (8 bytes, hex) of the up to ``TAIL_BYTES`` bytes that end at the
      offset ("" at offset 0): before reading on, the file must hold those bytes there.
    * ``generation``: 0, then +1 each time the file the cursor read was truncated in place
      and rewritten from a first line identical to the old one.
    * ``started``: a line written at or after the ledger's start (``START_AT``) was
      consumed; later lines are not checked against it.

    String form: ``f1|<offset>|<generation>|<started 0/1>|<inode>|<tail>``.
    """

    offset: int = 0
    inode: str = ""
    tail: str = ""
    generation: int = 0
    started: bool = False

    TAIL_BYTES = 1024

    @staticmethod
    def field(identity: str) -> str:
        """The ``cursors`` hash field of a file identity (never a pod's ``<uid>/<container>``)."""
        return f"file:{identity}"

    @staticmethod
    def tail_of(data: bytes) -> str:
        """The ``tail`` of the bytes that end at an offset (at most ``TAIL_BYTES`` of them)."""
        return blake2b(data[-FileCursor.TAIL_BYTES :], digest_size=8).hexdigest() if data else ""

    def encode(self) -> str:
        return f"{_FILE}{self.offset}|{self.generation}|{int(self.started)}|{self.inode}|{self.tail}"

    @classmethod
    def decode(cls, raw: str) -> FileCursor | None:
        """``None`` for an empty string (never read). Raises ``ValueError`` on anything else
        that is not a file cursor."""
        if not raw:
            return None
        if not raw.startswith(_FILE):
            raise ValueError("not a file cursor")
        parts = raw[len(_FILE) :].split("|")
        if len(parts) != 5:
            raise ValueError("not a file cursor")
        offset, generation, started, inode, tail = parts
        if not (offset.isascii() and offset.isdigit() and generation.isascii() and generation.isdigit()) or started not in ("0", "1"):
            raise ValueError("not a file cursor")
        if (int(offset) == 0) != (tail == ""):
            raise ValueError("not a file cursor")
        return cls(int(offset), inode, tail, int(generation), started == "1")


class CommitStatus(StrEnum):
    """What ``commit.lua`` answered."""

    OK = "ok"
    CONFLICT = "conflict"  # the cursor moved since the read started: another fetch won
    NO_LEDGER = "noledger"  # the initialisation record is gone: Redis lost data
    OVERFLOW = "overflow"  # a counter would pass 2^63: nothing written


class FetchStatus(StrEnum):
    """The ``status`` of a fetch task's result (handled outcomes; a fetch never raises)."""

    OK = "ok"
    LEDGER_LOST = "ledger_lost"
    GONE = "gone"
    FORBIDDEN = "forbidden"
    KUBE_ERROR = "kube_error"
    NOT_STARTED = "not_started"
    NO_PROGRESS = "no_progress"
    RESTARTED = "restarted"
    CONFLICT = "conflict"
    NO_LEDGER = "noledger"  # the initialisation record vanished during a drain
    OVERFLOW = "overflow"
    TIMEOUT = "timeout"
    # A follower holds the pod's log open (app/follow.py): the round left it to it.
    FOLLOWED = "followed"
    # The file source (app/filesource.py):
    MOVED = "moved"  # the path no longer holds that identity (rotated or truncated since plan)
    CHANGED = "changed"  # the file shrank or changed its first line during the read
    MISMATCH = "mismatch"  # starts like the identity, but not with the bytes the cursor read
    FILE_ERROR = "file_error"  # the file could not be opened or read


class RoundStatus(StrEnum):
    """The ``status`` of a plan round."""

    OK = "ok"
    DUPLICATE = "duplicate"  # this round number already ran (SET NX)
    LEDGER_LOST = "ledger_lost"
    KUBE_ERROR = "kube_error"


class ReportState(StrEnum):
    """The ``state`` field of a ``rep:`` hash (``seal.lua`` writes ``pending``,
    ``claim.lua`` writes ``queued``)."""

    PENDING = "pending"  # sealed, never claimed
    QUEUED = "queued"  # a message carries it
    DUE = "due"  # parked until its next attempt
    DELIVERED = "delivered"
    SKIPPED = "skipped"  # the platform answered "skipped": final
    DEAD = "dead"  # in the dead-letter store
    WRITTEN_OFF = "written_off"  # a dead letter an operator wrote off (``write-off``): never sent

    @property
    def final(self) -> bool:
        return self in (ReportState.DELIVERED, ReportState.SKIPPED, ReportState.DEAD, ReportState.WRITTEN_OFF)


class ReportOutcome(StrEnum):
    """What one report attempt did (the ``action`` of a report task's result)."""

    DELIVERED = "delivered"
    SKIPPED = "skipped"
    NOOP = "noop"  # already final, unknown, or an invalid subdomain
    BUSY = "busy"  # another copy holds the send lock
    RETRY = "retry"  # a Celery retry with a countdown
    PARKED = "parked"  # in the due set until its next attempt
    DEAD = "dead"  # dead-lettered
