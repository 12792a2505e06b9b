"""When things happen beyond the fixed rounds: an interval sealed as soon as it ends, and
(see ``next_read``) a busy pod read again before its log rotates.

Beat's rounds come every ``FETCH_INTERVAL`` and are not aligned with the report
intervals, so an ended interval used to wait up to one round (plus the round's fetches,
the chord's header) for the merge that seals it. ``seal_countdown`` lets the plan of
the round before an interval's end send one merge for just after that end (one per
interval, whichever round claims it); the rounds' own merges and the sweep stay as they
were (docs/design.md, "Data flow").
"""

from __future__ import annotations

from app.ledger import Ledger
from app.settings import Settings

# Seconds after an interval's end that its merge runs: the task's ETA is the worker's
# clock, the end is Redis TIME (seal.lua refuses an interval that has not ended; then
# the next round's merge seals it, as before).
SEAL_AFTER = 1.0


def seal_countdown(ledger: Ledger, settings: Settings) -> float | None:
    """Seconds from now to just after the current interval's end, when that end comes
    before the next round and no other plan has taken it (``SET NX``); else None."""
    now = ledger.now()
    ri = settings.report_interval
    end = (int(now) // ri + 1) * ri
    if end - now > settings.fetch_every:
        return None  # a later round is closer to it
    if not ledger.r.set(ledger.k("sealat", end), "1", nx=True, ex=2 * ri + settings.fetch_every):
        return None
    return end - now + SEAL_AFTER
