"""When things happen beyond the fixed rounds: an interval sealed as soon as it ends, a
read cut at ``limitBytes`` followed at once, and a busy pod read again before its log
rotates (``next_read``).

Beat's rounds come every ``FETCH_INTERVAL`` and are not aligned with the report
intervals, so an ended interval waits for the first round whose reads start after its
sealing point (its end + ``SEAL_CLOCK_MARGIN`` + ``LOG_REORDER_WINDOW``), up to one
round more. ``seal_countdown`` lets the plan of the round before that point send one
round of its own for just after it (``workers.maintenance.seal_round``, one per
interval, whichever plan claims it): its fetches read every pod past the point and its
merge seals the interval. The regular rounds and the sweep stay as they were
(docs/design.md, "Data flow").

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
from collections.abc import Callable

from app.ledger import Ledger
from app.settings import Settings

# Seconds after an interval's sealing point (its end + SEAL_CLOCK_MARGIN +
# LOG_REORDER_WINDOW) that its own round starts: the task's ETA is the worker's clock,
# the point is Redis TIME. A round that starts too early seals nothing; the next regular
# round then does, as without it.
SEAL_AFTER = 1.0
# New lines a busy pod is left to gather between two reads (about 1 MB of Traefik JSON,
# a tenth of the kubelet's default 10 Mi file): at 1,000 lines/s a read a second.
PACE_LINES = 1000
# Seconds the last-read record of a pod is kept (a pod not read for this long starts
# its growth estimate afresh).
PACE_TTL = 600


def seal_point(now: float, settings: Settings) -> tuple[int, float]:
    """``(end, at)``: the first report interval end whose sealing point is still ahead of
    ``now`` (epoch seconds, Redis time), and that point: ``end`` plus
    ``SEAL_CLOCK_MARGIN`` plus ``LOG_REORDER_WINDOW`` plus ``SEAL_AFTER``. A round whose
    reads start after it has read every pod far enough for the watermark to seal the
    interval (``app/watermark.py``)."""
    ri = settings.report_interval
    lead = settings.seal_clock_margin + settings.log_reorder_window + SEAL_AFTER
    end = (int((now - lead) // ri) + 1) * ri
    return end, end + lead


def seal_countdown(ledger: Ledger, settings: Settings) -> tuple[float, int] | None:
    """``(seconds from now, end)`` for a round of its own at the sealing point of the
    next interval end (``seal_point``), when that point comes before the next regular
    round and no other plan has taken it (``SET NX`` on ``sealat:<end>``); else None.

    Beat's rounds are not aligned with the report intervals: without it, an interval
    waits for the first regular round after its sealing point, up to ``FETCH_INTERVAL``
    more (measured at 10,000 tunnels a minute: sealed 7.8 s after its end, with it
    about 4 s), and its reports have that much less of the next interval to go out in.
    """
    now = ledger.now()
    end, at = seal_point(now, settings)
    if at - now > settings.fetch_every:
        return None  # a later regular round is closer to it
    if not ledger.r.set(ledger.k("sealat", end), "1", nx=True, ex=2 * settings.report_interval + settings.fetch_every):
        return None
    return at - now, end


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


def next_read(ledger: Ledger, uid: str, consumed: int, cut: bool, settings: Settings,
              follow: Callable[[float], bool] | None = None) -> tuple[float, str] | None:
    """After a committed read of pod ``uid``: ``(countdown in seconds, token)`` of the
    early read to send, or None (no early read: the pod is quiet, followed, or one is
    already pending). Records the read's time (Redis TIME) for the next growth estimate and
    claims the pod's one pending early read (``SET NX``, expiring after the countdown
    plus ``FETCH_TIME_LIMIT``, so a lost message frees it). ``follow(rate)``, given the
    lines a second read since the previous read when that is known (the log's growth;
    after a read cut at ``limitBytes``, at least that: a pod writing faster than reads
    of ``FETCH_MAX_BYTES`` keep up with is cut every time), returns True when the pod is
    followed from now on (``app/follow.py``): then no early read. Raises
    ``redis.RedisError``."""
    now = ledger.now()
    prev = ledger.r.set(ledger.k("pace", uid), f"{now:.6f}", ex=PACE_TTL, get=True)
    since = now - float(prev) if prev else None
    if follow is not None and consumed > 0 and since is not None and since > 0 and follow(consumed / since):
        return None
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
