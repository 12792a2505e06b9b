"""When things happen beyond the fixed rounds: an interval sealed as soon as it ends, a
read cut at ``limitBytes`` followed at once, and a busy pod read again before its log
rotates (``next_read``).

Beat's rounds come every ``FETCH_INTERVAL`` and are not aligned with the report
intervals, so an ended interval used to wait up to one round (plus the round's fetches,
the chord's header) for the merge that seals it. ``seal_countdown`` lets the plan of
the round before an interval's end send one merge for just after that end (one per
interval, whichever round claims it); the rounds' own merges and the sweep stay as they
were (docs/design.md, "Data flow").

Between rounds, ``next_read`` decides when a pod is read again after a read of it:

* a read cut by ``limitBytes`` that made progress is followed at once (a backlog is
  read at the worker's speed, not ``FETCH_MAX_BYTES`` per ``FETCH_INTERVAL``);
* a pod whose log grows is read again after about ``PACE_LINES`` new lines, never
  sooner than ``FETCH_MIN_INTERVAL`` after the previous read: the kubelet serves only
  the current log file and renames it away (``containerLogMaxSize``, 10 Mi by default,
  checked every 10 s), and lines written to it after the last read are unreachable
  after that. A busy pod read every second loses at most about a second of lines at a
  rotation, where one read per ``FETCH_INTERVAL`` loses up to ten;
* a quiet pod is left to the rounds.

The bound: a pod has at most one early read pending at any time (``pace:<uid>:next``,
``SET NX``), and it is queued behind the work already on the fetch queue (FIFO), so a
busy pod or a backlog cannot take the queue from the others or from plan and merge.
An early read is an ordinary fetch: the cursor's compare-and-set in ``commit.lua``
makes one that races a round's fetch of the same pod commit nothing twice.
"""

from __future__ import annotations

import secrets

from app.ledger import Ledger
from app.settings import Settings

# Seconds after an interval's end that its merge runs: the task's ETA is the worker's
# clock, the end is Redis TIME (seal.lua refuses an interval that has not ended; then
# the next round's merge seals it, as before).
SEAL_AFTER = 1.0
# New lines a busy pod is left to gather between two reads (about 1 MB of Traefik JSON,
# a tenth of the kubelet's default 10 Mi file): at 1,000 lines/s a read a second.
PACE_LINES = 1000
# Seconds the last-read record of a pod is kept (a pod not read for this long starts
# its growth estimate afresh).
PACE_TTL = 600


def seal_countdown(ledger: Ledger, settings: Settings) -> float | None:
    """Always None: no merge is sent for just after an interval's end any more.

    Sealing follows the watermark (``app/watermark.py``): an interval can be sealed only
    once every pod was read to the end of its log at or after its end plus
    ``SEAL_CLOCK_MARGIN`` plus ``LOG_REORDER_WINDOW``, by a round's fetches, so the
    merge that can seal it is the chord callback of the first round after that point; a
    merge sent earlier, with no read behind it, would find nothing to seal. ``ledger``
    and ``settings`` are unused, kept for the caller (``workers/rounds.py``)."""
    del ledger, settings
    return None


def read_delay(consumed: int, cut: bool, since_last: float | None, settings: Settings) -> float | None:
    """Seconds until the pod should be read again, or None when the next round is soon
    enough. Pure: ``consumed`` new lines in the read that just ended, ``cut`` when it
    stopped at ``limitBytes``, ``since_last`` seconds since the read before it ended
    (None: unknown)."""
    if consumed <= 0:
        return None  # nothing new (or no progress: reading again at once would spin)
    if cut:
        return 0.0
    if since_last is None or since_last <= 0:
        # No earlier read to measure growth from (the pod's first read, or none for
        # PACE_TTL): look again soon, and measure. Once per pod: a quiet pod then falls
        # back to the rounds.
        return settings.fetch_min_interval
    rate = consumed / since_last  # lines per second since the previous read
    delay = max(settings.fetch_min_interval, PACE_LINES / rate)
    if delay >= settings.fetch_every:
        return None
    return delay


def next_read(ledger: Ledger, uid: str, consumed: int, cut: bool, settings: Settings) -> tuple[float, str] | None:
    """After a committed read of pod ``uid``: ``(countdown in seconds, token)`` of the
    early read to send, or None (no early read: the pod is quiet, or one is already
    pending). Records the read's time (Redis TIME) for the next growth estimate and
    claims the pod's one pending early read (``SET NX``, expiring after the countdown
    plus ``FETCH_TIME_LIMIT``, so a lost message frees it). Raises ``redis.RedisError``."""
    now = ledger.now()
    prev = ledger.r.set(ledger.k("pace", uid), f"{now:.6f}", ex=PACE_TTL, get=True)
    since = now - float(prev) if prev else None
    delay = read_delay(consumed, cut, since, settings)
    if delay is None:
        return None
    token = secrets.token_hex(8)
    ttl = int(delay + settings.fetch_time_limit + 10)
    if not ledger.r.set(ledger.k("pace", uid, "next"), token, nx=True, ex=ttl):
        return None
    return delay, token


def start_early_read(ledger: Ledger, uid: str, token: str) -> None:
    """An early read of ``uid`` starts: free the pod's pending mark if it is still this
    read's, so that this read may send the next one. Raises ``redis.RedisError``."""
    key = ledger.k("pace", uid, "next")
    if ledger.r.get(key) == token.encode():
        ledger.r.delete(key)
