"""When a report interval may be sealed: the watermark (docs/design.md, "Sealing").

A line belongs to the interval that holds its stamp (the kubelet's, or the request's
end for the file source), so an interval can be sealed only when no source can still
hold a line stamped in it. This module decides that from plain data, with no Redis or
Kubernetes in it, so that the rule can be tested on its own; ``app/rounds.merge`` reads
the records from the ledger and applies the decision (``seal.lua``).

A *source* is one log: a pod's container (its cursor field, ``<uid>/<container>``) or an
access-log file (``file:<identity>``). For every source the ledger keeps a
``ReadRecord``, written with each commit: the Redis time at which the latest read that
reached the end of the log started, the highest stamp consumed, and which log (the
container id) it was; and since when its reads fail, if they do. Each plan writes a
``Listing``: the sources it found and the Redis time at which it asked.

A source is *past* a time P (seconds) when

* a read of its current log reached the end of it and started at or after
  P + margin + W (every line stamped up to P was in the log by then: margin covers the
  clock skew between Redis and the node, W = ``LOG_REORDER_WINDOW`` a stream that is
  behind the other), or
* its highest stamp consumed, minus W, is at or after P (the two-stream cursor takes no
  line more than W behind its highest stamp as in order).

An interval [s, s + R) may be sealed when its end s + R is at or before the watermark:
the least, over every listing, of the listing's time minus margin + W (so that pods
created after that point are known), and over every listed source, of how far it is
past. A source listed with another container than its record's (a previous container
not drained, or the new one not read yet) is past nothing. A source listed as not
started and never read holds nothing. A source whose reads have failed for longer than
``max_wait`` (and a listing that has failed for longer than ``max_wait``, or is *stale*,
with the sources it listed) holds nothing any more: the intervals it held are sealed
*forced*, and its lines, read later, become amendments.

A listing is stale when another listing was renewed more than ``max_wait`` after it last
was: plans ran, but not this one (a retired file host, a renamed ``FILE_QUEUE``, the pod
listing of a ledger switched to the file source). A listing merely old because every
worker is down is not stale (no other listing is newer), so it holds and a backlog is
read, and placed where it happened, before its intervals are sealed. ``rounds.merge``
drops a stale listing from the ledger (WARNING, counter ``listings_dropped``); a plan that
runs again writes it again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

NEVER = -math.inf


@dataclass(frozen=True)
class ReadRecord:
    """What the ledger knows of the reads of one source.

    ``marker``: the log the last committed read was of (a pod's container id; "" for a
    file). ``end_at``: Redis time (s) at which the latest committed read that reached
    the end of that log started (None: none did). ``high_ns``: the highest stamp
    consumed from it (UTC ns, 0: none). ``fail_since``: Redis time (s) of the first
    failed read since the last committed one (None: the last read did not fail)."""

    marker: str = ""
    end_at: float | None = None
    high_ns: int = 0
    fail_since: float | None = None


@dataclass(frozen=True)
class Listed:
    """One source in a listing: ``name`` (for messages: the pod's, or the file's path)
    and ``marker``, the log it has now (a pod's current container id, "" when not
    started yet); ``None`` for a source whose record's marker is whatever it is (files)."""

    name: str
    marker: str | None = None


@dataclass(frozen=True)
class Listing:
    """The sources one plan found, and the Redis time (s) just before it asked;
    ``fail_since``: Redis time of the first failed listing since (None: the last one
    succeeded)."""

    at: float
    sources: Mapping[str, Listed] = field(default_factory=dict)
    name: str = "pod listing"
    fail_since: float | None = None
    key: str = ""  # its field in the ledger's ``listing`` hash ("pods", a file host's queue)


@dataclass(frozen=True)
class Holder:
    """A source (or a listing) keeping the next interval from being sealed, or one that
    was skipped after ``max_wait``: ``past`` is the time it is past (seconds; -inf: none)."""

    source: str
    name: str
    past: float
    failing_for: float = 0.0  # seconds its reads have failed (0: they do not)


