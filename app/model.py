"""The ledger's identities and states.

``ReportKey`` owns the string form of a report's identity and ``Cursor`` owns the
encoding of a read position: no other Python code joins or splits those strings.
The Lua scripts in ``app/lua`` build the same strings (they cannot import Python);
``tests/unit/test_model.py`` proves that the two agree.

The enums are ``StrEnum``s, so a value compares equal to its string and goes into a
JSON task result or a Redis field unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True, order=True)
class ReportKey:
    """One report: an interval and a tunnel. String form ``<start>:<subdomain>``.

    ``start`` is the interval's start in unix seconds (UTC, a multiple of
    ``REPORT_INTERVAL``); ``subdomain`` is already validated (``ledger.valid_subdomain``),
    so it holds no ``:``. The string form is the member of the ``due``, ``dead`` and
    ``retrying`` sets and the tail of the ``rep:`` and ``lock:`` keys.
    """

    start: int
    subdomain: str

    def __str__(self) -> str:
        return f"{self.start}:{self.subdomain}"

    @staticmethod
    def interval_pattern(start: int) -> str:
        """A Redis ``MATCH`` pattern for every report key of interval ``start``."""
        return f"{start}:*"

    @classmethod
    def parse(cls, raw: str | bytes) -> ReportKey:
        """The key of ``<start>:<subdomain>``. Raises ``ValueError`` when it is not one."""
        text = raw.decode() if isinstance(raw, bytes) else raw
        start, sep, sub = text.partition(":")
        if not sep or not sub or not start.isdigit():
            raise ValueError(f"not a report key: {text[:80]!r}")
        return cls(int(start), sub)


@dataclass(frozen=True)
class Cursor:
    """Where reading a container's log stands: the last consumed line's time and how
    many consumed lines carry exactly that time. ``t_ns == 0``: from the start.

    Encoded as ``<container id>|<t_ns>|<n>`` in the ``cursors`` hash; the commit script
    compares the encoded strings and never looks inside them.
    """

    container_id: str
    t_ns: int
    n: int

    def encode(self) -> str:
        return f"{self.container_id}|{self.t_ns}|{self.n}"

    @classmethod
    def decode(cls, raw: str) -> Cursor | None:
        """``None`` for an empty string (never read). Raises ``ValueError`` on garbage."""
        if not raw:
            return None
        cid, t, n = raw.rsplit("|", 2)
        return cls(cid, int(t), int(n))


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

    @property
    def final(self) -> bool:
        return self in (ReportState.DELIVERED, ReportState.SKIPPED, ReportState.DEAD)


class ReportOutcome(StrEnum):
    """What one report attempt did (the ``action`` of a report task's result)."""

    DELIVERED = "delivered"
    SKIPPED = "skipped"
    NOOP = "noop"  # already final, unknown, or an invalid subdomain
    BUSY = "busy"  # another copy holds the send lock
    RETRY = "retry"  # a Celery retry with a countdown
    PARKED = "parked"  # in the due set until its next attempt
    DEAD = "dead"  # dead-lettered