@dataclass(frozen=True)
class Decision:
    """``seal_to``: every interval starting before it may be sealed (a multiple of the
    interval, never below the current mark). ``held_by``: what keeps the interval
    starting at ``seal_to`` from being sealed. ``forced``: sources (or listings) skipped
    after ``max_wait`` that are not past ``seal_to``: sealing to it is forced past them.
    ``stale``: the listings that stopped holding because others were renewed more than
    ``max_wait`` after them (see the module docstring), to be dropped."""

    seal_to: int
    watermark: float
    held_by: list[Holder]
    forced: list[Holder]
    stale: list[Listing] = field(default_factory=list)


def past(record: ReadRecord | None, listed: Listed, margin: float, window: float) -> float | None:
    """How far (seconds) a listed source is past; None when it holds nothing."""
    if record is None:
        return None if listed.marker == "" else NEVER
    if listed.marker is not None and record.marker != listed.marker:
        return NEVER  # a previous container not drained, or the current one not read yet
    out = NEVER
    if record.end_at is not None:
        out = record.end_at - margin - window
    if record.high_ns:
        out = max(out, record.high_ns / 1e9 - window)
    return out


def decide(
    listings: Sequence[Listing],
    records: Mapping[str, ReadRecord],
    sealed_to: int,
    now: float,
    *,
    interval: int,
    margin: float,
    window: float,
    max_wait: float,
) -> Decision:
    """Which intervals may be sealed now (see the module docstring).

    ``sealed_to``: the current mark (every interval starting before it is sealed; it
    never goes back). ``now``: Redis time (s). ``interval``: ``REPORT_INTERVAL`` (s);
    ``margin``: ``SEAL_CLOCK_MARGIN`` (s); ``window``: ``LOG_REORDER_WINDOW`` (s);
    ``max_wait``: ``SEAL_MAX_WAIT`` (s). With no listing at all nothing is sealed."""
    lag = margin + window
    bound = math.inf if listings else NEVER
    candidates: list[Holder] = []  # everything that bounds the watermark, failing or not
    skipped: list[Holder] = []
    stale: list[Listing] = []
    newest = max((listing.at for listing in listings), default=NEVER)
    for listing in listings:
        at = listing.at - lag
        # A plan that cannot list (API down) stops holding after max_wait from its first
        # failure, and so do the sources it listed (nothing reads them meanwhile); so does
        # a listing others were renewed more than max_wait after (stale). A listing
        # merely not renewed (every worker down: none newer) holds: a backlog is read first.
        failing_listing = now - listing.fail_since if listing.fail_since is not None else 0.0
        if newest - listing.at > max_wait:
            stale.append(listing)
            failing_listing = max(failing_listing, now - listing.at)
        if failing_listing > max_wait:
            skipped.append(Holder("", listing.name, at, failing_listing))
        else:
            bound = min(bound, at)
            candidates.append(Holder("", listing.name, at))
        for source, listed in listing.sources.items():
            record = records.get(source)
            p = past(record, listed, margin, window)
            if p is None:
                continue
            failing = now - record.fail_since if record is not None and record.fail_since is not None else 0.0
            failing = max(failing, failing_listing)
            holder = Holder(source, listed.name, p, failing)
            if failing > max_wait:
                skipped.append(holder)
            else:
                bound = min(bound, p)
                candidates.append(holder)
    if bound == math.inf:  # every source skipped: the listings' own times still bound it
        bound = min((h.past for h in skipped if not h.source), default=NEVER)
        bound = max(bound, now - lag - max_wait) if skipped else bound
    mark = sealed_to
    if bound > NEVER:
        mark = max(sealed_to, int(bound // interval) * interval)
    nxt = mark + interval
    held = [h for h in candidates if h.past < nxt]
    forced = [h for h in skipped if h.past < mark]
    return Decision(mark, bound, sorted(held, key=lambda h: (h.past, h.source)), sorted(forced, key=lambda h: h.source),
                    stale)
